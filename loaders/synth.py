"""Seeded synthetic data folders of any size, written in streamed chunks (tests and benchmarks)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

# City-sized square districts on a lattice over this corner (roughly mainland China's latitudes):
# a fixed size keeps POI density city-like (~50 per km²) whatever the total.
ORIGIN = (20.0, 100.0)  # lat, lng of the first district's south-west corner
DISTRICT_DEG = 0.2  # about 22 km x 21 km at these latitudes
PITCH_DEG = 0.44
LATTICE = 55  # districts per lattice row: 55 x 0.44 deg spans 24 deg
TASKS_PER_DISTRICT = 10
POIS_PER_DISTRICT = 20_000
MAX_DISTRICTS = 2_870  # as many as China's county-level districts
_CHUNK = 1_000_000
STARTS_AT = 1_767_225_600  # 2026-01-01T00:00:00Z
ENDS_AT = 1_830_297_600  # 2028-01-01T00:00:00Z


def _districts(n: int) -> list[tuple[int, tuple[float, float, float, float]]]:
    out = []
    for i in range(n):
        lat, lng = ORIGIN[0] + (i // LATTICE) * PITCH_DEG, ORIGIN[1] + (i % LATTICE) * PITCH_DEG
        out.append((100000 + i, (lat, lng, lat + DISTRICT_DEG, lng + DISTRICT_DEG)))
    return out


def _square(box: tuple[float, float, float, float]) -> dict[str, Any]:
    a, b, c, d = box
    return {"type": "Polygon", "coordinates": [[[b, a], [d, a], [d, c], [b, c], [b, a]]]}


def _feature_collection(features: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"type": "FeatureCollection", "features": features})


def _task_rows(districts: list[tuple[int, Any]]) -> tuple[list[list[Any]], list[list[Any]]]:
    tasks, prizes = [], []
    for d, (code, _) in enumerate(districts):
        for k in range(TASKS_PER_DISTRICT):
            task_id = d * TASKS_PER_DISTRICT + k + 1
            # Every fifth task shares its neighbour's POI set: one set serving several tasks.
            poi_set = d * TASKS_PER_DISTRICT + (k - 1 if k % 5 == 4 else k) + 1
            tasks.append([task_id, f"task {task_id}", code, poi_set, STARTS_AT, ENDS_AT, 1])
            prizes.append([task_id, "cash", 50 + k, 3, 10])
            prizes.append([task_id, "coupon", 200, 1, ""])
    return tasks, prizes


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_pois(path: Path, n: int, districts: list[tuple[int, Any]], tasks: list[list[Any]], seed: int,
                progress: Callable[[str, int], None]) -> None:
    rng = np.random.default_rng(seed)
    boxes = np.array([box for _, box in districts])
    set_ids = np.array(sorted({t[3] for t in tasks}), dtype=np.int64)
    set_district = (set_ids - 1) // TASKS_PER_DISTRICT
    schema = pa.schema([("poi_id", pa.int64()), ("poi_set_id", pa.int64()), ("lat", pa.float64()), ("lng", pa.float64())])
    with pacsv.CSVWriter(path, schema) as writer:
        for start in range(0, n, _CHUNK):
            size = min(_CHUNK, n - start)
            which = rng.integers(0, len(set_ids), size)
            box = boxes[set_district[which]]
            # Stay a little inside the box so every POI is strictly within its district.
            lat = np.round(box[:, 0] + (box[:, 2] - box[:, 0]) * rng.uniform(0.001, 0.999, size), 6)
            lng = np.round(box[:, 1] + (box[:, 3] - box[:, 1]) * rng.uniform(0.001, 0.999, size), 6)
            ids = np.arange(start + 1, start + size + 1, dtype=np.int64)
            writer.write_table(pa.table([ids, set_ids[which], lat, lng], schema=schema))
            progress("synth", start + size)


def write_synthetic(out: Path, n_pois: int, seed: int, progress: Callable[[str, int], None]) -> dict[str, int]:
    """Write a data folder with n_pois POIs; return what it holds."""
    if not 1 <= n_pois <= 10**9:
        raise ValueError(f"--pois must be in [1, 10^9]; got {n_pois}")
    out.mkdir(parents=True, exist_ok=True)
    districts = _districts(min(max(n_pois // POIS_PER_DISTRICT, 1), MAX_DISTRICTS))
    (out / "districts.geojson").write_bytes(_feature_collection([
        {"type": "Feature", "properties": {"code": code, "name": f"district {code}", "parent_code": None},
         "geometry": _square(box)} for code, box in districts
    ]))
    # Small zones in the first district's corner, so screening always has work.
    lat0, lng0, lat1, lng1 = districts[0][1]
    zh, zw = (lat1 - lat0) / 50, (lng1 - lng0) / 50
    (out / "exclusions.geojson").write_bytes(_feature_collection([
        {"type": "Feature", "properties": {"id": f"z{i}", "reason": "synthetic hazard"},
         "geometry": _square((lat0 + i * 2 * zh, lng0 + i * 2 * zw, lat0 + (i * 2 + 1) * zh, lng0 + (i * 2 + 1) * zw))}
        for i in range(3)
    ]))
    tasks, prizes = _task_rows(districts)
    _write_csv(out / "tasks.csv", ["task_id", "name", "district_code", "poi_set_id", "starts_at", "ends_at", "enabled"], tasks)
    _write_csv(out / "task_prizes.csv", ["task_id", "prize_type", "quota", "weight", "rate_per_s"], prizes)
    _write_pois(out / "pois.csv", n_pois, districts, tasks, seed, progress)
    return {"pois": n_pois, "districts": len(districts), "tasks": len(tasks), "prizes": len(prizes)}
