"""The embedded ledger: one SQLite file in WAL mode, shared by every worker process on the host.

Durable: every commit is fsynced (synchronous=FULL), so an acknowledged win survives a power cut. Fair:
writers wait on an flock of a lock file beside the database before they begin, so the kernel hands the
write lock to a waiting writer at once; SQLite's own busy handler polls with sleeps that grow to 100 ms,
which left one process's claims waiting while the other's came and went.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from geo_service.ledger.interface import ClaimRequest, Counters, Difference, LedgerError, LedgerState, Outcome, PrizeChange, Seed
from geo_service.ledger.plans import (
    SCHEMA,
    SEED_COLUMNS,
    SQLITE,
    Plan,
    claim_plan,
    fill_rates_plan,
    migrate_plan,
    outcome_plan,
    read_changes_plan,
    read_page_plan,
    read_state_plan,
    reconcile_plan,
    seed_rows_plan,
    set_enabled_plan,
    set_prize_plan,
)
from geo_service.ledger.records import deliveries_schema

T = TypeVar("T")
_BUSY_TIMEOUT_MS = 10_000


def run_plan(conn: sqlite3.Connection, make_plan: Callable[[], Plan], write: bool = True) -> Any:
    """Run a plan in one transaction: IMMEDIATE for writers (they queue on the file lock, no lost
    updates), deferred for readers (WAL gives them a consistent snapshot without blocking writers)."""
    for _ in range(2):  # bounded: a unique-key clash means another writer committed this claim first
        plan = make_plan()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result: Any = None
            while True:
                statement = plan.send(result)
                cur = conn.execute(statement.sql, statement.params)
                if statement.fetch == "one":
                    result = cur.fetchone()
                elif statement.fetch == "all":
                    result = cur.fetchall()
                else:
                    result = cur.rowcount
        except StopIteration as done:
            conn.execute("COMMIT")
            return done.value
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK")
            continue
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    raise sqlite3.IntegrityError("claim kept clashing on its unique key")


class SQLiteLedger:
    """Runs each transaction on one thread of its own, so the event loop never blocks on the file lock."""

    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._conn: sqlite3.Connection | None = None
        self._writers: int | None = None  # the lock file every process's writers queue on

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            if self._writers is None:  # once: a connection that fails to open is tried again, its lock file kept
                self._writers = os.open(f"{self.path}.writers", os.O_RDONLY | os.O_CREAT, 0o644)
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # every commit fsynced: an acknowledged win survives a power cut
            with self._writing():
                for statement in (*SCHEMA, *deliveries_schema("sqlite")):
                    conn.execute(statement)
                run_plan(conn, lambda: migrate_plan(SQLITE))
            self._conn = conn
        return self._conn

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the writers' flock: released, it passes to a waiting writer at once, in any process of the host."""
        assert self._writers is not None
        fcntl.flock(self._writers, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writers, fcntl.LOCK_UN)

    async def _run(self, work: Callable[[sqlite3.Connection], T], write: bool = True) -> T:
        def run() -> T:
            conn = self._connection()
            if not write:
                return work(conn)
            with self._writing():
                return work(conn)

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, run)
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"sqlite ledger {self.path}: {exc}") from exc

    async def seed(self, counters: Sequence[Seed]) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            rows = run_plan(conn, lambda: seed_rows_plan(counters))
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(SQLITE.insert_ignore("prize_counters", SEED_COLUMNS), rows)
            except BaseException:
                conn.execute("ROLLBACK")  # left open, the transaction would hold the write lock from every claim
                raise
            conn.execute("COMMIT")
            run_plan(conn, lambda: fill_rates_plan(counters))

        await self._run(insert)

    async def run_plan(self, make_plan: Callable[[], Plan], write: bool = True) -> Any:
        """Run a plan in its transaction on the ledger's thread; a reader takes no writers' lock (WAL)."""
        return await self._run(lambda conn: run_plan(conn, make_plan, write), write)

    async def outcome_of(self, request: ClaimRequest) -> Outcome | None:
        outcome: Outcome | None = await self.run_plan(lambda: outcome_plan(request), write=False)
        return outcome

    async def claim(self, request: ClaimRequest, draw: Sequence[str], win_cap: int, max_speed_mps: float,
                    player_cap: int = 0) -> Outcome:
        outcome: Outcome = await self.run_plan(lambda: claim_plan(request, draw, win_cap, max_speed_mps, SQLITE, player_cap))
        return outcome

    async def set_prize(self, task_id: int, prize_type: str, quota: int | None, rate_milli: int | None) -> PrizeChange:
        change: PrizeChange = await self.run_plan(lambda: set_prize_plan(task_id, prize_type, quota, rate_milli, SQLITE))
        return change

    async def reconcile(self, repair: bool, seeds: Sequence[Seed] = (), lower: bool = False) -> list[Difference]:
        diffs: list[Difference] = await self.run_plan(lambda: reconcile_plan(repair, lower))
        return diffs

    async def read_state(self, since: float) -> LedgerState:
        state: LedgerState = await self.run_plan(lambda: read_state_plan(since), write=False)
        return state

    async def read_changes(self, since: float) -> list[PrizeChange]:
        changes: list[PrizeChange] = await self.run_plan(lambda: read_changes_plan(since), write=False)
        return changes

    async def read_page(self, after: tuple[int, str] | None, limit: int) -> Counters:
        page: Counters = await self.run_plan(lambda: read_page_plan(after, limit), write=False)
        return page

    async def set_enabled(self, task_id: int, enabled: bool) -> float | None:
        last_win: float | None = await self.run_plan(lambda: set_enabled_plan(task_id, enabled, SQLITE))
        return last_win

    async def problems(self) -> list[str]:
        return []

    async def backlog(self) -> None:
        return None

    async def init(self) -> None:
        return None

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self._run(shut, write=False)
            self._conn = None
        if self._writers is not None:
            os.close(self._writers)
            self._writers = None
        self._pool.shutdown(wait=True)

