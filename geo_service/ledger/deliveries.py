"""The delivery record: one row per won claim, made with the claim's own record (an outbox), and the
transactions the dispatchers, the players and the operators run on it, written once as plans.

A row lives in the record database beside `claims` (the SQLite ledger's file, the MySQL ledger's database,
a Redis ledger's record_db). States: pending -> sending -> delivered | parked | failed. `due_at` is when a
dispatcher may take the row next (a pending row's next attempt, a sending row's lease end); it is NULL for a
row no dispatcher should take (delivered, parked, failed), so the lease reads one index range.

A channel's shared pace lives in `delivery_channels`: every dispatcher of a channel leases through its row,
under its row lock, at most the channel's allowance of each 100 ms slice (rates.py), so the rate holds across
all of them together; the pace drops by a proportion when the partner chokes and climbs back while it keeps up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from geo_service.ledger.plans import MYSQL, SQLITE, Dialect, Plan, Statement
from geo_service.ledger.rates import allowance, slice_of
from geo_service.ledger.records import ClaimRecord, delivery_row, insert_delivery

STATES = ("pending", "sending", "delivered", "parked", "failed")
# The pace: at most once in SLOW_EVERY slices it drops to SLOW_FACTOR of itself (answers of calls sent before a
# drop still arrive after it); it climbs by CLIMB_SHARE of the configured rate each slice after QUIET slices
# without one; never below the floor, where it keeps probing.
SLOW_EVERY, SLOW_FACTOR, CLIMB_SHARE, QUIET = 5, 0.8, 0.01, 3
FLOOR_MILLI = 1000
# The won claim a delivery row stands for: the same id, player and prize. A row without one is never sent.
_ITS_WIN = "c.claim_id = d.claim_id AND c.outcome = 'won' AND c.user_id = d.user_id AND c.prize_type = d.prize_type"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A leased delivery, as a dispatcher sends it."""

    claim_id: str
    user_id: str
    task_id: int
    prize_type: str
    won_at: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Lease:
    """What one lease took: the deliveries to send now, and the channel's pace and switches as they stand."""

    deliveries: list[Delivery]
    slice: int  # the 100 ms slice whose allowance they took: they are sent in it
    pace_milli: int
    rate_milli: int
    paused: bool
    hold_until: float


@dataclass(frozen=True, slots=True)
class Result:
    """How one call ended. kind: delivered, retry (at due_at), parked or failed."""

    claim_id: str
    kind: str
    owner: str
    attempt: int  # the lease's attempt number: an answer moves only the lease it was sent under
    detail: str | None = None  # the partner's reference for delivered, else the error
    due_at: float | None = None


def _channel_row(name: str, dialect: Dialect) -> Plan:
    yield Statement(dialect.insert_ignore("delivery_channels", ("name",)), (name,))
    row = yield Statement("SELECT rate_milli, paused, pace_milli, slice, slice_used, slowed_slice, hold_until "
                          f"FROM delivery_channels WHERE name = ?{dialect.for_update}", (name,), fetch="one")
    return row


def lease_plan(channel: str, prize_types: Sequence[str], configured_milli: int, want: int, owner: str, lease_s: float,
               dialect: Dialect, for_slice: int = 0, clock: Any = time.time) -> Plan:
    """Take up to `want` due deliveries of the channel's prize types within what its pace leaves of a 100 ms slice (the
    one asked for, `for_slice`, if it has not begun; else this one; a later one another dispatcher leased for, if
    any), oldest first, each checked against its won claim (a row with none is failed, never sent); mark them sending
    until the lease ends. Returns a Lease, naming the slice it is for."""
    rate_row, paused, pace, slice_no, used, slowed, hold_until = yield from _channel_row(channel, dialect)
    rate = configured_milli if rate_row is None else int(rate_row)
    now = clock()
    n = max(slice_of(now), for_slice)
    pace = rate if int(pace) < 0 else min(int(pace), rate)
    if n > int(slice_no):
        if n - int(slowed) > QUIET:
            pace = min(rate, pace + max(1, round(rate * CLIMB_SHARE)))
        slice_no, used = n, 0
    room = 0 if paused or now < float(hold_until) else max(0, allowance(pace, int(slice_no)) - int(used))
    rows: list[Any] = []
    for prize_type in prize_types:
        if len(rows) >= min(room, want):
            break
        # Only the deliveries rows are locked (SKIP LOCKED passes over those another dispatcher holds): a join's claims
        # rows would be locked and skipped too, and a win whose row a re-shipped batch holds would look missing.
        rows += yield Statement(
            "SELECT claim_id, user_id, task_id, prize_type, won_at, attempts FROM deliveries WHERE prize_type = ? AND "
            f"due_at <= ? ORDER BY due_at LIMIT ?{dialect.for_update}{dialect.skip_locked}",
            (prize_type, now, min(room, want) - len(rows)), fetch="all")
    real: set[str] = set()
    if rows:
        # A plain read: it sees every claim committed before it, the one committed with each row among them.
        won = yield Statement(f"SELECT d.claim_id FROM deliveries d JOIN claims c ON {_ITS_WIN} WHERE d.claim_id IN "
                              f"({', '.join('?' * len(rows))})", tuple(str(r[0]) for r in rows), fetch="all")
        real = {str(c) for (c,) in won}
    unreal = [str(r[0]) for r in rows if str(r[0]) not in real]
    if unreal:
        yield Statement(f"UPDATE deliveries SET state = 'failed', due_at = NULL, last_error = ?, updated_at = ? "
                        f"WHERE claim_id IN ({', '.join('?' * len(unreal))})",
                        ("no won claim of this player and prize matches it", now, *unreal))
    taken = [Delivery(str(c), str(u), int(t), str(p), float(w), int(a) + 1) for c, u, t, p, w, a in rows if str(c) in real]
    if taken:
        ids = [d.claim_id for d in taken]
        yield Statement(f"UPDATE deliveries SET state = 'sending', due_at = ?, attempts = attempts + 1, lease_owner = ?, "
                        f"updated_at = ? WHERE claim_id IN ({', '.join('?' * len(ids))})", (now + lease_s, owner, now, *ids))
    yield Statement("UPDATE delivery_channels SET pace_milli = ?, slice = ?, slice_used = ?, sent = sent + ? WHERE name = ?",
                    (pace, slice_no, int(used) + len(taken), len(taken), channel))
    return Lease(taken, int(slice_no), pace, rate, bool(paused), float(hold_until))


def slow_plan(channel: str, configured_milli: int, hold_s: float, dialect: Dialect, clock: Any = time.time) -> Plan:
    """The partner choked (429, 503, a timeout): drop the channel's pace by a proportion, at most once in SLOW_EVERY
    slices, and hold every dispatcher of it for hold_s (the partner's Retry-After). Returns the pace now."""
    rate_row, _, pace, _, _, slowed, _ = yield from _channel_row(channel, dialect)
    now = clock()
    n = slice_of(now)
    pace = int(pace)
    if n - int(slowed) >= SLOW_EVERY and pace != 0:
        rate = configured_milli if rate_row is None else int(rate_row)
        pace = max(FLOOR_MILLI, round((pace if pace > 0 else rate) * SLOW_FACTOR))
        yield Statement("UPDATE delivery_channels SET pace_milli = ?, slowed_slice = ? WHERE name = ?", (pace, n, channel))
    if hold_s > 0:
        yield Statement("UPDATE delivery_channels SET hold_until = ? WHERE name = ? AND hold_until < ?",
                        (now + hold_s, channel, now + hold_s))
    return pace


# What recording each kind of answer sets; {detail} (the partner's reference, or the error) and {due} (when a retry
# is due) differ by row. A delivery the partner confirmed is a fact whoever holds its lease now; the others apply only
# to a row still under the lease the call was sent under (same dispatcher, same attempt): that lease may have ended,
# and another dispatcher, or this one again, may hold the row now.
_SETS = {"delivered": "state = 'delivered', partner_ref = {detail}, delivered_at = ?, due_at = NULL, last_error = NULL",
         "retry": "state = 'pending', last_error = {detail}, due_at = {due}",
         "parked": "state = 'parked', last_error = {detail}, due_at = NULL",
         "failed": "state = 'failed', last_error = {detail}, due_at = NULL"}
SETTLE_ROWS = 500  # rows one statement records: a few thousand placeholders, far inside both databases' limits


def _settle_statement(kind: str, owner: str, rows: Sequence[Result], now: float) -> Statement:
    """Return the one UPDATE that records `rows` (all of one kind and dispatcher): per-row values as CASE arms."""
    case = f"CASE claim_id {' '.join(['WHEN ? THEN ?'] * len(rows))} END"
    width = 128 if kind == "delivered" else 200
    params: list[Any] = [x for r in rows for x in (r.claim_id, (r.detail or "")[:width])]
    if kind == "delivered":
        params.append(now)
    if kind == "retry":
        params += [x for r in rows for x in (r.claim_id, r.due_at)]
    guard = "state <> 'delivered'"
    params += [now, *(r.claim_id for r in rows)]
    if kind != "delivered":
        guard = f"state = 'sending' AND lease_owner = ? AND attempts = {case}"
        params += [owner, *(x for r in rows for x in (r.claim_id, r.attempt))]
    return Statement(f"UPDATE deliveries SET {_SETS[kind].format(detail=case, due=case)}, updated_at = ? "
                     f"WHERE claim_id IN ({', '.join('?' * len(rows))}) AND {guard}", tuple(params))


def settle_plan(results: Sequence[Result], clock: Any = time.time) -> Plan:
    """Record how calls ended, in one transaction: one statement a kind and dispatcher (a few hundred rows each).
    Returns how many rows each kind moved."""
    now = clock()
    latest: dict[str, Result] = {}  # one answer a delivery: a confirmation, else the newest attempt's
    for r in results:
        held = latest.get(r.claim_id)
        if held is None or held.kind != "delivered" and (r.kind == "delivered" or r.attempt > held.attempt):
            latest[r.claim_id] = r
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in latest.values():
        groups.setdefault((r.kind, r.owner), []).append(r)
    moved: dict[str, int] = {}
    for (kind, owner), rows in groups.items():
        for start in range(0, len(rows), SETTLE_ROWS):
            count = yield _settle_statement(kind, owner, rows[start : start + SETTLE_ROWS], now)
            moved[kind] = moved.get(kind, 0) + count
    return moved


PRIZE_COLUMNS = ("claim_id", "task_id", "prize_type", "won_at", "state", "attempts", "partner_ref", "delivered_at")


def player_prizes_plan(user_id: str, limit: int) -> Plan:
    """Return a player's won prizes, newest first, as dicts of PRIZE_COLUMNS."""
    rows = yield Statement(f"SELECT {', '.join(PRIZE_COLUMNS)} FROM deliveries WHERE user_id = ? ORDER BY won_at DESC, "
                           "claim_id LIMIT ?", (user_id, limit), fetch="all")
    return [dict(zip(PRIZE_COLUMNS, row)) for row in rows]


def ask_again_plan(user_id: str, claim_id: str, every_s: float, dialect: Dialect, clock: Any = time.time) -> Plan:
    """A player asks for a prize again: a parked or waiting one is due now. Returns (the row as PRIZE_COLUMNS, or None
    when the player has no such prize; seconds to wait before asking again, 0 if the ask was taken)."""
    row = yield Statement(f"SELECT {', '.join(PRIZE_COLUMNS)}, asked_at FROM deliveries WHERE claim_id = ? AND "
                          f"user_id = ?{dialect.for_update}", (claim_id, user_id), fetch="one")
    if row is None:
        return None, 0.0
    prize = dict(zip(PRIZE_COLUMNS, row[:-1]))
    now = clock()
    wait = 0.0 if row[-1] is None else float(row[-1]) + every_s - now
    if wait > 0:
        return prize, wait
    yield Statement("UPDATE deliveries SET asked_at = ? WHERE claim_id = ?", (now, claim_id))
    if prize["state"] in ("parked", "pending"):
        yield Statement("UPDATE deliveries SET state = 'pending', due_at = ?, updated_at = ? WHERE claim_id = ?",
                        (now, now, claim_id))
        prize["state"] = "pending"
    return prize, 0.0


CONFIGURED = -1  # set_channel's rate that clears a live override: the channels file's rate again


def set_channel_plan(name: str, rate_milli: int | None, paused: bool | None, dialect: Dialect,
                     clock: Any = time.time) -> Plan:
    """Change a channel's rate (a live override of its configured one; CONFIGURED clears it) and/or pause it; every
    dispatcher obeys at its next lease (the next 100 ms slice). Returns the row's rate override and pause switch."""
    yield from _channel_row(name, dialect)
    if rate_milli is not None:
        override = None if rate_milli == CONFIGURED else rate_milli
        yield Statement("UPDATE delivery_channels SET rate_milli = ?, pace_milli = ?, changed_at = ? WHERE name = ?",
                        (override, -1 if override is None else override, clock(), name))
    if paused is not None:
        yield Statement("UPDATE delivery_channels SET paused = ?, changed_at = ? WHERE name = ?", (int(paused), clock(), name))
    row = yield Statement("SELECT rate_milli, paused FROM delivery_channels WHERE name = ?", (name,), fetch="one")
    return (None if row[0] is None else int(row[0])), bool(row[1])


def retry_failed_plan(claim_id: str, clock: Any = time.time) -> Plan:
    """An operator sends a failed (dead-letter) or parked delivery again now. Returns whether one was."""
    now = clock()
    moved = yield Statement("UPDATE deliveries SET state = 'pending', due_at = ?, updated_at = ? WHERE claim_id = ? AND "
                            "state IN ('failed', 'parked')", (now, now, claim_id))
    return bool(moved)


def channel_stats_plan(prize_types: Sequence[str], dead_letters: int, clock: Any = time.time) -> Plan:
    """Return a channel's backlog (deliveries due or leased), the age of its oldest, and its counts by state other than
    delivered (an index range each), with its newest dead letters."""
    marks = ", ".join("?" * len(prize_types))
    backlog = yield Statement(f"SELECT COUNT(*), MIN(won_at) FROM deliveries WHERE prize_type IN ({marks}) AND due_at "
                              "IS NOT NULL", tuple(prize_types), fetch="one")
    counts = yield Statement(f"SELECT state, COUNT(*) FROM deliveries WHERE state IN ('parked', 'failed', 'sending') AND "
                             f"prize_type IN ({marks}) GROUP BY state", tuple(prize_types), fetch="all")
    dead = yield Statement(f"SELECT claim_id, prize_type, attempts, last_error, updated_at FROM deliveries WHERE "
                           f"state = 'failed' AND prize_type IN ({marks}) ORDER BY updated_at DESC LIMIT ?",
                           (*prize_types, dead_letters), fetch="all")
    oldest = None if backlog[1] is None else max(0.0, clock() - float(backlog[1]))
    return {"backlog": int(backlog[0]), "oldest_pending_s": oldest, "states": {str(s): int(n) for s, n in counts},
            "dead_letters": [dict(zip(("claim_id", "prize_type", "attempts", "last_error", "failed_at"), r))
                             for r in dead]}


def channel_state_plan(names: Sequence[str]) -> Plan:
    """Return each named channel's shared row: rate override, paused, pace, hold, and how many it has sent."""
    marks = ", ".join("?" * len(names))
    rows = yield Statement(f"SELECT name, rate_milli, paused, pace_milli, hold_until, sent FROM delivery_channels WHERE "
                           f"name IN ({marks})", tuple(names), fetch="all")
    return {str(r[0]): {"rate_milli": r[1], "paused": bool(r[2]), "pace_milli": int(r[3]), "hold_until": float(r[4]),
                        "sent": int(r[5])} for r in rows}



@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a delivery reconcile found, each a sorted list of claim ids (which are the delivery ids)."""

    never_made: list[str]  # won claims with no delivery row
    no_win: list[str]  # delivery rows with no won claim behind them
    unknown_to_partner: list[str]  # delivered here, missing from the partner's statement
    partner_no_win: list[str]  # in the partner's statement, with no won claim here
    partner_ahead: list[str]  # in the partner's statement, not yet recorded delivered here

    def differences(self) -> int:
        return sum(len(getattr(self, f)) for f in self.__slots__)


def reconcile_plan(prize_types: Sequence[str] | None, statement: set[str] | None, repair: bool,
                   clock: Any = time.time) -> Plan:
    """Compare the won claims, the delivery rows and (given) one partner's statement of the ids it honoured, in one
    transaction, over the prize types of that partner's channel (None: every prize, no statement). With repair, make
    the missing rows, and make due now each delivery the partner lacks that is recorded delivered here, and each it
    has that waits here (the same key again: one it did honour answers "already delivered"); never one being sent."""
    among = "" if prize_types is None else f" AND {{}}.prize_type IN ({', '.join('?' * len(prize_types))})"
    types = tuple(prize_types or ())
    missing = yield Statement("SELECT c.claim_id, c.user_id, c.task_id, c.prize_type, c.created_at FROM claims c "
                              "LEFT JOIN deliveries d ON d.claim_id = c.claim_id WHERE c.outcome = 'won' AND "
                              f"d.claim_id IS NULL{among.format('c')} ORDER BY c.claim_id", types, fetch="all")
    no_win = yield Statement(f"SELECT d.claim_id FROM deliveries d LEFT JOIN claims c ON {_ITS_WIN} WHERE c.claim_id IS "
                             f"NULL{among.format('d')} ORDER BY d.claim_id", types, fetch="all")
    unknown: list[str] = []
    partner_no_win: list[str] = []
    ahead: list[str] = []
    if statement is not None:
        rows = yield Statement(f"SELECT d.claim_id, d.state FROM deliveries d JOIN claims c ON {_ITS_WIN} "
                               f"WHERE 1 = 1{among.format('d')}", types, fetch="all")
        state = {str(c): str(s) for c, s in rows}
        unknown = sorted(c for c, s in state.items() if s == "delivered" and c not in statement)
        made = {str(r[0]) for r in missing}
        partner_no_win = sorted(c for c in statement if c not in state and c not in made)
        ahead = sorted(c for c in statement if state.get(c, "delivered") != "delivered")
    report = DeliveryReport([str(r[0]) for r in missing], [str(r[0]) for (r) in no_win], unknown, partner_no_win, ahead)
    if repair:
        now = clock()
        for claim_id, user_id, task_id, prize_type, won_at in missing:
            yield Statement(insert_delivery("?"), delivery_row(ClaimRecord(claim_id, user_id, task_id, 0, prize_type, "won",
                                                                           None, float(won_at)), now))
        for claim_ids, states in ((unknown, "'delivered'"), (ahead, "'pending', 'parked', 'failed'")):
            for claim_id in claim_ids:
                yield Statement(f"UPDATE deliveries SET state = 'pending', due_at = ?, updated_at = ? WHERE claim_id = ? "
                                f"AND state IN ({states})", (now, now, claim_id))
    return report


class PlanRunner(Protocol):
    """A SQL ledger (or one opened on a record database): it runs a plan in one transaction."""

    kind: str

    async def run_plan(self, make_plan: Callable[[], Plan], write: bool = True) -> Any: ...

    async def close(self) -> None: ...


class DeliveryStore:
    """The delivery record's transactions on the record database a runner reaches."""

    def __init__(self, runner: PlanRunner) -> None:
        self.runner = runner
        self.dialect = SQLITE if runner.kind == "sqlite" else MYSQL

    async def lease(self, channel: str, prize_types: Sequence[str], configured_milli: int, want: int, owner: str,
                    lease_s: float, for_slice: int = 0) -> Lease:
        d = self.dialect
        lease: Lease = await self.runner.run_plan(
            lambda: lease_plan(channel, prize_types, configured_milli, want, owner, lease_s, d, for_slice))
        return lease

    async def slow(self, channel: str, configured_milli: int, hold_s: float) -> int:
        pace: int = await self.runner.run_plan(lambda: slow_plan(channel, configured_milli, hold_s, self.dialect))
        return pace

    async def settle(self, results: Sequence[Result]) -> dict[str, int]:
        moved: dict[str, int] = await self.runner.run_plan(lambda: settle_plan(results))
        return moved

    async def prizes(self, user_id: str, limit: int = 200) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.runner.run_plan(lambda: player_prizes_plan(user_id, limit), write=False)
        return rows

    async def ask_again(self, user_id: str, claim_id: str, every_s: float) -> tuple[dict[str, Any] | None, float]:
        answer: tuple[dict[str, Any] | None, float] = await self.runner.run_plan(
            lambda: ask_again_plan(user_id, claim_id, every_s, self.dialect))
        return answer

    async def set_channel(self, name: str, rate_milli: int | None, paused: bool | None) -> tuple[int | None, bool]:
        row: tuple[int | None, bool] = await self.runner.run_plan(
            lambda: set_channel_plan(name, rate_milli, paused, self.dialect))
        return row

    async def retry_failed(self, claim_id: str) -> bool:
        """Send a dead letter (or a parked delivery) again now; False if there is no such one."""
        moved: bool = await self.runner.run_plan(lambda: retry_failed_plan(claim_id))
        return moved

    async def stats(self, prize_types: Sequence[str], dead_letters: int = 20) -> dict[str, Any]:
        stats: dict[str, Any] = await self.runner.run_plan(lambda: channel_stats_plan(prize_types, dead_letters),
                                                           write=False)
        return stats

    async def channel_state(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        state: dict[str, dict[str, Any]] = await self.runner.run_plan(lambda: channel_state_plan(names), write=False)
        return state

    async def reconcile(self, prize_types: Sequence[str] | None, statement: set[str] | None, repair: bool) -> DeliveryReport:
        report: DeliveryReport = await self.runner.run_plan(lambda: reconcile_plan(prize_types, statement, repair))
        return report
