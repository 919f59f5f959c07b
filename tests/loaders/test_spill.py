"""Builds larger than their memory: sorted runs spilled to disk and merged give the in-memory build's
snapshot exactly; a build killed in the merge publishes nothing; a disk too small is refused up front."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geo_service.snapshot.folder import open_current
from geo_service.snapshot.format import ROW_ARRAYS
from loaders.cli import main
from tests.conftest import REPO, build_into
from tests.support.builders import folder_state


@pytest.fixture(scope="module")
def with_repeats(synth_100k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic 10^5 POIs plus repeated poi_ids far from their first rows (so in other runs), one of
    them at another place and one in another set."""
    folder = tmp_path_factory.mktemp("repeats") / "data"
    shutil.copytree(synth_100k, folder)
    lines = (folder / "pois.csv").read_text(encoding="utf-8").splitlines()
    again = [lines[5], lines[4000]]
    moved = lines[70_000].split(",")
    moved[2] = str(round(float(moved[2]) + 0.01, 6))
    other_set = lines[90_000].split(",")
    other_set[1] = lines[10].split(",")[1]
    (folder / "pois.csv").write_text("\n".join([*lines, *again, ",".join(moved), ",".join(other_set)]) + "\n",
                                     encoding="utf-8")
    return folder


def _snapshot_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in [*(f"{n}.npy" for n in ROW_ARRAYS), "tasks.json", "districts.json"]}


def test_a_build_that_spills_gives_the_in_memory_build_array_for_array(with_repeats: Path, tmp_path: Path) -> None:
    spilled, in_memory = tmp_path / "spilled", tmp_path / "in-memory"
    build_into(with_repeats, spilled, "--memory-mb", "1", "--skip-bad-rows")
    build_into(with_repeats, in_memory, "--skip-bad-rows")
    small, whole = open_current(spilled), open_current(in_memory)
    assert small.manifest["build"]["runs_spilled"] > 5 and whole.manifest["build"]["runs_spilled"] == 0
    assert _snapshot_files(spilled / "1") == _snapshot_files(in_memory / "1")  # same arrays, same order of rows
    assert small.manifest["counts"] == whole.manifest["counts"]
    assert small.manifest["screening"] == whole.manifest["screening"]
    skipped = small.manifest["screening"]["skipped_examples"]
    assert len(skipped) == 4 and all("duplicate" in e for e in skipped)  # each repeat, found across runs
    assert small.manifest["counts"]["pois_read"] == 100_004
    # Every row's cell is the cell of its stored position, and poi_order finds every POI.
    lat, lng = small.degrees(slice(None))
    assert np.array_equal(small.cells, small.grid.cells_of(lat, lng))
    assert np.all(np.diff(small.poi_ids[small.poi_order]) >= 0)
    assert sorted(p.name for p in spilled.iterdir()) == [".lock", "1", "CURRENT"]  # the runs are gone


def test_a_build_killed_in_its_merge_publishes_nothing_and_the_next_one_cleans_up(synth_100k: Path,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / "snaps"
    build_into(synth_100k, out)
    before = folder_state(out)
    command = [sys.executable, "-m", "loaders", "build", "--source", str(synth_100k), "--out", str(out),
               "--memory-mb", "1", "--quiet"]
    build = subprocess.Popen(command, cwd=REPO)
    try:
        merging = None
        for _ in range(3000):  # bounded: up to 60 s for the merge to start
            merging = next(out.glob(".tmp-build-*/out-poi_order.npy"), None)
            if merging is not None or build.poll() is not None:
                break
            time.sleep(0.02)
        assert merging is not None, "the build never reached its merge"
        os.kill(build.pid, signal.SIGKILL)
    finally:
        build.kill()
        build.wait(timeout=30)
    assert folder_state(out)[0] == before[0] and not (out / "2").exists()  # nothing published
    left = [p for p in out.iterdir() if p.name.startswith(".tmp-build-")]
    assert left and any(left[0].glob("rows-*-cells"))  # SIGKILL leaves the runs behind ...
    build_into(synth_100k, out, "--memory-mb", "1")
    assert (out / "CURRENT").read_text().strip() == "2"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "1", "2", "CURRENT"]  # ... and the next build removes them


def test_too_little_disk_for_the_runs_is_refused_before_any_is_written(synth_100k: Path, small_disk: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = small_disk / "snaps"
    free = shutil.disk_usage(small_disk).free
    assert main(["build", "--source", str(synth_100k), "--out", str(out), "--memory-mb", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "not enough free disk for this build" in err and "MiB needed" in err and "MiB free" in err, err
    assert "--memory-mb" in err and "CURRENT is unchanged" in err and "Traceback" not in err, err
    assert folder_state(out) == (None, []) and shutil.disk_usage(small_disk).free == free  # nothing written


def test_memory_mb_must_be_a_positive_whole_number(synth_100k: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-5", "1.5", "lots"):
        with pytest.raises(SystemExit) as exit_info:
            main(["build", "--source", str(synth_100k), "--out", str(tmp_path / "snaps"), "--memory-mb", bad])
        assert exit_info.value.code == 2
        assert "--memory-mb" in capsys.readouterr().err
    assert not (tmp_path / "snaps").exists()
