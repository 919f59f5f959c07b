"""The MySQL source: small tables read whole, POIs streamed through a server-side cursor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiomysql
import pyarrow as pa
import pymysql

from geo_service.dsn import MySQLSettings
from loaders.errors import SourceError
from loaders.pois import POI_FIELDS, PoiChunk
from loaders.sources.interface import Kind, SourceRow

TABLES: dict[Kind, tuple[str, str]] = {
    # kind: (table, key to order by so row numbers are stable between runs)
    "districts": ("districts", "code"),
    "zones": ("exclusion_zones", "id"),
    "tasks": ("tasks", "task_id"),
    "prizes": ("task_prizes", "task_id, prize_type"),
}
GEOMETRY_COLUMN = "geojson"
# Rows per fetch from the server-side cursor: large enough to amortise the round trip, small
# enough that a chunk of Python tuples stays a few MB.
_FETCH_ROWS = 50_000


async def connect(settings: MySQLSettings) -> aiomysql.Connection:
    """Open a connection, turning every failure into a SourceError that names the server."""
    try:
        return await aiomysql.connect(
            host=settings.host, port=settings.port, user=settings.user, password=settings.password,
            db=settings.database, connect_timeout=5, autocommit=False,
        )
    except (pymysql.err.MySQLError, OSError) as exc:
        raise SourceError(f"{settings.redacted}: cannot connect: {exc}") from None


class MySQLSource:
    def __init__(self, settings: MySQLSettings) -> None:
        self.settings = settings
        self._conn: aiomysql.Connection | None = None

    @classmethod
    def from_dsn(cls, dsn: str) -> MySQLSource:
        try:
            return cls(MySQLSettings.from_dsn(dsn))
        except ValueError as exc:
            raise SourceError(f"--source {dsn.split('@')[-1]}: {exc}") from None

    @property
    def name(self) -> str:
        return self.settings.redacted

    async def _connection(self) -> aiomysql.Connection:
        if self._conn is None:
            self._conn = await connect(self.settings)
        return self._conn

    def _label(self, table: str) -> str:
        return f"{self.name}/{table}"

    async def rows(self, kind: Kind) -> list[SourceRow]:
        table, order = TABLES[kind]
        conn = await self._connection()
        try:
            async with conn.cursor(aiomysql.DictCursor) as cur:
                await cur.execute(f"SELECT * FROM {table} ORDER BY {order}")
                fetched: list[dict[str, Any]] = await cur.fetchall()
        except pymysql.err.MySQLError as exc:
            raise SourceError(f"{self._label(table)}: {exc}") from None
        label = self._label(table)
        return [SourceRow(label, i, r, r.get(GEOMETRY_COLUMN)) for i, r in enumerate(fetched, start=1)]

    async def poi_chunks(self) -> AsyncIterator[PoiChunk]:
        conn = await self._connection()
        label = self._label("pois")
        row = 1
        try:
            async with conn.cursor(aiomysql.SSCursor) as cur:
                await cur.execute(f"SELECT {', '.join(POI_FIELDS)} FROM pois ORDER BY poi_id")
                while rows := await cur.fetchmany(_FETCH_ROWS):
                    columns = zip(*rows, strict=True)
                    yield PoiChunk(label, row, {f: pa.array(c) for f, c in zip(POI_FIELDS, columns)})
                    row += len(rows)
        except pymysql.err.MySQLError as exc:
            raise SourceError(f"{label}: {exc}") from None

    async def poi_count_hint(self) -> int | None:
        conn = await self._connection()
        try:
            async with conn.cursor() as cur:  # the server's estimate: no scan of the table
                await cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES "
                                  "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'pois'")
                found = await cur.fetchone()
        except pymysql.err.MySQLError:
            return None
        return int(found[0]) if found and found[0] is not None else None

    async def disabled_task_ids(self) -> frozenset[int]:
        """Return the tasks whose `enabled` column is 0 (the collector's kill switch on a MySQL source)."""
        conn = await self._connection()
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT task_id FROM tasks WHERE enabled = 0")
                rows = await cur.fetchall()
            await conn.commit()  # end the read, so the next tick sees new changes
        except (pymysql.err.MySQLError, OSError) as exc:
            await self.close()  # reconnect next time
            raise SourceError(f"{self._label('tasks')}: {exc}") from None
        return frozenset(int(t) for (t,) in rows)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
