"""The SQL ledgers' transactions, written once as plans: generators that yield statements and receive
their results. The SQLite backend drives a plan synchronously in a thread, the MySQL backend with
aiomysql; both run it inside one transaction, so everything a plan does commits together or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from geo_service.ledger.interface import (
    ClaimIdTaken,
    ClaimRequest,
    Counters,
    LedgerState,
    Outcome,
    PrizeChange,
    PrizeChangeRefused,
)
from geo_service.ledger.rates import slice_of, take
from geo_service.ledger.records import (
    CLAIMS_COLLATION,
    CLAIMS_EXACT,
    CLAIMS_EXACT_COLLATION,
    CLAIMS_EXACT_NOTE,
    CLAIMS_INDEX,
    CLAIMS_TABLE,
    WON_BY_COUNTER,
    ClaimRecord,
    claim_row,
    delivery_row,
    differences,
    insert_claim,
    insert_delivery,
    to_move,
)
from geo_service.snapshot.grid import distance_m

Clock = Callable[[], float]


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
    has_column: str  # counts the columns named ? of table ?
    skip_locked: str = ""  # appended to a locking read to pass over rows another transaction holds

    def insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        """Return "insert this row unless its key exists" for the table and columns."""
        values = ", ".join("?" * len(columns))
        suffix = self.insert_ignore_suffix.format(first=columns[0])
        return f"{self.insert_ignore_prefix} INTO {table} ({', '.join(columns)}) VALUES ({values}){suffix}"


# SQLite runs each transaction under BEGIN IMMEDIATE (one writer at a time), so it needs no row locks.
SQLITE = Dialect("sqlite", "", "INSERT OR IGNORE", "", "SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?")
# Not INSERT IGNORE on MySQL: its duplicate-key warning makes the client fetch SHOW WARNINGS each time.
MYSQL = Dialect("mysql", " ON DUPLICATE KEY UPDATE {first} = {first}", "INSERT", " FOR UPDATE",
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND table_name = ? AND column_name = ?", " SKIP LOCKED")

SCHEMA = [
    # changed_at lets the collector read only what changed since its last tick; slice and slice_issued
    # are the prize's rate slice (rates.py): the last slice it issued in and how many it issued there.
    "CREATE TABLE IF NOT EXISTS prize_counters (task_id BIGINT NOT NULL, prize_type VARCHAR(40) NOT NULL, "
    "quota BIGINT NOT NULL, issued BIGINT NOT NULL DEFAULT 0, changed_at DOUBLE NOT NULL DEFAULT 0, "
    "rate_milli BIGINT NULL, slice BIGINT NOT NULL DEFAULT 0, slice_issued BIGINT NOT NULL DEFAULT 0, "
    "PRIMARY KEY (task_id, prize_type))",
    "CREATE INDEX IF NOT EXISTS prize_counters_changed ON prize_counters (changed_at)",
    CLAIMS_TABLE,
    CLAIMS_INDEX,
    "CREATE TABLE IF NOT EXISTS user_wins (user_id VARCHAR(64) NOT NULL, task_id BIGINT NOT NULL, "
    "wins INT NOT NULL, PRIMARY KEY (user_id, task_id))",
    "CREATE TABLE IF NOT EXISTS task_flags (task_id BIGINT NOT NULL PRIMARY KEY, enabled INT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS user_positions (user_id VARCHAR(64) NOT NULL PRIMARY KEY, lat DOUBLE NOT NULL, "
    "lng DOUBLE NOT NULL, at_s DOUBLE NOT NULL, event_wins INT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS prize_changes (seq BIGINT NOT NULL PRIMARY KEY, task_id BIGINT NOT NULL, "
    "prize_type VARCHAR(40) NOT NULL, quota BIGINT NOT NULL, rate_milli BIGINT NOT NULL, at DOUBLE NOT NULL)",
    "CREATE INDEX IF NOT EXISTS prize_changes_at ON prize_changes (at)",
]
# Every table the ledger owns, as the schema names them ("CREATE TABLE IF NOT EXISTS <name> ...").
LEDGER_TABLES = tuple(statement.split()[5] for statement in SCHEMA if statement.startswith("CREATE TABLE"))
# Columns added since the first release: a ledger made before them gets them on open. rate_milli is
# NULL there until the next seed fills it from the snapshot (a rate the counter always had).
ADDED_COLUMNS = (("prize_counters", "rate_milli", "BIGINT NULL", ""),
                 ("prize_counters", "slice", "BIGINT NOT NULL DEFAULT 0", ""),
                 ("prize_counters", "slice_issued", "BIGINT NOT NULL DEFAULT 0", ""),
                 # A player's wins in the event (player_win_cap), kept on their row with their position: a ledger
                 # made before it counts each player's wins so far from their deliveries (one per win).
                 ("user_positions", "event_wins", "INT NOT NULL DEFAULT 0",
                  "UPDATE user_positions SET event_wins = (SELECT COUNT(*) FROM deliveries d "
                  "WHERE d.user_id = user_positions.user_id)"))
SEED_COLUMNS = ("task_id", "prize_type", "quota", "rate_milli", "issued", "changed_at")


_INSERT_CLAIM, _INSERT_DELIVERY = insert_claim("?"), insert_delivery("?")


def migrate_plan(dialect: Dialect) -> Plan:
    """Add the columns a ledger made by an earlier release lacks; on MySQL, compare claims' ids byte for byte where
    the table is empty. Return what an operator must do (CLAIMS_EXACT_NOTE), or None."""
    for table, column, kind, backfill in ADDED_COLUMNS:
        present = yield Statement(dialect.has_column, (table, column), fetch="one")
        if not present[0]:
            yield Statement(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if backfill:
                yield Statement(backfill)
    if dialect is MYSQL:
        collation = yield Statement(CLAIMS_COLLATION, fetch="one")
        if collation != (CLAIMS_EXACT_COLLATION,):
            full = yield Statement("SELECT EXISTS (SELECT 1 FROM claims)", fetch="one")
            if full[0]:
                return CLAIMS_EXACT_NOTE.format(CLAIMS_EXACT)
            yield Statement(CLAIMS_EXACT)
    return None


def seed_rows_plan(counters: Sequence[tuple[int, str, int, int]], clock: Clock = time.time) -> Plan:
    """Return the prize_counters rows (SEED_COLUMNS) of the counters the ledger lacks. A counter is never seeded
    over what was issued: one whose task's claims hold wins (its row deleted by hand) starts at their count."""
    have = yield Statement("SELECT task_id, prize_type FROM prize_counters", fetch="all")
    existing = {(int(t), str(p)) for t, p in have}
    missing = [c for c in counters if (c[0], c[1]) not in existing]
    tasks = sorted({c[0] for c in missing})
    won: dict[tuple[int, str], int] = {}
    for start in range(0, len(tasks), 1000):
        chunk = tasks[start : start + 1000]
        rows = yield Statement(f"SELECT task_id, prize_type, COUNT(*) FROM claims WHERE outcome = 'won' AND task_id IN "
                               f"({', '.join('?' * len(chunk))}) GROUP BY task_id, prize_type", tuple(chunk), fetch="all")
        won |= {(int(t), str(p)): int(n) for t, p, n in rows}
    now = clock()
    return [(t, p, q, r, won.get((t, p), 0), now) for t, p, q, r in missing]


def fill_rates_plan(counters: Sequence[tuple[int, str, int, int]]) -> Plan:
    """Give migrated counters (rate unknown) the rate their snapshot sets."""
    missing = yield Statement("SELECT COUNT(*) FROM prize_counters WHERE rate_milli IS NULL", fetch="one")
    if missing[0]:
        for task_id, prize_type, _, rate in counters:
            yield Statement("UPDATE prize_counters SET rate_milli = ? WHERE task_id = ? AND prize_type = ? "
                            "AND rate_milli IS NULL", (rate, task_id, prize_type))


def claim_plan(request: ClaimRequest, draw: Sequence[str], win_cap: int, max_speed_mps: float, dialect: Dialect,
               player_cap: int = 0, clock: Clock = time.time) -> Plan:
    """The claim transaction, step by step; returns an Outcome."""
    r = request
    done = yield from outcome_plan(r)
    if done is not None:
        return done
    outcome, event_wins = yield from _movement(r, max_speed_mps, dialect)
    at = r.at_s
    if outcome is None:
        outcome, at = yield from _draw(r, draw, win_cap, player_cap, event_wins, dialect, clock)
    record = ClaimRecord.of(r, outcome, at)
    yield Statement(_INSERT_CLAIM, claim_row(record))
    if outcome.outcome == "won":  # its delivery row in the same transaction (the outbox)
        yield Statement(_INSERT_DELIVERY, delivery_row(record, at))
    return outcome


def _movement(r: ClaimRequest, max_speed_mps: float, dialect: Dialect) -> Plan:
    """Return (implausible_movement if the player could not have come from their last claim's position, else
    None; the player's wins in the event so far), keeping this position when plausible. The player's row is made
    first (here, long ago: any move from it is plausible) and read under its row lock, so one player's
    concurrent claims take turns: each sees the one before it, its position and its win."""
    yield Statement(dialect.insert_ignore("user_positions", ("user_id", "lat", "lng", "at_s")), (r.user_id, r.lat, r.lng, 0.0))
    last = yield Statement(f"SELECT lat, lng, at_s, event_wins FROM user_positions WHERE user_id = ?{dialect.for_update}",
                           (r.user_id,), fetch="one")
    seconds = max(r.at_s - float(last[2]), 1.0)  # clocks and retries jitter: never divide by ~0
    if distance_m(float(last[0]), float(last[1]), r.lat, r.lng) / seconds > max_speed_mps:
        return Outcome.of(r.claim_id, "implausible_movement"), int(last[3])
    yield Statement("UPDATE user_positions SET lat = ?, lng = ?, at_s = ? WHERE user_id = ?", (r.lat, r.lng, r.at_s, r.user_id))
    return None, int(last[3])


def _draw(r: ClaimRequest, draw: Sequence[str], win_cap: int, player_cap: int, event_wins: int, dialect: Dialect,
          clock: Clock) -> Plan:
    """Return (outcome, the time it was decided at), within the player's wins of the event (`event_wins` so far,
    read under their row's lock) and of the task."""
    left: int | None = None
    if player_cap:
        left = max(player_cap - event_wins, 0)
        if not left:
            # Their wins as committed (a locking read: MySQL's plain one would see the transaction's first snapshot).
            wins = yield Statement(f"SELECT claim_id, task_id, prize_type FROM deliveries WHERE user_id = ?"
                                   f"{dialect.for_update}", (r.user_id,), fetch="all")
            return replace(Outcome.of(r.claim_id, "player_cap_reached", wins_left=0),
                           wins=tuple((str(c), int(t), str(p)) for c, t, p in wins)), r.at_s
    outcome, at = yield from _draw_prize(r, draw, win_cap, dialect, clock)
    if outcome.outcome == "won":  # counted whether or not a cap is set: one can be set mid-event
        yield Statement("UPDATE user_positions SET event_wins = event_wins + 1 WHERE user_id = ?", (r.user_id,))
    if left is not None:
        outcome = replace(outcome, wins_left=left - (outcome.outcome == "won"))
    return outcome, at


def _draw_prize(r: ClaimRequest, draw: Sequence[str], win_cap: int, dialect: Dialect, clock: Clock) -> Plan:
    """Return (outcome, the time it was decided at) within the task's win cap."""
    yield Statement(dialect.insert_ignore("user_wins", ("user_id", "task_id", "wins")), (r.user_id, r.task_id, 0))
    capped = yield Statement("UPDATE user_wins SET wins = wins + 1 WHERE user_id = ? AND task_id = ? AND wins < ?",
                             (r.user_id, r.task_id, win_cap))
    if not capped:
        return Outcome.of(r.claim_id, "cap_reached"), r.at_s
    # Lock all of the task's counters at once, in key order: taking them one by one in each claim's
    # own draw order lets two claims each hold the counter the other needs (a deadlock).
    # The kill switch comes with them, in the same locking read (so MySQL reads the flag as committed, not as
    # this transaction's first read saw it): set_enabled_plan takes the same lock, so no win follows it.
    rows = yield Statement("SELECT c.prize_type, c.quota - c.issued, COALESCE(c.rate_milli, -1), c.slice, c.slice_issued, "
                           "COALESCE(f.enabled, 1) FROM prize_counters c LEFT JOIN task_flags f ON f.task_id = c.task_id "
                           f"WHERE c.task_id = ? ORDER BY c.prize_type{dialect.for_update}", (r.task_id,), fetch="all")
    # Read the clock holding the task's lock: claims then take rate slices in time order, and the
    # claim row's time is the slice it counted against.
    now = clock()
    if rows and not rows[0][5]:
        yield Statement("UPDATE user_wins SET wins = wins - 1 WHERE user_id = ? AND task_id = ?", (r.user_id, r.task_id))
        return Outcome.of(r.claim_id, "task_inactive"), now
    counters = {str(p): (int(left), int(rate), int(s), int(used)) for p, left, rate, s, used, _ in rows}
    for prize_type in draw:
        left, rate, slice_no, used = counters.get(prize_type, (0, -1, 0, 0))
        taken = take(rate, slice_no, used, slice_of(now)) if left > 0 else None
        if taken is not None:
            yield Statement("UPDATE prize_counters SET issued = issued + 1, changed_at = ?, slice = ?, slice_issued = ? "
                            "WHERE task_id = ? AND prize_type = ?", (now, *taken, r.task_id, prize_type))
            return Outcome.of(r.claim_id, "won", prize_type), now
    yield Statement("UPDATE user_wins SET wins = wins - 1 WHERE user_id = ? AND task_id = ?", (r.user_id, r.task_id))
    return Outcome.of(r.claim_id, "no_prize_left"), now


def outcome_plan(r: ClaimRequest) -> Plan:
    """Return a claim's recorded outcome (None: not settled yet); raise ClaimIdTaken if its id was first used by
    another player, or for another task or POI."""
    row = yield Statement("SELECT outcome, prize_type, reason, user_id, task_id, poi_id FROM claims WHERE claim_id = ?",
                          (r.claim_id,), fetch="one")
    if row is None:
        return None
    if (str(row[3]), int(row[4]), int(row[5])) != (r.user_id, r.task_id, r.poi_id):
        raise ClaimIdTaken(r.claim_id)
    return Outcome(r.claim_id, row[0], row[1], row[2])


def set_prize_plan(task_id: int, prize_type: str, quota: int | None, rate_milli: int | None, dialect: Dialect,
                   clock: Clock = time.time) -> Plan:
    """Change a prize's quota and/or rate, never below what is issued, and log the change under the next seq."""
    row = yield Statement(f"SELECT quota, issued, COALESCE(rate_milli, -1) FROM prize_counters WHERE task_id = ? "
                          f"AND prize_type = ?{dialect.for_update}", (task_id, prize_type), fetch="one")
    if row is None:
        raise PrizeChangeRefused("no_such_prize", f"task {task_id} has no prize {prize_type!r} in the ledger")
    new_quota = int(row[0]) if quota is None else quota
    new_rate = int(row[2]) if rate_milli is None else rate_milli
    if new_quota < int(row[1]):
        raise PrizeChangeRefused("quota_below_issued", f"quota {new_quota} is below the {int(row[1])} already issued "
                                                       f"of task {task_id} {prize_type}")
    # Two changes at once may pick the same seq: the primary key refuses one, and its transaction is run again.
    last = yield Statement("SELECT COALESCE(MAX(seq), 0) FROM prize_changes", fetch="one")
    change = PrizeChange(int(last[0]) + 1, clock(), task_id, prize_type, new_quota, new_rate)
    yield Statement("UPDATE prize_counters SET quota = ?, rate_milli = ?, changed_at = ? WHERE task_id = ? AND prize_type = ?",
                    (new_quota, new_rate, change.at, task_id, prize_type))
    yield Statement("INSERT INTO prize_changes (seq, task_id, prize_type, quota, rate_milli, at) VALUES (?, ?, ?, ?, ?, ?)",
                    (change.seq, task_id, prize_type, new_quota, new_rate, change.at))
    return change


# quota - issued computed by the database: the MySQL client decodes every field in Python.
_COUNTER_COLUMNS = "SELECT task_id, prize_type, quota - issued, quota, COALESCE(rate_milli, -1) FROM prize_counters"


def read_state_plan(since: float) -> Plan:
    counters = yield Statement(f"{_COUNTER_COLUMNS} WHERE changed_at >= ?", (since,), fetch="all")
    disabled = yield Statement("SELECT task_id FROM task_flags WHERE enabled = 0", fetch="all")
    return LedgerState(Counters.from_rows(counters), frozenset(int(t) for (t,) in disabled))


def read_changes_plan(since: float) -> Plan:
    rows = yield Statement("SELECT seq, at, task_id, prize_type, quota, rate_milli FROM prize_changes WHERE at >= ? "
                           "ORDER BY seq", (since,), fetch="all")
    return [PrizeChange(int(s), float(a), int(t), str(p), int(q), int(r)) for s, a, t, p, q, r in rows]


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
    """Set a task's kill switch, holding the task's counters as a claim's draw does; return the time of the
    task's last win (None: none yet), which then is the last the switch allowed."""
    yield Statement(f"SELECT prize_type FROM prize_counters WHERE task_id = ?{dialect.for_update}", (task_id,), fetch="all")
    yield Statement(dialect.insert_ignore("task_flags", ("task_id", "enabled")), (task_id, int(enabled)))
    yield Statement("UPDATE task_flags SET enabled = ? WHERE task_id = ?", (int(enabled), task_id))
    last = yield Statement("SELECT MAX(created_at) FROM claims WHERE task_id = ? AND outcome = 'won'", (task_id,),
                           fetch="one")
    return None if last[0] is None else float(last[0])


def reconcile_plan(repair: bool, lower: bool) -> Plan:
    """Compare every counter with its won claims, both read in one transaction's snapshot (MySQL's repeatable
    read; SQLite's IMMEDIATE transaction holds the writers off); with repair, move each counter by its difference,
    so a claim that commits meanwhile keeps its increment."""
    issued = yield Statement("SELECT task_id, prize_type, issued FROM prize_counters ORDER BY task_id, prize_type",
                             fetch="all")
    won = yield Statement(WON_BY_COUNTER, fetch="all")
    diffs = differences(((int(t), str(p), int(i)) for t, p, i in issued), {(int(t), str(p)): int(n) for t, p, n in won})
    if repair:
        for d in to_move(diffs, lower):
            yield Statement("UPDATE prize_counters SET issued = issued + ?, changed_at = ? WHERE task_id = ? AND prize_type = ?",
                            (d.won_claims - d.issued, time.time(), d.task_id, d.prize_type))
    return diffs


