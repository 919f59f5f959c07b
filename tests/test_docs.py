"""The README documents every setting of both processes with its environment variable and default."""

from __future__ import annotations

import pytest

from collector.settings import CollectorSettings
from geo_service.config import documented
from geo_service.settings import ServiceSettings
from tests.conftest import REPO


@pytest.mark.parametrize(("cls", "prefix"), [(ServiceSettings, "GEODROP_SERVICE_"), (CollectorSettings, "GEODROP_COLLECTOR_")])
def test_every_setting_is_in_the_readme_with_env_and_default(cls: type, prefix: str) -> None:
    readme = (REPO / "README.md").read_text()
    for name, default, help_text in documented(cls):
        if name == "worker_id":  # set by the parent process, not by operators
            continue
        shown = "(empty)" if default == "" else default
        row = f"| `{name}` | `{prefix}{name.upper()}` | `{shown}` | {help_text} |"
        assert row in readme, f"README lacks or misstates {cls.__name__}.{name}"
