"""The draft and data folders: fill an empty draft from a folder (checked as `geo-snapshot import` checks it), and
write the draft out as a data folder (DESIGN.md section 1), which is what a SQLite draft is built from."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from loaders.errors import ErrorLog
from loaders.mysql_import import INSERTS, small_tables
from loaders.pois import parse_poi_chunk
from loaders.sources.files import FILES, POIS_FILE, FolderSource
from placement.db import Cursor, Db

TASK_HEADER = ["task_id", "name", "district_code", "poi_set_id", "starts_at", "ends_at", "enabled", "stagger_s",
               "stagger_groups"]
PRIZE_HEADER = ["task_id", "prize_type", "quota", "weight", "rate_per_s"]
POI_HEADER = ["poi_id", "poi_set_id", "lat", "lng"]
_FETCH = 50_000


async def seed(db: Db, folder: Path) -> dict[str, int]:
    """Fill an empty draft from a data folder, all or nothing; a draft holding tasks is left alone (returns {})."""
    source = FolderSource.at(str(folder))
    errors = ErrorLog()
    small = await small_tables(source, errors)
    errors.raise_if_any()
    pois: list[tuple[Any, ...]] = []
    async for chunk in source.poi_chunks():
        cols = parse_poi_chunk(chunk, errors)
        pois += zip(cols.poi_id.tolist(), cols.poi_set_id.tolist(), cols.lat.tolist(), cols.lng.tolist())
    errors.raise_if_any()

    tables: dict[str, list[Any]] = {**small, "pois": pois}

    def fill(cur: Cursor) -> dict[str, int]:
        if cur.execute("SELECT 1 FROM tasks LIMIT 1").one() or cur.execute("SELECT 1 FROM districts LIMIT 1").one():
            return {}
        for table, rows in tables.items():
            for start in range(0, len(rows), 5000):
                cur.many(INSERTS[table], rows[start:start + 5000])
        return {table: len(rows) for table, rows in tables.items()}

    return await db.write(fill)


def _feature_collection(rows: list[tuple[Any, ...]], keys: list[str]) -> bytes:
    features = [{"type": "Feature", "properties": dict(zip(keys, r[:-1])), "geometry": orjson.loads(r[-1])} for r in rows]
    return orjson.dumps({"type": "FeatureCollection", "features": features})


def _write_csv(path: Path, header: list[str], rows: Callable[[], Any]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(header)
        for batch in rows():
            out.writerows(["" if v is None else repr(v) if isinstance(v, float) else v for v in r] for r in batch)


def export(cur: Cursor, folder: Path) -> dict[str, int]:
    """Write the draft as a data folder (one read transaction: a consistent copy); return the row counts."""
    folder.mkdir(parents=True, exist_ok=True)
    districts = cur.execute("SELECT code, name, parent_code, geojson FROM districts ORDER BY code").all()
    (folder / FILES["districts"]).write_bytes(_feature_collection(districts, ["code", "name", "parent_code"]))
    zones = cur.execute("SELECT id, reason, geojson FROM exclusion_zones ORDER BY id").all()
    (folder / FILES["zones"]).write_bytes(_feature_collection(zones, ["id", "reason"]))
    tasks = cur.execute(f"SELECT {', '.join(TASK_HEADER)} FROM tasks ORDER BY task_id").all()
    _write_csv(folder / FILES["tasks"], TASK_HEADER, lambda: [tasks])
    prizes = cur.execute(f"SELECT {', '.join(PRIZE_HEADER)} FROM task_prizes ORDER BY task_id, prize_type").all()
    _write_csv(folder / FILES["prizes"], PRIZE_HEADER, lambda: [prizes])
    count = 0

    def pois() -> Any:
        nonlocal count
        cur.execute(f"SELECT {', '.join(POI_HEADER)} FROM pois ORDER BY poi_id")
        while batch := cur.fetch(_FETCH):
            count += len(batch)
            yield batch

    _write_csv(folder / POIS_FILE, POI_HEADER, pois)
    return {"districts": len(districts), "zones": len(zones), "tasks": len(tasks), "prizes": len(prizes), "pois": count}

