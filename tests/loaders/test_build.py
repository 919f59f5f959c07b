"""geo-snapshot build on the sample data: counts, order, screening, and what a query returns."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import shapely

from geo_service.nearby import Lookup, answer
from geo_service.snapshot.folder import open_current
from geo_service.snapshot.format import ROW_ARRAYS
from geo_service.snapshot.grid import SquareGrid
from loaders.records import parse_time
from tests.conftest import SAMPLE
from tests.support.builders import csv_records
from tests.support.oracle import haversine_m

NOW_S = 1_790_000_000  # 2026-09-21: the sample's long-running tasks are active, tasks #9 are upcoming


def _sample_truth() -> tuple[list[dict[str, str]], list[dict[str, str]], list[shapely.Geometry]]:
    pois = csv_records(SAMPLE / "pois.csv")
    tasks = csv_records(SAMPLE / "tasks.csv")
    zones = [shapely.from_geojson(orjson.dumps(f["geometry"]))
             for f in orjson.loads((SAMPLE / "exclusions.geojson").read_bytes())["features"]]
    return pois, tasks, zones


def test_sample_build_keeps_exactly_the_pois_outside_exclusion_zones(sample_snapshots: Path) -> None:
    pois, tasks, zones = _sample_truth()
    snap = open_current(sample_snapshots)
    kept = [p for p in pois if not any(z.intersects(shapely.Point(float(p["lng"]), float(p["lat"]))) for z in zones)]
    by_set: dict[str, int] = {}
    for p in kept:
        by_set[p["poi_set_id"]] = by_set.get(p["poi_set_id"], 0) + 1
    assert snap.manifest["counts"]["pois_read"] == len(pois)
    assert snap.manifest["counts"]["pois_excluded"] == len(pois) - len(kept) > 0
    assert snap.manifest["counts"]["rows"] == len(snap.cells) == sum(by_set.get(t["poi_set_id"], 0) for t in tasks)
    assert not set(snap.poi_ids.tolist()) - {int(p["poi_id"]) for p in kept}


def test_rows_are_sorted_by_cell_task_poi_and_cells_match_the_grid(sample_snapshots: Path) -> None:
    snap = open_current(sample_snapshots)
    assert np.array_equal(snap.cells, snap.grid.cells_of(*snap.degrees(slice(None))))
    keys = list(zip(snap.cells.tolist(), snap.task_index.tolist(), snap.poi_ids.tolist()))
    assert keys == sorted(keys)
    assert [t["task_id"] for t in snap.tasks] == sorted(int(t["task_id"]) for t in csv_records(SAMPLE / "tasks.csv"))


def test_task_table_carries_windows_flags_and_prizes(sample_snapshots: Path) -> None:
    snap = open_current(sample_snapshots)
    source = {int(t["task_id"]): t for t in csv_records(SAMPLE / "tasks.csv")}
    prizes = csv_records(SAMPLE / "task_prizes.csv")
    for task in snap.tasks:
        row = source[task["task_id"]]
        assert task["starts_at"] == parse_time(row, "starts_at")
        assert task["enabled"] == (row["enabled"] == "1")
        assert {p["prize_type"]: p["quota"] for p in task["prizes"]} == {
            p["prize_type"]: int(p["quota"]) for p in prizes if int(p["task_id"]) == task["task_id"]}
        assert task["pois"] == int((snap.task_index == snap.tasks.index(task)).sum())


def test_query_returns_every_active_poi_within_reach_and_nothing_outside_the_window(sample_snapshots: Path) -> None:
    snap = open_current(sample_snapshots)
    lookup = Lookup(snap)
    status = lookup.table.status(NOW_S)
    active = np.frombuffer(status.active, dtype=np.uint8).astype(bool)
    assert 0 < active.sum() < len(snap.tasks)  # some tasks are disabled, upcoming or ended
    rng = np.random.default_rng(11)
    hits = 0
    for i in rng.choice(len(snap.cells), 300, replace=False):
        lat, lng = (float(x) + rng.normal(0, 0.001) for x in snap.degrees(i))
        result = answer(lookup, status, lat, lng, max_pois=10**6)
        got = {(p["poi_id"], p["task_id"]) for p in result["pois"]}
        near = (haversine_m(lat, lng, *snap.degrees(slice(None))) <= snap.grid.reach_m) & active[snap.task_index]
        want = {(int(p), snap.tasks[int(t)]["task_id"]) for p, t in zip(snap.poi_ids[near], snap.task_index[near])}
        assert want <= got
        window = set(result["cells"])
        assert all(snap.grid.cell_of(p["lat"], p["lng"]) in window for p in result["pois"])
        assert {t["task_id"] for t in result["tasks"]} == {p["task_id"] for p in result["pois"]}
        hits += len(want)
    assert hits > 1000


def test_query_cap_cuts_the_list_and_says_so(sample_snapshots: Path) -> None:
    snap = open_current(sample_snapshots)
    i = int(np.argmax(np.bincount(np.searchsorted(np.unique(snap.cells), snap.cells))))
    lat, lng = map(float, snap.degrees(i))
    lookup = Lookup(snap)
    status = lookup.table.status(NOW_S)
    full = answer(lookup, status, lat, lng, max_pois=10**6)
    cut = answer(lookup, status, lat, lng, max_pois=3)
    assert len(full["pois"]) > 3 and not full["truncated"]
    assert len(cut["pois"]) == 3 and cut["truncated"]


def test_grid_options_are_recorded_and_read_back(tmp_path: Path) -> None:
    from loaders.cli import main

    out = tmp_path / "snaps"
    assert main(["build", "--source", str(SAMPLE), "--out", str(out), "--grid", "h3", "--h3-res", "9", "--quiet"]) == 0
    snap = open_current(out)
    assert snap.manifest["grid"] == {"kind": "h3", "h3_res": 9, "radius": 2}
    assert snap.grid.cell_of(22.53, 113.93) == snap.grid.cells_of(np.array([22.53]), np.array([113.93]))[0]
    assert main(["build", "--source", str(SAMPLE), "--out", str(out), "--cell-m", "250", "--radius", "3", "--quiet"]) == 0
    assert open_current(out).grid == SquareGrid(cell_m=250.0, radius=3)


def test_build_is_deterministic(tmp_path: Path, sample_snapshots: Path) -> None:
    from loaders.cli import main

    assert main(["build", "--source", str(SAMPLE), "--out", str(tmp_path), "--quiet"]) == 0
    a, b = open_current(sample_snapshots), open_current(tmp_path)
    for name in ROW_ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.tasks == b.tasks
    assert time.time() - b.manifest["built_at"] < 120
