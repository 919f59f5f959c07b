"""The flow log's way into MySQL: a Redis ledger's claim records, shipped exactly once into `claims`.

Each bucket's stream is read through one consumer group. A batch is upserted by claim_id and
committed, then acknowledged, then the stream is trimmed below its oldest pending entry, never in the
claim call: a shipper killed anywhere re-reads what it had not acknowledged, and the upsert makes the
second delivery a no-op. MySQL's claims table stays the system of record for reporting. This module
may touch the ledger's Redis streams and the record database.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomysql
import pymysql
from redis.exceptions import ResponseError

from geo_service.ledger import REASONS, Difference, LedgerError
from geo_service.ledger.plans import CLAIM_COLUMNS, CLAIMS_INDEX, CLAIMS_TABLE, WON_BY_COUNTER, differences
from geo_service.ledger.redis import BUCKETS, Client, RedisLedger, bucket_key
from geo_service.settings import MySQLSettings

log = logging.getLogger("geodrop.ship")
GROUP, CONSUMER = "ship", "shipper"
ClaimRow = tuple[str, str, int, int, str | None, str, str | None, float]


class RecordStore:
    """The claims table of the system of record (MySQL)."""

    def __init__(self, settings: MySQLSettings) -> None:
        self.settings = settings
        self._pool: aiomysql.Pool | None = None

    async def _run(self, sql: str, args: Any = None, many: bool = False) -> list[tuple[Any, ...]]:
        try:
            if self._pool is None:
                s = self.settings
                pool = await aiomysql.create_pool(host=s.host, port=s.port, user=s.user, password=s.password, db=s.database,
                                                  minsize=1, maxsize=2, autocommit=False, connect_timeout=5)
                async with pool.acquire() as conn, conn.cursor() as cur:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", pymysql.Warning)  # "already exists" notes on restart
                        await cur.execute(CLAIMS_TABLE)
                        await cur.execute(CLAIMS_INDEX)
                self._pool = pool
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                await (cur.executemany(sql, args) if many else cur.execute(sql, args))
                rows = list(await cur.fetchall())
                await conn.commit()
                return rows
        except (pymysql.err.MySQLError, OSError) as exc:
            raise LedgerError(f"record database {self.settings.redacted}: {exc}") from exc

    async def insert(self, rows: Sequence[ClaimRow]) -> None:
        """Upsert claim rows by claim_id and commit: a row shipped twice is stored once."""
        sql = (f"INSERT INTO claims ({', '.join(CLAIM_COLUMNS)}) VALUES ({', '.join(['%s'] * len(CLAIM_COLUMNS))}) "
               "ON DUPLICATE KEY UPDATE claim_id = claim_id")
        await self._run(sql, list(rows), many=True)

    async def won_counts(self) -> dict[tuple[int, str], int]:
        return {(int(t), str(p)): int(n) for t, p, n in await self._run(WON_BY_COUNTER)}

    async def present(self, claim_ids: Sequence[str]) -> set[str]:
        """Return which of these claim ids the table holds."""
        found: set[str] = set()
        for start in range(0, len(claim_ids), 1000):
            chunk = claim_ids[start : start + 1000]
            rows = await self._run(f"SELECT claim_id FROM claims WHERE claim_id IN ({', '.join(['%s'] * len(chunk))})", chunk)
            found |= {str(r[0]) for r in rows}
        return found

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            await pool.wait_closed()


def claim_row(fields: dict[str, str]) -> ClaimRow:
    """Return a flow record as a claims row."""
    outcome = fields["outcome"]
    return (fields["claim_id"], fields["user_id"], int(fields["task_id"]), int(fields["poi_id"]),
            fields["prize_type"] or None, outcome, REASONS.get(outcome), float(fields["at"]))


def _next_id(stream_id: str) -> str:
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq) + 1}"


@dataclass(slots=True)
class ShipHealth:
    shipped: int = 0  # records upserted into MySQL by this process
    backlog: int = 0  # records in the streams at the last look: not yet shipped, or shipped and not yet trimmed
    lag_s: float = 0.0  # age of the oldest of them
    failures: int = 0
    last_error: str | None = None
    last_round_at: float = 0.0


def ship_part(text: str) -> tuple[int, int]:
    """Parse "K/N" (this shipper's part K of N); raise ValueError."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n) <= BUCKETS):
        raise ValueError(f"a shipping part is K/N with 1 <= K <= N <= {BUCKETS}; got {text!r}")
    return int(k), int(n)


class Shipper:
    """Reads its buckets' streams as the consumer CONSUMER of GROUP. One shipper takes every bucket; N
    shippers (part K of N each) share them, bucket b going to part b mod N + 1: each bucket has one
    shipper, so the acknowledge-then-trim order holds."""

    def __init__(self, ledger: RedisLedger, store: RecordStore, batch: int = 2000, interval_s: float = 0.5,
                 part: tuple[int, int] = (1, 1)) -> None:
        self.ledger = ledger
        self.store = store
        self.batch = batch
        self.interval_s = interval_s
        self.health = ShipHealth()
        self.buckets = [b for b in range(BUCKETS) if b % part[1] == part[0] - 1]
        self._groups = False
        self._pending = set(self.buckets)  # streams that may hold entries delivered but not acknowledged

    async def _ensure_groups(self, r: Client) -> None:
        for b in self.buckets:
            try:
                await r.xgroup_create(bucket_key(b, "flow"), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups = True

    async def _look(self, r: Client) -> list[int]:
        """Return the buckets whose streams hold entries; note the backlog and its age."""
        pipe = r.pipeline(transaction=False)
        for b in self.buckets:
            pipe.xlen(bucket_key(b, "flow"))
            pipe.xrange(bucket_key(b, "flow"), count=1)
        answers = await pipe.execute()
        lengths, firsts = answers[0::2], answers[1::2]
        oldest = [int(first[0][0].partition("-")[0]) for first in firsts if first]
        self.health.backlog = int(sum(lengths))
        self.health.lag_s = round(time.time() - min(oldest) / 1000, 3) if oldest else 0.0
        return [b for b, n in zip(self.buckets, lengths) if n or b in self._pending]

    async def _ship_stream(self, r: Client, bucket: int) -> int:
        key = bucket_key(bucket, "flow")
        for start in ("0", ">") if bucket in self._pending else (">",):
            answer: Any = await r.xreadgroup(GROUP, CONSUMER, {key: start}, count=self.batch)
            entries: list[tuple[str, dict[str, str]]] = answer[0][1] if answer else []
            if entries:
                break
        else:
            self._pending.discard(bucket)
            return 0
        self._pending.add(bucket)
        rows = [claim_row(fields) for _, fields in entries if fields]  # a trimmed pending entry has no fields
        if rows:
            await self.store.insert(rows)
        ids = [entry_id for entry_id, _ in entries]
        await r.xack(key, GROUP, *ids)
        pending: Any = await r.xpending(key, GROUP)
        low = pending["min"] if pending["pending"] else _next_id(ids[-1])
        await r.xtrim(key, minid=low, approximate=False)
        if not pending["pending"]:
            self._pending.discard(bucket)
        return len(rows)

    async def ship_once(self) -> int:
        """Ship what the streams hold now, a batch per stream; return the records shipped."""

        async def run(r: Client) -> int:
            if not self._groups:
                await self._ensure_groups(r)
            shipped = 0
            for bucket in await self._look(r):
                shipped += await self._ship_stream(r, bucket)
            return shipped

        shipped = await self.ledger.call(run)
        self.health.shipped += shipped
        self.health.last_round_at = time.time()
        return shipped

    async def run(self) -> None:
        """Ship until cancelled; back off while Redis or MySQL fail."""
        delay = self.interval_s
        while True:
            try:
                shipped = await self.ship_once()
                self.health.last_error, delay = None, self.interval_s
            except LedgerError as exc:
                self.health.failures += 1
                self.health.last_error = str(exc)
                delay = min(delay * 2, 10.0)
                log.warning("shipping failed; retrying", extra={"error": str(exc), "retry_in_s": delay})
                shipped = 0
            if not shipped:
                await asyncio.sleep(delay)


async def _stream_wins(ledger: RedisLedger) -> list[dict[str, str]]:
    """Return the won records the streams hold (shipped and not yet trimmed, or not shipped)."""
    records: list[dict[str, str]] = []

    async def read(r: Client) -> None:
        for b in range(BUCKETS):
            start = "-"
            for _ in range(10**6):  # bounded: a stream is read to its end in pages
                page: Any = await r.xrange(bucket_key(b, "flow"), min=start, count=10_000)
                records.extend(fields for _, fields in page if fields.get("outcome") == "won")
                if len(page) < 10_000:
                    break
                start = f"({page[-1][0]}"

    await ledger.call(read)
    return records


async def _all_issued(ledger: RedisLedger) -> Iterable[tuple[int, str, int]]:
    issued: list[tuple[int, str, int]] = []
    after = None
    for _ in range(10**6):  # bounded: pages until a short one
        page = await ledger.read_page(after, 10_000)
        issued += [(int(t), p, int(q - left)) for t, p, q, left in zip(page.task_id, page.prize_type, page.quota, page.left)]
        if len(page) < 10_000:
            break
        after = page.last_key()
    return issued


async def reconcile_redis(ledger: RedisLedger, repair: bool) -> list[Difference]:
    """Compare every Redis counter with its won claims: those in MySQL plus those not shipped yet."""
    if not ledger.record_db:
        raise LedgerError("reconciling a Redis ledger reads the claims shipped into MySQL: give record_db")
    store = RecordStore(MySQLSettings.from_dsn(ledger.record_db))
    try:
        # The streams first, then MySQL: a record shipped (and trimmed) in between is then counted once.
        records = await _stream_wins(ledger)
        won = await store.won_counts()
        shipped = await store.present([f["claim_id"] for f in records])
        for f in records:
            if f["claim_id"] not in shipped:
                key = (int(f["task_id"]), f["prize_type"])
                won[key] = won.get(key, 0) + 1
        diffs = differences(await _all_issued(ledger), won)
    finally:
        await store.close()
    if repair and diffs:
        await ledger.set_issued(diffs)
    return diffs
