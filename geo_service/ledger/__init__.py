"""The ledger: prize counters and claim records, behind one small interface with two backends.

The claim transaction is written once, as a plan: a generator that yields SQL statements and
receives their results. The SQLite backend drives it synchronously in a thread, the MySQL
backend with aiomysql; both run it inside one transaction, so a win is the conditional
increment `issued < quota` committed together with its claim row, or nothing at all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

EARTH_RADIUS_M = 6_371_008.8


class LedgerError(Exception):
    """The ledger database cannot be reached or failed; the claim changed nothing."""


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    claim_id: str
    user_id: str
    task_id: int
    poi_id: int
    lat: float
    lng: float
    at_s: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a claim came to. outcome: won, no_prize_left, cap_reached or implausible_movement."""

    claim_id: str
    outcome: str
    prize_type: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    """A counter that disagrees with its claim rows."""

    task_id: int
    prize_type: str
    issued: int
    won_claims: int


@dataclass(frozen=True, slots=True)
class Counters:
    """What is left of prize counters, as columns: the collector aggregates hundreds of thousands of them."""

    task_id: npt.NDArray[np.int64]
    prize_type: list[str]
    left: npt.NDArray[np.int64]  # quota minus issued

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, str, int]]) -> Counters:
        """Return the columns of (task_id, prize_type, quota - issued) rows."""
        if not rows:
            empty = np.empty(0, dtype=np.int64)
            return cls(empty, [], empty)
        task_id, prize_type, left = zip(*rows)
        return cls(np.array(task_id, dtype=np.int64), [str(p) for p in prize_type], np.array(left, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.prize_type)

    def last_key(self) -> tuple[int, str] | None:
        """Return the (task_id, prize_type) of the last row, where the next page of a key-order read starts."""
        return (int(self.task_id[-1]), self.prize_type[-1]) if len(self) else None


@dataclass(frozen=True, slots=True)
class LedgerState:
    """The counters changed since a given time, and the tasks switched off."""

    counters: Counters
    disabled: frozenset[int]


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str  # "?" placeholders; backends translate
    params: tuple[Any, ...] = ()
    fetch: Literal["", "one", "all"] = ""  # what the plan receives: the rowcount, the first row (or None), all rows


Plan = Generator[Statement, Any, Any]
@dataclass(frozen=True, slots=True)
class Dialect:
    """The few places where SQLite and MySQL SQL differ."""

    name: str
    insert_ignore_suffix: str  # appended to INSERT ... VALUES (...) to make a duplicate key a no-op
    insert_ignore_prefix: str  # replaces "INSERT" for the same purpose
    for_update: str  # row-lock clause for a SELECT inside a transaction

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        """Return "insert this row unless its key exists" for the table and columns."""
        values = ", ".join("?" * len(columns))
        suffix = self.insert_ignore_suffix.format(first=columns[0])
        return f"{self.insert_ignore_prefix} INTO {table} ({', '.join(columns)}) VALUES ({values}){suffix}"


# SQLite runs each transaction under BEGIN IMMEDIATE (one writer at a time), so it needs no row locks.
SQLITE = Dialect("sqlite", "", "INSERT OR IGNORE", "")
# Not INSERT IGNORE on MySQL: its duplicate-key warning makes the client fetch SHOW WARNINGS each time.
MYSQL = Dialect("mysql", " ON DUPLICATE KEY UPDATE {first} = {first}", "INSERT", " FOR UPDATE")


class Ledger(Protocol):
    async def seed(self, counters: Sequence[tuple[int, str, int]]) -> None:
        """Create missing prize counters (task_id, prize_type, quota); existing ones are kept."""
        ...

    async def claim(self, request: ClaimRequest, draw: Sequence[str], win_cap: int, max_speed_mps: float) -> Outcome:
        """Run the claim transaction; a retried claim_id returns its first outcome."""
        ...

    async def outcome_of(self, claim_id: str) -> Outcome | None:
        """Return the recorded outcome of a claim id, if any (retries answer before any other check)."""
        ...

    async def reconcile(self, repair: bool) -> list[Difference]:
        """Return counters that differ from their won claims; with repair, set them to the claims' count."""
        ...

    async def read_state(self, since: float) -> LedgerState:
        """Return the counters changed at or after `since` and every task flag, as of one moment."""
        ...

    async def read_page(self, after: tuple[int, str] | None, limit: int) -> Counters:
        """Return up to `limit` counters in key order, starting after the (task_id, prize_type) key `after`:
        a complete read in pieces, each cheap for the database and for the reader."""
        ...

    async def set_enabled(self, task_id: int, enabled: bool) -> None:
        """Set a task's kill switch (the collector applies it on its next tick)."""
        ...

    async def close(self) -> None: ...


def distance_m(lat0: float, lng0: float, lat1: float, lng1: float) -> float:
    """Return the great-circle distance in metres."""
    p0, p1 = math.radians(lat0), math.radians(lat1)
    a = math.sin((p1 - p0) / 2) ** 2 + math.cos(p0) * math.cos(p1) * math.sin(math.radians(lng1 - lng0) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(a, 1.0)))


def claim_plan(
    request: ClaimRequest, draw: Sequence[str], win_cap: int, max_speed_mps: float, dialect: Dialect
) -> Plan:
    """The claim transaction, step by step; returns an Outcome."""
    r = request
    done = yield from outcome_plan(r.claim_id)
    if done is not None:
        return done
    outcome = yield from _movement(r, max_speed_mps, dialect)
    if outcome is None:
        outcome = yield from _draw(r, draw, win_cap, dialect)
    yield Statement(
        "INSERT INTO claims (claim_id, user_id, task_id, poi_id, prize_type, outcome, reason, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (r.claim_id, r.user_id, r.task_id, r.poi_id, outcome.prize_type, outcome.outcome, outcome.reason, r.at_s),
    )
    return outcome


def _movement(r: ClaimRequest, max_speed_mps: float, dialect: Dialect) -> Plan:
    last = yield Statement("SELECT lat, lng, at_s FROM user_positions WHERE user_id = ?", (r.user_id,), fetch="one")
    if last is not None:
        seconds = max(r.at_s - float(last[2]), 1.0)  # clocks and retries jitter: never divide by ~0
        if distance_m(float(last[0]), float(last[1]), r.lat, r.lng) / seconds > max_speed_mps:
            return Outcome(r.claim_id, "implausible_movement", reason="moved faster than a person can")
    yield Statement(dialect.insert_ignore("user_positions", ("user_id", "lat", "lng", "at_s")), (r.user_id, r.lat, r.lng, r.at_s))
    yield Statement("UPDATE user_positions SET lat = ?, lng = ?, at_s = ? WHERE user_id = ?", (r.lat, r.lng, r.at_s, r.user_id))
    return None


def _draw(r: ClaimRequest, draw: Sequence[str], win_cap: int, dialect: Dialect) -> Plan:
    yield Statement(dialect.insert_ignore("user_wins", ("user_id", "task_id", "wins")), (r.user_id, r.task_id, 0))
    capped = yield Statement("UPDATE user_wins SET wins = wins + 1 WHERE user_id = ? AND task_id = ? AND wins < ?",
                             (r.user_id, r.task_id, win_cap))
    if not capped:
        return Outcome(r.claim_id, "cap_reached", reason=f"at most {win_cap} wins per task")
    # Lock all of the task's counters at once, in key order: taking them one by one in each claim's
    # own draw order lets two claims each hold the counter the other needs (a deadlock).
    yield Statement(f"SELECT prize_type FROM prize_counters WHERE task_id = ? ORDER BY prize_type{dialect.for_update}",
                    (r.task_id,), fetch="all")
    for prize_type in draw:
        won = yield Statement(
            "UPDATE prize_counters SET issued = issued + 1, changed_at = ? "
            "WHERE task_id = ? AND prize_type = ? AND issued < quota",
            (r.at_s, r.task_id, prize_type),
        )
        if won:
            return Outcome(r.claim_id, "won", prize_type)
    yield Statement("UPDATE user_wins SET wins = wins - 1 WHERE user_id = ? AND task_id = ?", (r.user_id, r.task_id))
    return Outcome(r.claim_id, "no_prize_left", reason="every prize of this task is taken or paused")


def outcome_plan(claim_id: str) -> Plan:
    row = yield Statement("SELECT outcome, prize_type, reason FROM claims WHERE claim_id = ?", (claim_id,), fetch="one")
    return None if row is None else Outcome(claim_id, row[0], row[1], row[2])


SEED_COLUMNS = ("task_id", "prize_type", "quota", "issued", "changed_at")


# One computed column rather than quota and issued: the MySQL client decodes every field in Python.
_COUNTER_COLUMNS = "SELECT task_id, prize_type, quota - issued FROM prize_counters"


def read_state_plan(since: float) -> Plan:
    counters = yield Statement(f"{_COUNTER_COLUMNS} WHERE changed_at >= ?", (since,), fetch="all")
    disabled = yield Statement("SELECT task_id FROM task_flags WHERE enabled = 0", fetch="all")
    return LedgerState(Counters.from_rows(counters), frozenset(int(t) for (t,) in disabled))


def read_page_plan(after: tuple[int, str] | None, limit: int) -> Plan:
    if after is None:
        rows = yield Statement(f"{_COUNTER_COLUMNS} ORDER BY task_id, prize_type LIMIT ?", (limit,), fetch="all")
    else:
        # A range on the key's first column, not a row-value or OR comparison: both engines then walk
        # the primary key from `after` and stop at the limit.
        rows = yield Statement(f"{_COUNTER_COLUMNS} WHERE task_id >= ? AND NOT (task_id = ? AND prize_type <= ?) "
                               "ORDER BY task_id, prize_type LIMIT ?", (after[0], after[0], after[1], limit), fetch="all")
    return Counters.from_rows(rows)


def set_enabled_plan(task_id: int, enabled: bool, dialect: Dialect) -> Plan:
    yield Statement(dialect.insert_ignore("task_flags", ("task_id", "enabled")), (task_id, int(enabled)))
    yield Statement("UPDATE task_flags SET enabled = ? WHERE task_id = ?", (int(enabled), task_id))
    return None


def reconcile_plan(repair: bool) -> Plan:
    """Compare every counter with its won claims; with repair, set issued to that count."""
    rows = yield Statement(
        "SELECT c.task_id, c.prize_type, c.issued, "
        "(SELECT COUNT(*) FROM claims w WHERE w.task_id = c.task_id AND w.prize_type = c.prize_type AND w.outcome = 'won') "
        "FROM prize_counters c ORDER BY c.task_id, c.prize_type",
        fetch="all",
    )
    diffs = [Difference(int(t), str(p), int(i), int(n)) for t, p, i, n in rows if int(i) != int(n)]
    if repair:
        for d in diffs:
            yield Statement("UPDATE prize_counters SET issued = ?, changed_at = ? WHERE task_id = ? AND prize_type = ?",
                            (d.won_claims, time.time(), d.task_id, d.prize_type))
    return diffs


SCHEMA = [
    # changed_at lets the collector read only what changed since its last tick.
    "CREATE TABLE IF NOT EXISTS prize_counters (task_id BIGINT NOT NULL, prize_type VARCHAR(40) NOT NULL, "
    "quota BIGINT NOT NULL, issued BIGINT NOT NULL DEFAULT 0, changed_at DOUBLE NOT NULL DEFAULT 0, "
    "PRIMARY KEY (task_id, prize_type))",
    "CREATE INDEX IF NOT EXISTS prize_counters_changed ON prize_counters (changed_at)",
    "CREATE TABLE IF NOT EXISTS claims (claim_id VARCHAR(64) NOT NULL PRIMARY KEY, user_id VARCHAR(64) NOT NULL, "
    "task_id BIGINT NOT NULL, poi_id BIGINT NOT NULL, prize_type VARCHAR(40) NULL, outcome VARCHAR(32) NOT NULL, "
    "reason VARCHAR(80) NULL, created_at DOUBLE NOT NULL)",
    "CREATE INDEX IF NOT EXISTS claims_task_prize ON claims (task_id, prize_type, outcome)",
    "CREATE TABLE IF NOT EXISTS user_wins (user_id VARCHAR(64) NOT NULL, task_id BIGINT NOT NULL, "
    "wins INT NOT NULL, PRIMARY KEY (user_id, task_id))",
    "CREATE TABLE IF NOT EXISTS task_flags (task_id BIGINT NOT NULL PRIMARY KEY, enabled INT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS user_positions (user_id VARCHAR(64) NOT NULL PRIMARY KEY, lat DOUBLE NOT NULL, "
    "lng DOUBLE NOT NULL, at_s DOUBLE NOT NULL)",
]
# Every table the ledger owns, as the schema names them ("CREATE TABLE IF NOT EXISTS <name> ...").
LEDGER_TABLES = tuple(statement.split()[5] for statement in SCHEMA if statement.startswith("CREATE TABLE"))


def open_ledger(dsn: str) -> Ledger:
    """Return the ledger a DSN names: sqlite:///PATH or mysql://user:pass@host:port/db."""
    if dsn.startswith("sqlite:///"):
        from geo_service.ledger.sqlite import SQLiteLedger

        return SQLiteLedger(dsn.removeprefix("sqlite:///"))
    if dsn.startswith("mysql://"):
        from geo_service.ledger.mysql import MySQLLedger
        from geo_service.settings import MySQLSettings

        return MySQLLedger(MySQLSettings.from_dsn(dsn))
    raise ValueError(f"ledger must be sqlite:///PATH or mysql://...; got {dsn.split('://')[0]!r}://")
