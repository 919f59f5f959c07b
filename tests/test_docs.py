"""The docs say what the code does: every setting in the README, every file and name docs/architecture.md cites."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collector.settings import CollectorSettings
from delivery.settings import DeliverySettings
from geo_service.config import documented
from geo_service.settings import ServiceSettings
from placement.settings import ConsoleSettings
from tests.conftest import REPO


@pytest.mark.parametrize(("cls", "prefix"), [(ServiceSettings, "GEODROP_SERVICE_"), (CollectorSettings, "GEODROP_COLLECTOR_"),
                                             (DeliverySettings, "GEODROP_DELIVER_"), (ConsoleSettings, "GEODROP_CONSOLE_")])
def test_every_setting_is_in_the_readme_with_env_and_default(cls: type, prefix: str) -> None:
    readme = (REPO / "README.md").read_text()
    for name, default, help_text in documented(cls):
        if name == "worker_id":  # set by the parent process, not by operators
            continue
        shown = "(empty)" if default == "" else default
        row = f"| `{name}` | `{prefix}{name.upper()}` | `{shown}` | {help_text} |"
        assert row in readme, f"README lacks or misstates {cls.__name__}.{name}"


# `path` or `path:name` in backticks: a file of the repository, and a name it defines.
_REFERENCE = re.compile(r"`((?:geo_service|loaders|collector|delivery|placement|tests|bench|docs|deploy)/[\w/.<>]+?)(?::(\w+))?`")


def _defines(path: Path, name: str) -> bool:
    text = path.read_text()
    defined = rf"^\s*(?:async def|def|class|const|let|async function|function)\s+{name}\b|^\s*{name}\s*[:=(]"
    return re.search(defined, text, re.M) is not None


def test_the_architecture_names_only_files_and_names_that_exist() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text()
    found = _REFERENCE.findall(doc)
    assert len(found) > 40  # the rooms, the paths of a request and a claim, and the usual changes
    missing = [f"{path}:{name}" if name else path for path, name in found if "<" not in path and not (
        (REPO / path).exists() and (not name or _defines(REPO / path, name)))]
    assert missing == []


def test_the_architecture_check_catches_a_stale_name(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def present() -> None: ...\nCONSTANT = 1\n")
    assert _defines(module, "present") and _defines(module, "CONSTANT") and not _defines(module, "gone")
