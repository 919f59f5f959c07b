"""Small edits to real data folders, to make one bad row at a known place."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson


def set_csv_field(path: Path, line: int, field: str, value: str) -> None:
    """Set `field` of the record on `line` (line 1 is the header) of a CSV file."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
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
