"""The ledger's interface: the Ledger protocol every backend implements and the values that cross it.

Backends (sqlite.py, mysql.py, redis.py) import this module, never the package head, which opens them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

log = logging.getLogger("geodrop.ledger")
FAILURE_LOG_EVERY_S = 10.0
BACKLOG_WARN_MILLI = 500  # a flow stream at half its ceiling is told in the log, /healthz and /metrics

# Why a claim came to what it did; one text per outcome, the same from every backend.
REASONS = {
    "no_prize_left": "every prize of this task is taken or paused",
    "cap_reached": "the player has reached the win cap of this task",
    "player_cap_reached": "the player has won as many prizes as the event allows one player",
    "not_yet": "the task has not opened for the player's group yet",
    "implausible_movement": "moved faster than a person can",
    "too_far": "the player is farther from the POI than the catch radius",
    "task_inactive": "the task is disabled, not started, ended or exhausted",
}


class LedgerError(Exception):
    """The ledger cannot be reached or failed. For a claim: it may or may not have settled; a retry with
    the same claim_id returns its outcome if it did."""


class LedgerRefusal(LedgerError):
    """The ledger takes no claims of this task for now, for the reason given (its state was lost and waits for a
    repair, its flow log is full): nothing was settled, and a retry with the same claim_id later settles it once."""


class ClaimIdTaken(Exception):
    """The claim's id is bound to another claim (another player, task or POI): refused, and nothing changed. A
    claim id is bound to its player, task and POI the first time a ledger sees it, on every kind."""

    def __init__(self, claim_id: str) -> None:
        super().__init__(f"claim_id {claim_id!r} belongs to another claim; send each claim with a fresh random id")
        self.claim_id = claim_id


class PrizeChangeRefused(ValueError):
    """A live quota or rate change the ledger refuses; `code` says why (no_such_prize, quota_below_issued)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


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
    """What a claim came to. outcome: won, or one of REASONS (the ledger's own: no_prize_left, cap_reached,
    player_cap_reached, implausible_movement, task_inactive; the snapshot's: too_far, task_inactive, not_yet).
    wins_left: the wins the event still allows the player after this claim, where the ledger counted them (an
    event-wide cap is set and the claim was settled now, not replayed)."""

    claim_id: str
    outcome: str
    prize_type: str | None = None
    reason: str | None = None
    wins_left: int | None = None
    opens_at: int | None = None  # not_yet: when the task opens for the player (epoch seconds)
    # player_cap_reached settled now, where the ledger knew them all (no win of the player still settling): the
    # player's wins as (claim_id, task_id, prize_type), so a worker answering their later claims itself still
    # gives a retried winning claim its first outcome.
    wins: tuple[tuple[str, int, str], ...] | None = None

    @classmethod
    def of(cls, claim_id: str, outcome: str, prize_type: str | None = None, wins_left: int | None = None,
           opens_at: int | None = None) -> Outcome:
        """Return an outcome with its standard reason (none for a win)."""
        return cls(claim_id, outcome, prize_type, REASONS.get(outcome), wins_left, opens_at)


@dataclass(frozen=True, slots=True)
class Difference:
    """A counter that disagrees with its claim records."""

    task_id: int
    prize_type: str
    issued: int
    won_claims: int


Seed = tuple[int, str, int, int]  # (task_id, prize_type, quota, rate_milli): a counter as a snapshot first makes it
CounterRow = tuple[int, str, int, int, int]  # (task_id, prize_type, quota - issued, quota, rate_milli)


@dataclass(frozen=True, slots=True)
class Counters:
    """Prize counters as columns: the collector aggregates hundreds of thousands of them."""

    task_id: npt.NDArray[np.int64]
    prize_type: list[str]
    left: npt.NDArray[np.int64]  # quota minus issued
    quota: npt.NDArray[np.int64]  # the quota in force (a live change may have moved it from the snapshot's)
    rate_milli: npt.NDArray[np.int64]  # the issue rate in force, thousandths per second; -1: no limit

    @classmethod
    def from_rows(cls, rows: Sequence[CounterRow]) -> Counters:
        """Return the columns of (task_id, prize_type, quota - issued, quota, rate_milli) rows."""
        if not rows:
            empty = np.empty(0, dtype=np.int64)
            return cls(empty, [], empty, empty, empty)
        task_id, prize_type, left, quota, rate = zip(*rows)
        return cls(np.array(task_id, dtype=np.int64), [str(p) for p in prize_type], np.array(left, dtype=np.int64),
                   np.array(quota, dtype=np.int64), np.array(rate, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.prize_type)

    def last_key(self) -> tuple[int, str] | None:
        """Return the (task_id, prize_type) of the last row, where the next page of a key-order read starts."""
        return (int(self.task_id[-1]), self.prize_type[-1]) if len(self) else None


@dataclass(frozen=True, slots=True)
class PrizeChange:
    """One live change of a prize's quota or rate: numbered in the order the ledger took them."""

    seq: int
    at: float
    task_id: int
    prize_type: str
    quota: int
    rate_milli: int

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> PrizeChange:
        """Return a change from its fields as text (a Redis ledger's change stream keeps them so)."""
        return cls(int(fields["seq"]), float(fields["at"]), int(fields["task_id"]), fields["prize_type"],
                   int(fields["quota"]), int(fields["rate_milli"]))


@dataclass(frozen=True, slots=True)
class LedgerState:
    """The counters changed since a given time, and the tasks switched off."""

    counters: Counters
    disabled: frozenset[int]


class Ledger(Protocol):
    kind: str  # sqlite, mysql, redis or redis+cluster

    async def seed(self, counters: Sequence[Seed]) -> None:
        """Create missing prize counters; existing ones keep their counts, quota and rate."""
        ...

    async def claim(self, request: ClaimRequest, draw: Sequence[str], win_cap: int, max_speed_mps: float,
                    player_cap: int = 0) -> Outcome:
        """Settle a claim: the first prize of `draw` below its quota with room in its rate slice wins, within the
        player's `win_cap` wins of the task and `player_cap` wins of the event (0: none). A retried claim returns its
        first outcome; a claim_id bound to another claim raises ClaimIdTaken."""
        ...

    async def outcome_of(self, request: ClaimRequest) -> Outcome | None:
        """Return the recorded outcome of this claim, if any; raise ClaimIdTaken if its id is another claim's."""
        ...

    async def set_prize(self, task_id: int, prize_type: str, quota: int | None, rate_milli: int | None) -> PrizeChange:
        """Change a prize's quota and/or rate now (None: keep); raise PrizeChangeRefused if it cannot be."""
        ...

    async def reconcile(self, repair: bool, seeds: Sequence[Seed] = (), lower: bool = False) -> list[Difference]:
        """Return counters that differ from their won claims, as of one moment, while claims go on; with repair,
        move each counter below its claims up by the difference (and, with lower, each above them down), and
        restore what lost its state (a Redis bucket) from the record, creating its counters from `seeds` (the live
        snapshot's)."""
        ...

    async def backlog(self) -> tuple[int, int] | None:
        """Return (records in the flow log not yet shipped, the fullest stream's share of its ceiling in
        thousandths); None for a ledger that keeps its records itself (SQL)."""
        ...

    async def read_state(self, since: float) -> LedgerState:
        """Return the counters changed at or after `since` and every task flag, as of one moment."""
        ...

    async def read_changes(self, since: float) -> list[PrizeChange]:
        """Return the live prize changes made at or after `since`, in seq order."""
        ...

    async def read_page(self, after: tuple[int, str] | None, limit: int) -> Counters:
        """Return up to `limit` counters in key order, starting after the (task_id, prize_type) key `after`:
        a complete read in pieces, each cheap for the database and for the reader."""
        ...

    async def set_enabled(self, task_id: int, enabled: bool) -> float | None:
        """Set a task's kill switch. Claims settled after it answer task_inactive, whether or not the collector
        is up; return the time of the task's last win (None: none yet), the last one the switch allowed."""
        ...

    async def init(self) -> None:
        """Make a new ledger ready for claims (Redis: give its buckets their epoch); raise LedgerError where that
        could re-issue what was issued (a ledger that lost its state: repair it instead). SQL: nothing to do."""
        ...

    async def problems(self) -> list[str]:
        """Return what the ledger's server lacks for the guarantees (empty when none; SQL: always empty)."""
        ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class LedgerCheck:
    """The latest look at what the ledger's server lacks for the guarantees (Ledger.problems): claims are
    refused while it lacks any, or before it has been looked at, unless `unsafe_ok` (a throwaway test box)."""

    unsafe_ok: bool = False
    problems: list[str] = field(default_factory=list)
    checked_at: float = 0.0
    error: str | None = None
    # Claims the ledger failed to settle (unreachable, or no answer within claim_timeout_s).
    failures: int = 0
    last_failure: str | None = None
    last_failure_at: float = 0.0
    # Claims the ledger refused for now (LedgerRefusal: a bucket's state lost, its flow log full).
    refusals: int = 0
    last_refusal: str | None = None
    # The flow log not yet shipped (Redis): records, and the fullest stream's share of its ceiling in thousandths.
    flow_backlog: int | None = None
    flow_fill_milli: int | None = None
    _logged_failures: int = 0
    _logged_at: float = 0.0

    def failed(self, error: str, now: float) -> None:
        """Count a claim the ledger could not settle. The first is logged, then at most one line every
        FAILURE_LOG_EVERY_S with the count meanwhile: an outage at a thousand claims a second stays readable."""
        self.failures += 1
        self.last_failure, self.last_failure_at = error, now
        if now - self._logged_at >= FAILURE_LOG_EVERY_S:
            log.warning("claims failing: the ledger is unavailable",
                        extra={"failed": self.failures - self._logged_failures, "error": error})
            self._logged_at, self._logged_failures = now, self.failures

    def refused(self, reason: str) -> None:
        """Count a claim the ledger refused for now; the first of each reason is logged."""
        self.refusals += 1
        if reason != self.last_refusal:
            log.error("claims refused by the ledger", extra={"reason": reason})
        self.last_refusal = reason

    async def look(self, ledger: Ledger) -> None:
        """Ask the server once; one that cannot be asked keeps the last answer."""
        try:
            problems = await ledger.problems()
            backlog = await ledger.backlog()
        except Exception as exc:  # noqa: BLE001 - whatever the client raises, the check must go on looking
            self.error = str(exc) or type(exc).__name__
            return
        if backlog is not None:
            self.flow_backlog, self.flow_fill_milli = backlog
            if backlog[1] >= BACKLOG_WARN_MILLI:
                log.warning("the flow log is filling: is its shipper (the collector with record_db) running? Claims "
                            "are refused where a stream reaches its ceiling", extra={"records": backlog[0],
                                                                                   "fullest_stream_milli": backlog[1]})
        if problems and problems != self.problems:
            log.warning("the ledger's server does not meet the ledger's requirements; " + (
                "claims go on regardless (ledger_unsafe_ok)" if self.unsafe_ok else "claims are refused until it does"),
                extra={"problems": problems})
        self.problems, self.checked_at, self.error = problems, time.time(), None

    async def run(self, ledger: Ledger, every_s: float = 30.0) -> None:
        """Look every `every_s` (each second until a first answer) until cancelled."""
        while True:
            if self.checked_at:  # looked at already (the start-up look): wait first
                await asyncio.sleep(every_s)
            await self.look(ledger)
            if not self.checked_at:
                await asyncio.sleep(min(every_s, 1.0))

    def refusal(self) -> str | None:
        """Return why claims must not settle now (None: they may)."""
        if self.unsafe_ok:
            return None
        if not self.checked_at:
            return "the ledger's server has not been checked yet: " + (self.error or "the first look is under way")
        if self.problems:  # what is missing, without the nodes' addresses (/healthz has those)
            missing = sorted({problem.partition(": ")[2] for problem in self.problems})
            return "the ledger's server does not meet the ledger's requirements: " + "; ".join(missing)
        return None

    def claims(self) -> str:
        """Say whether claims are taken, for a service's health view."""
        refusal = self.refusal()
        if refusal is not None:
            return f"refused: {refusal}"
        return "taken without the ledger's guarantees (ledger_unsafe_ok)" if self.problems else "taken"

    def health(self, kind: str) -> dict[str, object]:
        return {"kind": kind, "problems": self.problems, "check_error": self.error,
                "claim_failures": self.failures, "last_failure": self.last_failure,
                "last_failure_s_ago": round(time.time() - self.last_failure_at, 1) if self.last_failure else None,
                "claims_refused": self.refusals, "last_refusal": self.last_refusal, "flow_backlog": self.flow_backlog,
                "flow_fill": None if self.flow_fill_milli is None else self.flow_fill_milli / 1000,
                "flow_filling": self.flow_fill_milli is not None and self.flow_fill_milli >= BACKLOG_WARN_MILLI}


def deliver_cancellation(cause: BaseException | None) -> None:
    """Raise CancelledError if this task was asked to stop during a ledger call: a client can turn a
    cancellation into a connection error (which callers retry), or finish the call anyway, and the caller
    must still stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from cause


def raised_in(exc: BaseException, *packages: str) -> bool:
    """Whether an exception was raised inside one of these client packages, asyncio's streams or uvloop's
    transports (where a connection the server just reset surfaces as RuntimeError), not in geodrop's code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    path = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return path.startswith("uvloop/") or any(f"{os.sep}{p}{os.sep}" in path for p in (*packages, "asyncio"))
