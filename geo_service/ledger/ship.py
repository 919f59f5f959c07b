"""The flow log's way into MySQL: a Redis ledger's claim records, shipped exactly once into `claims`.

Each bucket's stream is read through one consumer group. A batch is upserted by claim_id and
committed; its claims' outcomes and bindings, kept in Redis without expiry until then, are given their
time (record_ttl_s); then the batch is acknowledged and the stream trimmed below its oldest pending entry,
never in the claim call: a shipper killed anywhere re-reads what it had not acknowledged, and the upsert
makes the second delivery a no-op. MySQL's claims table stays the system of record for reporting.

A consumer group that is gone (the stream deleted, or the group destroyed) is made again from the stream's
start: what the stream still holds is shipped (the upsert keeps it once), and what was deleted with it is
reported as a gap for `ledger reconcile`. This module may touch the ledger's Redis streams and keys, and the
record database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from geo_service.dsn import REDIS_BUCKETS
from geo_service.ledger.interface import LedgerError
from geo_service.ledger.records import ClaimRecord, RecordStore
from geo_service.ledger.redis import READ_CALLS_IN_FLIGHT, RedisLedger
from geo_service.ledger.redis_layout import (
    OUTCOME_MARGIN_S,
    SHIP_GROUP,
    bind_key,
    bucket_key,
    entry_id,
    epoch_key,
    id_bucket,
    outcome_key,
)
from geo_service.ledger.redis_state import Client

log = logging.getLogger("geodrop.ship")
GROUP, CONSUMER = SHIP_GROUP, "shipper"


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
    groups_recreated: int = 0  # consumer groups found gone and made again
    last_gap: str | None = None  # what the last recreation may have lost, for reconcile
    buckets_fenced: int = 0  # buckets found behind what was shipped from them, and made to refuse claims
    last_fence: str | None = None


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
        self.buckets = [b for b in range(REDIS_BUCKETS) if b % part[1] == part[0] - 1]
        self._groups = False
        self._pending = set(self.buckets)  # streams that may hold entries delivered but not acknowledged
        self._shipped_to: dict[int, str] = {}  # each bucket's last entry acknowledged by this process
        self._marks: dict[int, tuple[int, int]] | None = None  # how far shipping has reached (the record's flow_marks)

    async def _ensure_groups(self, r: Client, buckets: list[int] | None = None) -> None:
        for b in self.buckets if buckets is None else buckets:
            try:
                await r.xgroup_create(bucket_key(b, "flow"), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups = True

    async def _look(self, r: Client) -> list[int]:
        """Return the buckets whose streams hold entries; note the backlog and its age; fence the buckets whose
        stream is behind what was shipped from it."""
        if self._marks is None:
            self._marks = await self.store.marks()
        pipe = r.pipeline(transaction=False)
        for b in self.buckets:
            pipe.xlen(bucket_key(b, "flow"))
            pipe.xrange(bucket_key(b, "flow"), count=1)
        answers = await pipe.execute()
        lengths, firsts = answers[0::2], answers[1::2]
        oldest = [int(first[0][0].partition("-")[0]) for first in firsts if first]
        self.health.backlog = int(sum(lengths))
        self.health.lag_s = round(time.time() - min(oldest) / 1000, 3) if oldest else 0.0
        marked = [b for b in self.buckets if b in self._marks]
        fenced: set[int] = set()
        for start in range(0, len(marked), READ_CALLS_IN_FLIGHT):  # a few at a time: the pool is bounded
            chunk = marked[start : start + READ_CALLS_IN_FLIGHT]
            taken = await asyncio.gather(*(self._fence(r, b, self._marks[b]) for b in chunk))
            fenced |= {b for b, took in zip(chunk, taken) if took}
        return [b for b, n in zip(self.buckets, lengths) if (n or b in self._pending) and b not in fenced]

    async def _fence(self, r: Client, bucket: int, mark: tuple[int, int]) -> bool:
        """Take a bucket's epoch if its node went back in time (fence.lua): its counters, bindings and filter went
        with it, and its claims are refused until a repair restores it from the record. Return whether it did."""
        behind = await self.ledger.run_script(r, "fence", [bucket_key(bucket, "flow"), epoch_key(bucket)], [GROUP, *mark])
        if not behind:
            return False
        fence = (f"bucket {bucket}: shipping had reached {mark[0]}-{mark[1]}, its node's stream only {behind}: the node "
                 "went back in time; its claims are refused until `geo-service ledger reconcile --repair` restores it")
        self.health.buckets_fenced += 1
        self.health.last_fence = fence
        log.error("a bucket's state went back in time: fenced", extra={"bucket": bucket, "fence": fence})
        return True

    async def _read(self, r: Client, bucket: int, start: str) -> list[tuple[str, dict[str, str]]]:
        """Read a batch as the group's consumer; a group found gone is made again from the stream's start."""
        key = bucket_key(bucket, "flow")
        try:
            answer: Any = await r.xreadgroup(GROUP, CONSUMER, {key: start}, count=self.batch)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._recreate(r, bucket)
            answer = await r.xreadgroup(GROUP, CONSUMER, {key: start}, count=self.batch)
        return answer[0][1] if answer else []

    async def _recreate(self, r: Client, bucket: int) -> None:
        key = bucket_key(bucket, "flow")
        first: Any = await r.xrange(key, count=1)
        await self._ensure_groups(r, [bucket])
        self._pending.add(bucket)
        shipped_to = self._shipped_to.get(bucket, "unknown (not this process)")
        gap = (f"bucket {bucket}: the flow stream's consumer group was gone and is made again; shipped to "
               f"{shipped_to}, the stream now starts at {first[0][0] if first else 'nothing'}: records between "
               "were lost with it (run `geo-service ledger reconcile`)")
        self.health.groups_recreated += 1
        self.health.last_gap = gap
        log.error("flow-log consumer group recreated", extra={"bucket": bucket, "gap": gap})

    async def _take(self, r: Client, bucket: int) -> list[tuple[str, dict[str, str]]]:
        """Return the stream's next batch for this consumer: entries delivered before and not acknowledged first."""
        for start in ("0", ">") if bucket in self._pending else (">",):
            entries = await self._read(r, bucket, start)
            if entries:
                self._pending.add(bucket)
                return entries
        self._pending.discard(bucket)
        return []

    async def _acknowledge(self, r: Client, bucket: int, ids: list[str]) -> None:
        """Acknowledge a shipped batch and trim the stream below its oldest entry still pending."""
        key = bucket_key(bucket, "flow")
        await r.xack(key, GROUP, *ids)
        self._shipped_to[bucket] = ids[-1]
        pending: Any = await r.xpending(key, GROUP)
        low = pending["min"] if pending["pending"] else _next_id(ids[-1])
        await r.xtrim(key, minid=low, approximate=False)
        if not pending["pending"]:
            self._pending.discard(bucket)

    async def _expire(self, r: Client, rows: list[ClaimRecord]) -> None:
        """Give the shipped claims' bindings record_ttl_s and their outcomes a margin more: while a binding lives,
        its outcome does, and after it the record database answers a retry (redis_layout.py). Each id goes into its
        bucket's filter again with its binding's expiry: a bucket restored from the record while this record was
        still in a stream learns it here. A script call per bucket over many keys: a call per key would cost the
        shipper more than the records' upsert."""
        ttl = self.ledger.settings.record_ttl_s
        await remember(self.ledger, r, [row.claim_id for row in rows], bindings_ttl_s=ttl)
        by_bucket: dict[int, list[str]] = {}
        for row in rows:
            by_bucket.setdefault(row.task_id % REDIS_BUCKETS, []).append(outcome_key(row.task_id, row.claim_id))
        groups = list(by_bucket.values())
        for start in range(0, len(groups), READ_CALLS_IN_FLIGHT):
            await asyncio.gather(*(self.ledger.run_script(r, "expire", keys, [ttl + OUTCOME_MARGIN_S])
                                   for keys in groups[start : start + READ_CALLS_IN_FLIGHT]))

    async def ship_once(self) -> int:
        """Ship what the streams hold now, a batch per stream: every batch's records and marks in one transaction,
        then their expiries, then each stream acknowledged and trimmed. Return the records shipped."""

        async def run(r: Client) -> int:
            if not self._groups:
                await self._ensure_groups(r)
            taken = {b: entries for b in await self._look(r) if (entries := await self._take(r, b))}
            rows = [ClaimRecord.from_flow(f) for entries in taken.values() for _, f in entries if f]  # trimmed: no fields
            marks = {b: entry_id(entries[-1][0]) for b, entries in taken.items()}
            if rows:
                await self.store.insert(rows, [(b, *mark) for b, mark in marks.items()])
                assert self._marks is not None
                for b, mark in marks.items():
                    self._marks[b] = max(self._marks.get(b, (0, 0)), mark)
                await self._expire(r, rows)
            for b, entries in taken.items():
                await self._acknowledge(r, b, [entry_id for entry_id, _ in entries])
            return len(rows)

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


async def remember(ledger: RedisLedger, r: Client, claim_ids: Sequence[str], bindings_ttl_s: int | None = None) -> None:
    """Put claim ids into their buckets' filters, and with bindings_ttl_s give their bindings that expiry: a
    script call per bucket (remember.lua), pipelined on one node (where it has not loaded the script yet, the
    plain call loads it); on a cluster, whose pipelines take no scripts, a few at a time."""
    by_bucket: dict[int, list[str]] = {}
    for claim_id in claim_ids:
        by_bucket.setdefault(id_bucket(claim_id), []).append(claim_id)
    calls: list[tuple[list[str], list[str | int]]] = []
    for b, ids in by_bucket.items():
        bindings = [bind_key(c) for c in ids] if bindings_ttl_s is not None else []
        calls.append(([bucket_key(b, "seen"), *bindings], [ledger.settings.claim_filter_bits, bindings_ttl_s or 0, *ids]))
    if isinstance(r, RedisCluster):
        for start in range(0, len(calls), READ_CALLS_IN_FLIGHT):
            await asyncio.gather(*(ledger.run_script(r, "remember", keys, args)
                                   for keys, args in calls[start : start + READ_CALLS_IN_FLIGHT]))
        return
    pipe = r.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(ledger.sha("remember"), len(keys), *keys, *args)
    for (keys, args), answer in zip(calls, await pipe.execute(raise_on_error=False)):
        if isinstance(answer, NoScriptError):
            await ledger.run_script(r, "remember", keys, args)
        elif isinstance(answer, Exception):
            raise answer
