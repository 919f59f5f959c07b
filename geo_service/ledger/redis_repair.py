"""A Redis ledger held against its record: reconcile while claims and shipping go on, and restore the buckets
that lost their state.

Reconcile: each bucket's counters are read in one atomic call with its node's clock (counters_at.lua). The
won claims settled up to that moment are those of the record database with `created_at` at or before it, and
those of the bucket's flow stream (read after the counters) that the record database does not hold; the
record database is read last, counts and presence in one transaction, so a record shipped and trimmed
meanwhile is found there, and counted once. A repair moves each counter by its difference (HINCRBY): claims
settled after the read keep their increments.

Restore: a bucket without the ledger's epoch (redis_state.py) takes no claims. `--repair` gives it its counters
from the live snapshot (seeds), sets their issued counts and each player's wins (per task, and in the event for
the players whose wins the bucket keeps) from the won claims of the record, refills its filter of claim ids from
the record's ids, and then gives it the epoch: claims resume. Wins that were in its flow stream and never shipped
are gone with the node; the record is the truth.

This module may touch Redis and the record database; operators run it (`geo-service ledger reconcile`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from geo_service.dsn import REDIS_BUCKETS
from geo_service.ledger.interface import Difference, LedgerError, Seed
from geo_service.ledger.records import RecordStore, differences, to_move
from geo_service.ledger.redis import RedisLedger
from geo_service.ledger.redis_layout import (
    HOLD_LEASE_MS,
    SHIP_GROUP,
    bucket_key,
    entry_id,
    id_bucket,
    player_key,
    task_key,
    wins_key,
)
from geo_service.ledger.redis_state import MAX_CLOCK_SKEW_S, Client, bucket_epochs, mark_buckets
from geo_service.ledger.ship import remember

log = logging.getLogger("geodrop.ledger")
PAGE = 10_000  # stream entries and claim ids read a page at a time
_PAGES = 10**6  # bound on pages: far past any ceiling


async def reconcile_redis(ledger: RedisLedger, repair: bool, seeds: Sequence[Seed], lower: bool) -> list[Difference]:
    """Compare every counter with its won claims as of one moment per bucket; with repair, restore lost buckets
    first, then move the differing counters records.to_move names by their differences. Return what differed
    (restored counters first)."""
    store = ledger.store()
    lost = [b for b, mark in enumerate(await ledger.call(bucket_epochs)) if mark is None]
    restored: list[Difference] = []
    if lost and repair:
        restored = await restore(ledger, store, lost, seeds)
    elif lost:
        log.error("buckets without the ledger's epoch take no claims; --repair restores them",
                  extra={"buckets": len(lost)})
    by_bucket: dict[int, list[int]] = defaultdict(list)
    for task_id in await _all_tasks(ledger):
        by_bucket[task_id % REDIS_BUCKETS].append(task_id)
    moments = [time.time()] * REDIS_BUCKETS
    issued: list[tuple[int, str, int]] = []
    for b, tasks in sorted(by_bucket.items()):
        answer = await _counters_at(ledger, tasks)
        moments[b] = float(answer[0])
        issued += [(t, row[j], int(row[j + 2])) for t, row in zip(tasks, answer[1:]) for j in range(0, len(row), 4)]
    unshipped = await ledger.call(lambda r: _stream_wins(r, moments))
    won, present = await store.won_until(moments, [f["claim_id"] for f in unshipped])
    for f in unshipped:
        if f["claim_id"] not in present:
            key = (int(f["task_id"]), f["prize_type"])
            won[key] = won.get(key, 0) + 1
    diffs = differences(issued, won)
    moving = to_move(diffs, lower) if repair else []
    if moving:
        await ledger.call(lambda r: _move(r, moving))
    return restored + diffs


async def _all_tasks(ledger: RedisLedger) -> list[int]:
    ids: Any = await ledger.call(lambda r: r.zrange("gd:tasks", 0, -1))
    return [int(t) for t in ids]


async def _counters_at(ledger: RedisLedger, tasks: list[int]) -> Any:
    """Return counters_at.lua's answer for these tasks (all of one bucket)."""
    keys = [task_key(t) for t in tasks]

    async def read(r: Client) -> Any:
        return await ledger.run_script(r, "counters_at", keys, [])

    return await ledger.call(read)


async def _stream_wins(r: Client, moments: Sequence[float]) -> list[dict[str, str]]:
    """Return the won records each bucket's stream holds that were settled at or before the bucket's moment."""
    records: list[dict[str, str]] = []
    for b in range(REDIS_BUCKETS):
        start = "-"
        for _ in range(_PAGES):
            page: Any = await r.xrange(bucket_key(b, "flow"), min=start, count=PAGE)
            records += [f for _, f in page if f.get("outcome") == "won" and float(f["at"]) <= moments[b]]
            if len(page) < PAGE:
                break
            start = f"({page[-1][0]}"
    return records


async def _move(r: Client, diffs: Sequence[Difference]) -> None:
    """Move each counter by its difference: what claims add meanwhile stays added."""
    now_ms = int(time.time() * 1000)
    pipe = r.pipeline(transaction=False)
    for d in diffs:
        pipe.hincrby(task_key(d.task_id), f"i:{d.prize_type}", d.won_claims - d.issued)
        pipe.zadd(bucket_key(d.task_id % REDIS_BUCKETS, "changed"), {str(d.task_id): now_ms})
    await pipe.execute()


async def restore(ledger: RedisLedger, store: RecordStore, lost: list[int], seeds: Sequence[Seed]) -> list[Difference]:
    """Restore buckets that lost their state from the record (no claims settle there meanwhile: they have no
    epoch); return the counters whose issued count it set."""
    # A record without an epoch (claims recorded by an older release) gets one now: the restore rebuilds from it.
    epoch = await store.epoch(adopt=uuid.uuid4().hex)
    assert epoch is not None
    lost_set = set(lost)
    await ledger.seed([s for s in seeds if s[0] % REDIS_BUCKETS in lost_set])
    won: dict[tuple[int, str], int] = defaultdict(int)
    player_wins: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for task_id, prize, user, n in await store.bucket_wins(lost, REDIS_BUCKETS):
        won[(task_id, prize)] += n
        player_wins[task_id][user] += n
    tasks = {t for t in await _all_tasks(ledger) if t % REDIS_BUCKETS in lost_set} | {t for t, _ in won}
    counters = {(t, p): quota - left for t, p, left, quota, _ in await ledger.task_counters(tasks)}
    missing = sorted(set(won) - set(counters))
    if missing:
        raise LedgerError(f"{len(missing)} prize(s) with won claims have no counter to restore (e.g. task {missing[0][0]} "
                          f"{missing[0][1]}): give --snapshots the snapshot that holds them")
    # A bucket emptied has nothing issued; one gone back in time (fenced) is behind its record. Neither is lowered:
    # a counter above its record may count prizes whose records were lost (reconcile --lower decides that).
    diffs = [Difference(t, p, i, won.get((t, p), 0)) for (t, p), i in sorted(counters.items())]
    disabled = await store.disabled()
    players = await _player_wins(ledger, store, lost_set)

    async def write(r: Client) -> None:
        pipe = r.pipeline(transaction=False)
        now_ms = int(time.time() * 1000)
        for d in to_move(diffs, lower=False):
            pipe.hset(task_key(d.task_id), f"i:{d.prize_type}", d.won_claims)
            pipe.zadd(bucket_key(d.task_id % REDIS_BUCKETS, "changed"), {str(d.task_id): now_ms})
        for task_id in disabled:  # the kill switches the record keeps (gd:flags may have gone with the node)
            pipe.hset("gd:flags", str(task_id), "0")
            if task_id % REDIS_BUCKETS in lost_set:
                pipe.hset(task_key(task_id), "off", "1")
        ordered = sorted(tasks)
        held = await _wins_held(r, ordered)
        for task_id, now in zip(ordered, held):
            more = {user: n for user, n in player_wins.get(task_id, {}).items() if n > int(now.get(user, 0))}
            if more:  # a player's wins as the record counts them, never fewer than the bucket still holds
                pipe.hset(wins_key(task_id), mapping=more)  # type: ignore[arg-type]
        for user_id, claim_id, task_id, prize in players:  # each player's wins in the event (player_win_cap)
            pipe.hset(player_key(user_id), f"w:{claim_id}", f"{task_id}\t{prize}")
        await pipe.execute()

    await ledger.call(write)
    marks = await store.marks()
    await ledger.call(lambda r: _catch_up_streams(r, lost, marks))
    refilled = await _refill_filters(ledger, store, lost)
    await ledger.call(lambda r: mark_buckets(r, lost, epoch))
    log.warning("restored buckets from the record", extra={"buckets": len(lost), "counters": len(diffs),
                                                            "claim_ids": refilled})
    return [d for d in diffs if d.issued < d.won_claims]


async def _player_wins(ledger: RedisLedger, store: RecordStore, lost: set[int]) -> list[tuple[str, str, int, str]]:
    """Return (user_id, claim_id, task_id, prize_type) of every win of the players whose buckets are lost: the
    record's, and those still in the live buckets' flow streams. On a cluster a claim that took its place on a lost
    node may settle on its task's node until its hold's deadline: the streams are read after that has passed."""
    if ledger.kind == "redis+cluster":
        await asyncio.sleep(HOLD_LEASE_MS / 1000 + MAX_CLOCK_SKEW_S + 1)
    # The streams first, then the record: a win shipped and trimmed meanwhile is then in the record.
    streamed = await ledger.call(lambda r: _stream_wins(r, [math.inf] * REDIS_BUCKETS))
    wins = await store.player_wins(sorted(lost), REDIS_BUCKETS)
    recorded = {claim_id for _, claim_id, _, _ in wins}
    return wins + [(f["user_id"], f["claim_id"], int(f["task_id"]), f["prize_type"]) for f in streamed
                   if id_bucket(f["user_id"]) in lost and f["claim_id"] not in recorded]


async def _wins_held(r: Client, tasks: list[int]) -> list[dict[str, str]]:
    pipe = r.pipeline(transaction=False)
    for task_id in tasks:
        pipe.hgetall(wins_key(task_id))
    return list(await pipe.execute())


async def _catch_up_streams(r: Client, lost: list[int], marks: dict[int, tuple[int, int]]) -> None:
    """Move each restored bucket's flow stream and its shipping group past what was shipped from it, so the shipper
    does not find it behind its mark again (and its next records follow every shipped one)."""
    for b in lost:
        key = bucket_key(b, "flow")
        try:
            await r.xgroup_create(key, SHIP_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if b not in marks:
            continue
        mark = "{}-{}".format(*marks[b])
        info: Any = await r.xinfo_stream(key)
        if entry_id(info["last-generated-id"]) < marks[b]:
            await r.execute_command("XSETID", key, mark)
        for group in await r.xinfo_groups(key):  # what the shipper had delivered: at least the mark (fence.lua)
            if group["name"] == SHIP_GROUP and entry_id(group["last-delivered-id"]) < marks[b]:
                await r.xgroup_setid(key, SHIP_GROUP, mark)


async def _remember(ledger: RedisLedger, claim_ids: list[str]) -> None:
    async def put(r: Client) -> None:
        await remember(ledger, r, claim_ids)

    await ledger.call(put)


async def _refill_filters(ledger: RedisLedger, store: RecordStore, lost: list[int]) -> int:
    """Put every recorded claim id of the lost buckets back into their filters; return how many."""
    after, count = "", 0
    for _ in range(_PAGES):
        ids = await store.claim_ids(lost, REDIS_BUCKETS, after, PAGE)
        await _remember(ledger, ids)
        count += len(ids)
        if len(ids) < PAGE:
            break
        after = ids[-1]
    return count
