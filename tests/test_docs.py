"""The README documents every service setting with its environment variable and default."""

from __future__ import annotations

from geo_service.settings import ServiceSettings, documented
from tests.conftest import REPO


def test_every_service_setting_is_in_the_readme_with_env_and_default() -> None:
    readme = (REPO / "README.md").read_text()
    for name, default, help_text in documented(ServiceSettings):
        if name == "worker_id":  # set by the parent process, not by operators
            continue
        shown = "(empty)" if default == "" else default
        row = f"| `{name}` | `GEODROP_SERVICE_{name.upper()}` | `{shown}` | {help_text} |"
        assert row in readme, f"README lacks or misstates setting {name}"
