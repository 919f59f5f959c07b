"""What the loaders' tests share: a small disk to fill."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.parts import missing

DISK_BYTES = 4 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test alone (root and mount(8) needed; unmounted at the end)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        missing("a mountable tmpfs (root and mount)", "run the suite as root to drill a full disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(where)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        missing(f"a mountable tmpfs ({done.stderr.strip()})", "run the suite as root outside a restricted container")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=30)
