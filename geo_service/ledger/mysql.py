"""The shared ledger: MySQL/MariaDB through an aiomysql pool, for many service hosts."""

from __future__ import annotations

import asyncio
import logging
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import aiomysql
import pymysql

from geo_service.dsn import MySQLSettings
from geo_service.ledger.interface import (
    ClaimIdTaken,
    ClaimRequest,
    Counters,
    Difference,
    LedgerError,
    LedgerState,
    Outcome,
    PrizeChange,
    PrizeChangeRefused,
    Seed,
    deliver_cancellation,
    raised_in,
)
from geo_service.ledger.plans import (
    MYSQL,
    SCHEMA,
    SEED_COLUMNS,
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

log = logging.getLogger("geodrop.ledger")
_DUPLICATE_KEY = 1062
_RETRYABLE = {1205, 1213}  # lock wait timeout, deadlock: InnoDB rolled the transaction back; run it again
_ATTEMPTS = 10


class MySQLLedger:
    kind = "mysql"

    def __init__(self, settings: MySQLSettings, pool_size: int = 10) -> None:
        self.settings = settings
        self.pool_size = pool_size
        self._pool: aiomysql.Pool | None = None
        self._lock = asyncio.Lock()

    async def _get_pool(self) -> aiomysql.Pool:
        async with self._lock:
            if self._pool is None:
                s = self.settings
                pool = await aiomysql.create_pool(host=s.host, port=s.port, user=s.user, password=s.password, db=s.database,
                                                  minsize=1, maxsize=self.pool_size, autocommit=False, connect_timeout=5)
                async with pool.acquire() as conn, conn.cursor() as cur:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", pymysql.Warning)  # "already exists" notes on restart
                        for statement in (*SCHEMA, *deliveries_schema("mysql")):
                            await cur.execute(statement)
                    await conn.commit()
                    note = await self._drive(conn, migrate_plan(MYSQL))
                    if note:
                        log.warning(note)
                self._pool = pool
            return self._pool

    @contextmanager
    def _unreachable_as_ledger_error(self) -> Iterator[None]:
        try:
            yield
        except (pymysql.err.MySQLError, OSError) as exc:
            deliver_cancellation(exc)  # aiomysql can turn a cancellation into a lost connection
            raise LedgerError(f"mysql ledger {self.settings.redacted}: {exc}") from exc
        except RuntimeError as exc:
            # aiomysql asks a transport the server just reset for its socket and gets RuntimeError ("Transport
            # does not expose socket instance", under uvloop): a lost connection when raised in there.
            if not raised_in(exc, "aiomysql", "pymysql"):
                raise
            deliver_cancellation(exc)
            raise LedgerError(f"mysql ledger {self.settings.redacted}: connection lost ({exc})") from exc

    async def _run(self, make_plan: Callable[[], Plan]) -> Any:
        with self._unreachable_as_ledger_error():
            result = await self._attempts(make_plan)
        # Python 3.11's asyncio.wait_for (aiomysql's connect timeout) can swallow a cancellation that lands as
        # the connection opens, and the call then finishes: the task must still stop.
        deliver_cancellation(None)
        return result

    async def run_plan(self, make_plan: Callable[[], Plan], write: bool = True) -> Any:
        """Run a plan in its transaction (MySQL locks what it reads with FOR UPDATE; `write` is SQLite's)."""
        return await self._run(make_plan)

    async def _attempts(self, make_plan: Callable[[], Plan]) -> Any:
        pool = await self._get_pool()
        for attempt in range(_ATTEMPTS):  # bounded retries of deadlocks and unique-key clashes
            async with pool.acquire() as conn:
                try:
                    return await self._drive(conn, make_plan())
                except pymysql.err.IntegrityError as exc:
                    await conn.rollback()
                    if exc.args[0] != _DUPLICATE_KEY:
                        raise
                except pymysql.err.OperationalError as exc:
                    await conn.rollback()
                    if exc.args[0] not in _RETRYABLE or attempt == _ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(random.uniform(0.002, 0.01) * (attempt + 1))  # jitter: no lockstep retries
                except (ClaimIdTaken, PrizeChangeRefused):
                    await conn.rollback()  # refused by the plan between statements: the connection is sound
                    raise
                except BaseException:
                    # Abandoned mid-statement (cancelled, or the link failed): the connection's state is unknown,
                    # so it is closed, not rolled back (a rollback on it can fail and mask a cancellation); the
                    # server rolls the transaction back, and the pool drops the closed connection.
                    conn.close()
                    raise
        raise RuntimeError("ledger transaction kept conflicting")

    @staticmethod
    async def _drive(conn: aiomysql.Connection, plan: Plan) -> Any:
        await conn.begin()
        async with conn.cursor() as cur:
            result: Any = None
            try:
                while True:
                    statement = plan.send(result)
                    rowcount = await cur.execute(statement.sql.replace("?", "%s"), statement.params)
                    if statement.fetch == "one":
                        result = await cur.fetchone()
                    elif statement.fetch == "all":
                        result = await cur.fetchall()
                    else:
                        result = rowcount
            except StopIteration as done:
                await conn.commit()
                return done.value

    async def seed(self, counters: Sequence[Seed]) -> None:
        rows = await self._run(lambda: seed_rows_plan(counters))
        sql = MYSQL.insert_ignore("prize_counters", SEED_COLUMNS).replace("?", "%s")
        with self._unreachable_as_ledger_error():
            pool = await self._get_pool()
            async with pool.acquire() as conn, conn.cursor() as cur:
                for start in range(0, len(rows), 1000):
                    await cur.executemany(sql, rows[start : start + 1000])
                # A flag row for every task (enabled until switched): a claim's locking read of a missing row would
                # take a gap lock, behind which the first disable of a task could wait out the lock timeout.
                flags = MYSQL.insert_ignore("task_flags", ("task_id", "enabled")).replace("?", "%s")
                tasks = sorted({c[0] for c in counters})
                for start in range(0, len(tasks), 1000):
                    await cur.executemany(flags, [(t, 1) for t in tasks[start : start + 1000]])
                await conn.commit()
        await self._run(lambda: fill_rates_plan(counters))

    async def outcome_of(self, request: ClaimRequest) -> Outcome | None:
        outcome: Outcome | None = await self._run(lambda: outcome_plan(request))
        return outcome

    async def claim(self, request: ClaimRequest, draw: Sequence[str], win_cap: int, max_speed_mps: float,
                    player_cap: int = 0) -> Outcome:
        outcome: Outcome = await self._run(lambda: claim_plan(request, draw, win_cap, max_speed_mps, MYSQL, player_cap))
        return outcome

    async def set_prize(self, task_id: int, prize_type: str, quota: int | None, rate_milli: int | None) -> PrizeChange:
        change: PrizeChange = await self._run(lambda: set_prize_plan(task_id, prize_type, quota, rate_milli, MYSQL))
        return change

    async def reconcile(self, repair: bool, seeds: Sequence[Seed] = (), lower: bool = False) -> list[Difference]:
        diffs: list[Difference] = await self._run(lambda: reconcile_plan(repair, lower))
        return diffs

    async def read_state(self, since: float) -> LedgerState:
        state: LedgerState = await self._run(lambda: read_state_plan(since))
        return state

    async def read_changes(self, since: float) -> list[PrizeChange]:
        changes: list[PrizeChange] = await self._run(lambda: read_changes_plan(since))
        return changes

    async def read_page(self, after: tuple[int, str] | None, limit: int) -> Counters:
        page: Counters = await self._run(lambda: read_page_plan(after, limit))
        return page

    async def set_enabled(self, task_id: int, enabled: bool) -> float | None:
        last_win: float | None = await self._run(lambda: set_enabled_plan(task_id, enabled, MYSQL))
        return last_win

    async def problems(self) -> list[str]:
        return []

    async def backlog(self) -> None:
        return None

    async def init(self) -> None:
        return None

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            try:
                await asyncio.wait_for(pool.wait_closed(), timeout=5)
            except TimeoutError:
                # A connection taken by a cancelled transaction is never given back: drop them all.
                pool.terminate()
                await pool.wait_closed()
