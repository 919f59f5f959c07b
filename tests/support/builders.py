"""Small edits to real data folders, to make one bad row at a known place."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson


def set_csv_field(path: Path, line: int, field: str, value: str) -> None:
    """Set `field` of the record on `line` (line 1 is the header) of a CSV file; a field it lacks is added, empty
    in the other records."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if field not in rows[0]:
        rows = [[*rows[0], field], *([*row, ""] for row in rows[1:])]
    rows[line - 1][rows[0].index(field)] = value
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def csv_records(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def set_feature_geometry(path: Path, index: int, geometry: dict[str, Any]) -> None:
    """Replace the geometry of feature `index` (1-based) of a GeoJSON FeatureCollection."""
    doc = orjson.loads(path.read_bytes())
    doc["features"][index - 1]["geometry"] = geometry
    path.write_bytes(orjson.dumps(doc))


def folder_state(out: Path) -> tuple[str | None, list[str]]:
    """Return what a snapshots folder publishes: CURRENT's text and every entry but the lock."""
    current = (out / "CURRENT").read_text() if (out / "CURRENT").exists() else None
    return current, sorted(p.name for p in out.iterdir() if p.name != ".lock") if out.exists() else []


OTHER_POI = 900_000_000  # the extra task's one POI: beyond any claim_poi id


def claim_poi(task_id: int, i: int) -> tuple[int, float, float]:
    """Return (poi_id, lat, lng) of POI i of task task_id in write_claims_data's layout."""
    row, col = divmod(task_id - 1, 40)
    return task_id * 1000 + i, round(22.5329 + row * 0.002, 6), round(113.9305 + col * 0.001 + i * 0.00005, 6)


def write_claims_data(folder: Path, quotas: dict[str, int], pois: int = 50, rate_per_s: str = "", tasks: int = 1) -> None:
    """A one-district data folder for claims: tasks 1..tasks on sets 1..tasks (quotas as given), and one
    more task on its own set. Each task's POIs sit on a line in Nanshan, 5 m apart (claim_poi); the
    extra task has one POI, OTHER_POI, 100 m north of task 1's line.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sample = Path(__file__).resolve().parents[2] / "data" / "sample"
    doc = orjson.loads((sample / "districts.geojson").read_bytes())
    doc["features"] = [f for f in doc["features"] if f["properties"]["code"] == 440305]
    (folder / "districts.geojson").write_bytes(orjson.dumps(doc))
    other = tasks + 1
    rows = [[*claim_poi(t, i)[:1], t, *claim_poi(t, i)[1:]] for t in range(1, tasks + 1) for i in range(pois)]
    rows.append([OTHER_POI, other, 22.5338, 113.9305])
    window = ["2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z", 1]
    _write(folder / "pois.csv", ["poi_id", "poi_set_id", "lat", "lng"], rows)
    _write(folder / "tasks.csv", ["task_id", "name", "district_code", "poi_set_id", "starts_at", "ends_at", "enabled"],
           [[t, f"claims test {t}", 440305, t, *window] for t in range(1, tasks + 1)]
           + [[other, "other task", 440305, other, *window]])
    _write(folder / "task_prizes.csv", ["task_id", "prize_type", "quota", "weight", "rate_per_s"],
           [[t, prize, quota, 1, rate_per_s] for t in range(1, tasks + 1) for prize, quota in quotas.items()]
           + [[other, "cash", 10, 1, ""]])


def _write(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
