"""Import a data folder into the MySQL source tables: validated first, batched, all-or-nothing.

Rerunning replaces the tables' content in one transaction, so an import is idempotent and a
failed one leaves the database as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiomysql
import pymysql
import shapely

from geo_service.dsn import MySQLSettings
from loaders.errors import ErrorLog, RowError, SourceError
from loaders.pois import parse_poi_chunk
from loaders.sources import Kind
from loaders.sources.files import FolderSource
from loaders.sources.mysql import connect
from loaders.tables import read_tables

INSERTS = {
    "districts": "INSERT INTO districts (code, name, parent_code, geojson) VALUES (%s, %s, %s, %s)",
    "exclusion_zones": "INSERT INTO exclusion_zones (id, reason, geojson) VALUES (%s, %s, %s)",
    "tasks": "INSERT INTO tasks (task_id, name, district_code, poi_set_id, starts_at, ends_at, enabled, stagger_s, "
    "stagger_groups) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
    "task_prizes": "INSERT INTO task_prizes (task_id, prize_type, quota, weight, rate_per_s) VALUES (%s, %s, %s, %s, %s)",
    "pois": "INSERT INTO pois (poi_id, poi_set_id, lat, lng) VALUES (%s, %s, %s, %s)",
}


def schema_statements() -> list[str]:
    """Return the CREATE TABLE statements of loaders/schema.sql (also at data/mysql/schema.sql)."""
    text = files("loaders").joinpath("schema.sql").read_text()
    body = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]


async def _insert(cur: aiomysql.Cursor, table: str, rows: Sequence[Sequence[Any]], batch: int) -> None:
    for start in range(0, len(rows), batch):
        await cur.executemany(INSERTS[table], rows[start : start + batch])


# Text fields and the widths of their columns in loaders/schema.sql: a longer value would not survive the
# import whole, so it is refused with its file, row and field rather than cut or failed mid-transaction.
WIDTHS: dict[Kind, dict[str, int]] = {"districts": {"name": 100}, "zones": {"id": 64, "reason": 200},
                                      "tasks": {"name": 200}, "prizes": {"prize_type": 40}}


async def _check_widths(source: FolderSource, errors: ErrorLog) -> None:
    for kind, widths in WIDTHS.items():
        for row in await source.rows(kind):
            for field, width in widths.items():
                text = str(row.fields.get(field) or "").strip()
                if len(text) > width:
                    errors.add(RowError(row.source, row.row, field, f"{len(text)} characters; the MySQL column holds {width}"))


async def small_tables(source: FolderSource, errors: ErrorLog) -> dict[str, list[list[Any]]]:
    tables = await read_tables(source, errors)
    # Each geometry goes from its parsed record (the shape the build uses), never looked up again by a raw id:
    # a numeric zone id looked up as text once found nothing and stored null.
    small = {
        "districts": [[d.code, d.name, d.parent_code, shapely.to_geojson(d.geometry)] for d in tables.districts.values()],
        "exclusion_zones": [[z.zone_id, z.reason, shapely.to_geojson(z.geometry)] for z in tables.zones],
        "tasks": [[t.task_id, t.name, t.district_code, t.poi_set_id, t.starts_at, t.ends_at, int(t.enabled), t.stagger_s,
                   t.stagger_groups] for _, t in tables.tasks],
        "task_prizes": [[p.task_id, p.prize_type, p.quota, p.weight, p.rate_per_s]
                        for prizes in tables.prizes.values() for p in prizes],
    }
    await _check_widths(source, errors)
    return small


async def import_folder(folder: Path, dsn: str, batch: int, progress: Callable[[str, int], None]) -> dict[str, int]:
    """Replace the MySQL source tables with the folder's content; return the row counts."""
    try:
        settings = MySQLSettings.from_dsn(dsn)
    except ValueError as exc:
        raise SourceError(f"--mysql: {exc}") from None
    source = FolderSource.at(str(folder))
    errors = ErrorLog()
    small = await small_tables(source, errors)
    errors.raise_if_any()
    conn = await connect(settings)
    counts = {table: len(rows) for table, rows in small.items()} | {"pois": 0}
    try:
        async with conn.cursor() as cur:
            with warnings.catch_warnings():
                # "Table already exists" notes from CREATE TABLE IF NOT EXISTS are expected on reruns.
                warnings.simplefilter("ignore", pymysql.Warning)
                for statement in schema_statements():
                    await cur.execute(statement)
            for table in INSERTS:
                await cur.execute(f"DELETE FROM {table}")
            for table, rows in small.items():
                await _insert(cur, table, rows, batch)
            async for chunk in source.poi_chunks():
                cols = parse_poi_chunk(chunk, errors)
                poi_rows = list(zip(cols.poi_id.tolist(), cols.poi_set_id.tolist(), cols.lat.tolist(), cols.lng.tolist()))
                await _insert(cur, "pois", poi_rows, batch)
                counts["pois"] += len(poi_rows)
                progress("import", counts["pois"])
        errors.raise_if_any()
        await conn.commit()
    except pymysql.err.MySQLError as exc:
        await conn.rollback()
        raise SourceError(f"{settings.redacted}: {exc}") from None
    except BaseException:
        await conn.rollback()
        raise
    finally:
        conn.close()
    return counts
