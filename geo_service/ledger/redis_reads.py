"""The Redis ledger's reads for the collector: what changed since a time, the live changes, and a complete read in
pages (redis.py's RedisLedger answers the Ledger protocol with these)."""

from __future__ import annotations

from typing import Any

from geo_service.dsn import REDIS_BUCKETS
from geo_service.ledger.interface import CounterRow, Counters, LedgerState, PrizeChange
from geo_service.ledger.redis_layout import bucket_key
from geo_service.ledger.redis_state import Calls, Client

CHANGED_KEEP_S = 3_600  # how long a task stays in a bucket's changed set: far longer than any delta read's reach


async def read_state(ledger: Calls, since: float) -> LedgerState:
    since_ms = int(since * 1000)

    async def read(r: Client) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for b in range(REDIS_BUCKETS):
            pipe.zrangebyscore(bucket_key(b, "changed"), since_ms, "+inf")
            pipe.zremrangebyscore(bucket_key(b, "changed"), "-inf", f"({since_ms - CHANGED_KEEP_S * 1000}")
        pipe.hgetall("gd:flags")
        return list(await pipe.execute())

    answers = await ledger.call(read)
    tasks = {int(t) for i in range(0, 2 * REDIS_BUCKETS, 2) for t in answers[i]}
    disabled = frozenset(int(t) for t, flag in answers[-1].items() if flag == "0")
    return LedgerState(Counters.from_rows(await ledger.task_counters(tasks)), disabled)


async def read_changes(ledger: Calls, since: float) -> list[PrizeChange]:
    since_ms = int(since * 1000)

    async def read(r: Client) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for b in range(REDIS_BUCKETS):
            pipe.xrange(bucket_key(b, "changes"), min=f"{since_ms}-0")
        return list(await pipe.execute())

    changes = [PrizeChange.from_fields(fields) for entries in await ledger.call(read) for _, fields in entries]
    return sorted(changes, key=lambda c: c.seq)


async def read_page(ledger: Calls, after: tuple[int, str] | None, limit: int) -> Counters:
    # Whole tasks from the task index, from after's task on, a slice at a time until `limit` counters: a
    # task has one counter or more, so limit tasks past after's are always enough.
    low: int | str = after[0] if after is not None else "-inf"
    ids: Any = await ledger.call(lambda r: r.zrangebyscore("gd:tasks", low, "+inf", start=0, num=limit + 1))
    rows: list[CounterRow] = []
    step = max(1, limit // 3)  # most tasks have a few prizes: one slice is usually the whole page
    for start in range(0, len(ids), step):
        rows += [row for row in await ledger.task_counters(int(t) for t in ids[start : start + step])
                 if after is None or row[:2] > after]
        if len(rows) >= limit:
            break
    return Counters.from_rows(rows[:limit])
