"""The snapshot format: round trip, refusal of damaged snapshots, publish, prune and rollback."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from geo_service.snapshot.folder import current_seq, list_seqs, open_current, rollback, write_snapshot
from geo_service.snapshot.format import SnapshotError, open_snapshot
from geo_service.snapshot.grid import SquareGrid
from loaders.cli import main

GRID = SquareGrid()


def _arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lats, lngs = rng.integers(22_400_000, 22_800_000, n, np.int32), rng.integers(113_800_000, 114_400_000, n, np.int32)
    task_index = rng.integers(0, 3, n).astype(np.int32)
    cells = GRID.cells_of(lats / 1e6, lngs / 1e6)
    perm = np.lexsort((task_index, cells))
    poi_ids = np.arange(n)[perm]
    return {"cells": cells[perm], "task_index": task_index[perm], "poi_ids": poi_ids,
            "lats": lats[perm], "lngs": lngs[perm], "poi_order": np.argsort(poi_ids)}


TABLES: dict[str, Any] = {
    "tasks": [{"task_id": i + 1, "name": f"t{i}", "district_code": 440305, "poi_set_id": 1, "starts_at": 0,
               "ends_at": 2**31, "enabled": True, "stagger_s": 0, "stagger_groups": 1, "prizes": [], "pois": 0,
               "outside_district": 0} for i in range(3)],
    "districts": [{"code": 440305, "name": "Nanshan", "parent_code": None}]}


def _publish(root: Path, n: int = 1000, keep: int = 5) -> dict[str, Any]:
    return write_snapshot(root, _arrays(n, seed=n), TABLES, {"source": "test"}, GRID, keep=keep)


def test_round_trip_returns_the_same_rows_read_only(tmp_path: Path) -> None:
    manifest = _publish(tmp_path)
    snap = open_current(tmp_path)
    expected = _arrays(1000, seed=1000)
    for name, arr in expected.items():
        assert np.array_equal(getattr(snap, name), arr)
    assert snap.seq == manifest["seq"] == 1
    assert snap.tasks == TABLES["tasks"]
    assert not snap.cells.flags.writeable
    with pytest.raises(ValueError):
        snap.cells[0] = 1


def _damage_byte(folder: Path) -> None:
    path = folder / "lats.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(folder: Path) -> None:
    path = folder / "cells.npy"
    path.write_bytes(path.read_bytes()[:-8])


def _bump_version(folder: Path) -> None:
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    manifest["version"] = 99
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))


def _unsort(folder: Path) -> None:
    arr = np.load(folder / "cells.npy")[::-1].copy()
    np.save(folder / "cells.npy", arr)
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    import hashlib

    manifest["files"]["cells.npy"]["sha256"] = hashlib.sha256((folder / "cells.npy").read_bytes()).hexdigest()
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))


def _bad_grid(folder: Path) -> None:
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    manifest["grid"] = {"kind": "square", "cell_m": 1.0, "radius": 2}
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_damage_byte, "checksum mismatch"), (_truncate, "missing or not"), (_bump_version, "format version 99"),
     (_unsort, "not sorted"), (_bad_grid, "bad grid parameters"),
     (lambda f: (f / "tasks.json").unlink(), "tasks.json: missing"),
     (lambda f: (f / "manifest.json").write_text("{"), "not JSON")],
    ids=["flipped-byte", "truncated", "version", "unsorted", "grid", "missing-file", "manifest"],
)
def test_damaged_snapshots_are_refused(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    _publish(tmp_path)
    damage(tmp_path / "1")
    with pytest.raises(SnapshotError, match=message):
        open_snapshot(tmp_path / "1")


def test_publish_prunes_old_snapshots_but_never_the_live_one(tmp_path: Path) -> None:
    for n in range(1, 8):
        _publish(tmp_path, n=100 * n, keep=3)
    assert list_seqs(tmp_path) == [5, 6, 7]
    assert rollback(tmp_path) == 6
    _publish(tmp_path, n=900, keep=2)
    assert current_seq(tmp_path) == 8
    assert list_seqs(tmp_path) == [7, 8]


def test_rollback_refuses_a_damaged_target_and_keeps_current(tmp_path: Path) -> None:
    _publish(tmp_path, n=100)
    _publish(tmp_path, n=200)
    _damage_byte(tmp_path / "1")
    with pytest.raises(SnapshotError, match="checksum"):
        rollback(tmp_path)
    assert current_seq(tmp_path) == 2
    with pytest.raises(SnapshotError, match="no snapshot 7"):
        rollback(tmp_path, 7)


def test_a_snapshot_of_the_older_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    _publish(tmp_path)
    folder = tmp_path / "1"
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    for name in ("lats", "lngs", "poi_order"):  # as version 1 wrote them: float64 degrees, int64 positions
        old = np.load(folder / f"{name}.npy")
        np.save(folder / f"{name}.npy", old / 1e6 if name != "poi_order" else old.astype(np.int64))
    manifest["version"] = 1
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(SnapshotError, match="format version 1; this release reads version 2 only: rebuild"):
        open_snapshot(folder)


def test_rollback_and_inspect_through_the_cli(sample_snapshots: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "snaps"
    shutil.copytree(sample_snapshots, root)
    _publish(root)  # seq 2, a different snapshot
    assert main(["rollback", "--snapshots", str(root)]) == 0
    assert current_seq(root) == 1
    capsys.readouterr()
    assert main(["inspect", "--snapshots", str(root), "--verify"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["current"] == 1 and report["snapshots"] == [1, 2] and report["verified"]
    assert report["manifest"]["counts"]["rows"] == len(open_current(root).cells)
    assert report["format_version"] == 2 and 32 <= report["bytes_per_row"] < 32.1  # 32 and the .npy headers
    assert main(["rollback", "--snapshots", str(root)]) == 2
    assert "no snapshot older than 1" in capsys.readouterr().err


def test_query_cli_refuses_bad_positions_and_missing_snapshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--snapshots", str(tmp_path), "--lat", "22.5", "--lng", "114"]) == 2
    assert "no CURRENT snapshot" in capsys.readouterr().err
    assert main(["query", "--snapshots", str(tmp_path), "--lat", "95", "--lng", "114"]) == 2
    assert "lat: must be a number in [-90, 90]" in capsys.readouterr().err
