"""The disk fills during `geo-snapshot build`: exit 1 naming the path and the reason, CURRENT and the
published snapshots untouched, no temp folder or file left behind, every byte of the attempt freed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loaders.cli import main
from tests.conftest import SAMPLE
from tests.support.builders import folder_state


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(disk: Path, leave: int) -> None:
    """Take the disk's free space down to about `leave` bytes with one filler file."""
    with (disk / "filler").open("wb") as f:
        f.truncate(0)
        chunk = b"\0" * (64 << 10)
        while _free(disk) > leave + len(chunk):
            f.write(chunk)
            f.flush()


@pytest.mark.parametrize("leave_fraction", [0.0, 0.3, 0.9])
def test_a_full_disk_fails_the_build_cleanly(small_disk: Path, leave_fraction: float,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = small_disk / "snapshots"
    assert main(["build", "--source", str(SAMPLE), "--out", str(out), "--quiet"]) == 0
    snapshot_bytes = sum(p.stat().st_size for p in (out / "1").iterdir())
    _fill(small_disk, int(snapshot_bytes * leave_fraction))
    before, free_before = folder_state(out), _free(small_disk)
    capsys.readouterr()

    assert main(["build", "--source", str(SAMPLE), "--out", str(out), "--quiet"]) == 1

    err = capsys.readouterr().err
    # The rows are allocated in the build's temp folder first, then the snapshot is written: either can meet the end.
    assert str(out) in err and "CURRENT is unchanged" in err, err
    assert "could not write snapshot 2" in err or "could not write the build's sorted runs or rows" in err, err
    assert "No space left on device" in err or "requested and" in err, err  # errno, or numpy's short write
    assert " 0.0 MiB free on its disk" in err or leave_fraction > 0, err
    assert "Traceback" not in err
    assert folder_state(out) == before  # CURRENT still 1, no seq 2, no .tmp- folder, no CURRENT.*.tmp
    assert sorted(p.name for p in out.iterdir()) == [".lock", "1", "CURRENT"]
    assert _free(small_disk) == free_before  # every byte the attempt wrote was given back

    (small_disk / "filler").unlink()
    assert main(["build", "--source", str(SAMPLE), "--out", str(out), "--quiet"]) == 0
    assert (out / "CURRENT").read_text().strip() == "2"
