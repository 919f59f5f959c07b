"""The draft's database: the source tables (loaders/schema.sql) plus the console's own, in SQLite or MySQL.

A MySQL draft is the production source itself: the build reads the same tables the console writes. A SQLite
draft is the embedded default's, filled once from a data folder. The console's traffic is a few operators, so
each operation opens its own DB-API connection in a thread (pymysql, which aiomysql is built on, or sqlite3),
and one SQL text serves both (written with %s, turned into ? for SQLite). Every write runs in one transaction
under one lock for the whole draft (MySQL GET_LOCK, SQLite BEGIN IMMEDIATE): a save is all or nothing, and two
consoles on one database never interleave.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pymysql
import pymysql.cursors

from geo_service.dsn import MySQLSettings
from geo_service.web.errors import ApiError
from loaders.errors import SourceError
from loaders.mysql_import import schema_statements

T = TypeVar("T")
LOCK_WAIT_S = 10
CONSOLE_TABLES = [
    "CREATE TABLE IF NOT EXISTS console_versions (target VARCHAR(80) NOT NULL PRIMARY KEY, version BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS console_audit (id {autoincrement}, at DOUBLE NOT NULL, who VARCHAR(64) NOT NULL, "
    "action VARCHAR(32) NOT NULL, target VARCHAR(80) NOT NULL, version BIGINT NOT NULL, detail LONGTEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS console_published (task_id BIGINT NOT NULL, prize_type VARCHAR(40) NOT NULL, "
    "PRIMARY KEY (task_id, prize_type))",
]
QUERY_TIMEOUT_S = 600  # a MySQL read or write that takes longer: the server is gone, not busy
_AUTOINCREMENT = {"mysql": "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY", "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT"}
_MYSQL_ONLY = re.compile(r",\s*KEY \w+ \([^)]*\)|\)\s*ENGINE=[^;]*$")


class DraftError(SourceError, ApiError):
    """The draft's database cannot be reached or refused a statement: the CLI's exit 2, the API's 503."""

    status, code = 503, "draft_unavailable"


class Cursor:
    """What a unit of work sees: execute with %s parameters, fetch rows as tuples."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self._raw = raw
        self.dialect = dialect

    @property
    def insert_ignore(self) -> str:
        """INSERT that skips rows whose key is there already, in this dialect's words."""
        return "INSERT OR IGNORE" if self.dialect == "sqlite" else "INSERT IGNORE"

    def _sql(self, sql: str) -> str:
        return sql.replace("%s", "?") if self.dialect == "sqlite" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        self._raw.execute(self._sql(sql), tuple(params))
        return self

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._raw.executemany(self._sql(sql), [tuple(r) for r in rows])

    def all(self) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._raw.fetchall()]

    def fetch(self, n: int) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._raw.fetchmany(n)]

    def one(self) -> tuple[Any, ...] | None:
        row = self._raw.fetchone()
        return None if row is None else tuple(row)

    @property
    def lastrowid(self) -> int:
        return int(self._raw.lastrowid)


def _for_sqlite(statement: str) -> str:
    """A CREATE TABLE of schema.sql in SQLite's words: no secondary KEY clauses, no ENGINE options."""
    return _MYSQL_ONLY.sub(lambda m: ")" if m[0].lstrip().startswith(")") else "", statement)


@dataclass(frozen=True, slots=True)
class Db:
    """A draft database named by a DSN: sqlite:///PATH or mysql://user:pass@host:port/db."""

    dsn: str = field(repr=False)

    @property
    def dialect(self) -> str:
        return "mysql" if self.dsn.startswith("mysql://") else "sqlite"

    @property
    def name(self) -> str:
        """The database, safe to show (no password)."""
        return MySQLSettings.from_dsn(self.dsn).redacted if self.dialect == "mysql" else self.dsn

    def check(self) -> None:
        """Raise ValueError naming what is wrong with the DSN."""
        if self.dialect == "mysql":
            MySQLSettings.from_dsn(self.dsn)
        elif not self.dsn.startswith("sqlite:///") or len(self.dsn) == len("sqlite:///"):
            raise ValueError("the draft must be sqlite:///PATH or mysql://user:pass@host:port/db")

    @property
    def lock_name(self) -> str:
        """The draft's MySQL lock: one per database (GET_LOCK names are server-wide, and at most 64 characters)."""
        return "geodrop_console:" + hashlib.sha256(MySQLSettings.from_dsn(self.dsn).database.encode()).hexdigest()[:32]

    def _connect(self) -> Any:
        if self.dialect == "mysql":
            s = MySQLSettings.from_dsn(self.dsn)
            return pymysql.connect(host=s.host, port=s.port, user=s.user, password=s.password, database=s.database,
                                   connect_timeout=5, read_timeout=QUERY_TIMEOUT_S, write_timeout=QUERY_TIMEOUT_S,
                                   autocommit=False, charset="utf8mb4")
        path = Path(self.dsn.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)

    def _run(self, work: Callable[[Cursor], T], write: bool, stream: bool = False) -> T:
        try:
            conn = self._connect()
        except (pymysql.err.MySQLError, sqlite3.Error, OSError) as exc:
            raise DraftError(f"{self.name}: cannot open the draft: {exc}") from None
        try:
            # pymysql's default cursor reads a whole result at execute(); a streamed read (all the POIs) must not
            raw = conn.cursor(pymysql.cursors.SSCursor) if stream and self.dialect == "mysql" else conn.cursor()
            cur = Cursor(raw, self.dialect)
            if self.dialect == "sqlite":
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            elif write:
                self._lock(cur)
            try:
                result = work(cur)
                cur.execute("COMMIT") if self.dialect == "sqlite" else conn.commit()
                return result
            except BaseException:
                cur.execute("ROLLBACK") if self.dialect == "sqlite" else conn.rollback()
                raise
        except (pymysql.err.MySQLError, sqlite3.Error) as exc:
            raise DraftError(f"{self.name}: {exc}") from None
        finally:
            conn.close()  # a MySQL connection's end releases its GET_LOCK too

    def _lock(self, cur: Cursor) -> None:
        if cur.execute("SELECT GET_LOCK(%s, %s)", (self.lock_name, LOCK_WAIT_S)).one() != (1,):
            raise DraftError(f"{self.name}: the draft was busy for {LOCK_WAIT_S} s (another save, or a publish reading "
                             "it); nothing changed, try again")

    def _locked_connection(self) -> Any:
        try:
            conn = self._connect()
        except (pymysql.err.MySQLError, OSError) as exc:
            raise DraftError(f"{self.name}: cannot open the draft: {exc}") from None
        try:
            self._lock(Cursor(conn.cursor(), self.dialect))
        except BaseException:
            conn.close()
            raise
        return conn

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Keep saves out of a MySQL draft while a build reads it (they wait, then fail with DraftError): what is
        built is one revision of the draft. A SQLite draft is exported in one read transaction instead."""
        if self.dialect != "mysql":
            yield
            return
        conn = await asyncio.to_thread(self._locked_connection)
        try:
            yield
        finally:
            await asyncio.to_thread(conn.close)  # the connection's end releases the lock

    async def read(self, work: Callable[[Cursor], T], stream: bool = False) -> T:
        """Run `work` in one read transaction, in a thread; with `stream`, a MySQL result comes as it is fetched
        (finish one result before the next query)."""
        return await asyncio.to_thread(self._run, work, False, stream)

    async def write(self, work: Callable[[Cursor], T]) -> T:
        """Run `work` in one transaction under the draft's lock, in a thread: all of it is kept, or none."""
        return await asyncio.to_thread(self._run, work, True)

    def _wal(self) -> None:
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()

    async def create_tables(self) -> None:
        """Create the source tables and the console's, where missing."""
        def create(cur: Cursor) -> None:
            for statement in schema_statements():
                cur.execute(_for_sqlite(statement) if self.dialect == "sqlite" else statement)
            for statement in CONSOLE_TABLES:
                cur.execute(statement.format(autoincrement=_AUTOINCREMENT[self.dialect]))
            if self.dialect == "sqlite":  # schema.sql's KEY clause, which SQLite writes apart
                cur.execute("CREATE INDEX IF NOT EXISTS pois_set ON pois (poi_set_id)")
        if self.dialect == "sqlite":  # readers (an export, the zone counts) then never hold a save up
            await asyncio.to_thread(self._wal)
        await self.write(create)
