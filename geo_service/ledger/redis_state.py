"""Whether a Redis ledger's server and buckets hold its state: the server's settings that keep an acknowledged
win (REQUIRED_CONFIG), and the epoch every bucket keeps, held against the record database's.

A node emptied by a flush, or restarted without its AOF, comes back without the keys of its buckets, and so
without their epoch: the claim scripts refuse claims there (state_lost) instead of settling against counters a
snapshot load would seed at zero, which would issue whole quotas again. `ledger reconcile --repair`
(redis_repair.py) restores such buckets from the record and gives them the epoch back.

This module may touch Redis and the record database; it knows nothing of claims.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from geo_service.dsn import REDIS_BUCKETS
from geo_service.ledger.interface import CounterRow, LedgerError
from geo_service.ledger.records import RecordStore
from geo_service.ledger.redis_layout import LAYOUT, bucket_key, epoch_key

log = logging.getLogger("geodrop.ledger")
Client = aioredis.Redis | RedisCluster
MAX_CLOCK_SKEW_S = 2.0  # well inside redis_layout.HOLD_STALE_MS: node clocks apart by more refuse claims
T = TypeVar("T")


class Calls(Protocol):
    """What the Redis ledger's helper modules (redis_players.py, redis_reads.py) ask of it: RedisLedger's own
    methods, named here so that they need not import it."""

    record_db: str

    async def call(self, work: Callable[[Client], Awaitable[T]]) -> T: ...

    async def run_script(self, client: Client, name: str, keys: list[str], args: Sequence[Any]) -> Any: ...

    async def task_counters(self, task_ids: Iterable[int]) -> list[CounterRow]: ...

    def store(self) -> RecordStore: ...
# What the ledger needs of every node for "an acknowledged win is never lost, a prize never issued twice".
REQUIRED_CONFIG = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction",
                   "no-appendfsync-on-rewrite": "no"}


async def check_layout(r: Client, where: str, claim_filter_bits: int) -> None:
    """Hold the server's key layout (set it on an empty one); the filter's size is part of it: another size reads
    other bits, and ids the filter has seen would look new."""
    layout = f"{LAYOUT} claim_filter_bits={claim_filter_bits}"
    await r.set("gd:layout", layout, nx=True)
    held = await r.get("gd:layout")
    if held != layout:
        raise LedgerError(f"{where} holds a ledger of layout {held!r}; this one is {layout!r} (an older release's: "
                          "ship its flow log, empty the Redis and restore it from the record with `ledger reconcile "
                          "--repair`)")


async def flow_lengths(r: Client) -> list[int]:
    """Return how many records each bucket's flow stream holds."""
    pipe = r.pipeline(transaction=False)
    for b in range(REDIS_BUCKETS):
        pipe.xlen(bucket_key(b, "flow"))
    return [int(n) for n in await pipe.execute()]


async def bucket_epochs(r: Client) -> list[str | None]:
    """Return each bucket's epoch (None: the bucket has none)."""
    pipe = r.pipeline(transaction=False)
    for b in range(REDIS_BUCKETS):
        pipe.get(epoch_key(b))
    return list(await pipe.execute())


async def mark_buckets(r: Client, buckets: list[int], epoch: str) -> None:
    """Give these buckets the epoch (never over another: SET NX)."""
    pipe = r.pipeline(transaction=False)
    for b in buckets:
        pipe.set(epoch_key(b), epoch, nx=True)
    await pipe.execute()


async def check_epoch(r: Client, where: str, store: RecordStore | None, create: bool) -> list[int]:
    """Hold the ledger's epoch against the record database's and return the buckets without it: their node
    lost the ledger's state, and their claims answer 503 until `reconcile --repair` restores them from the
    record. A Redis without any epoch gets one only where that cannot re-issue a quota: the record database knows
    no epoch either (a new ledger), or `create` says so (`geo-service ledger init`, an operator's word that it is
    new; with a record database that holds claims, not even then). The record database is asked once a process;
    where every bucket holds the epoch, an unreachable one does not stop claims."""
    marks = await bucket_epochs(r)
    held = {m for m in marks if m is not None}
    if len(held) > 1:
        raise LedgerError(f"{where} holds buckets of {len(held)} ledger epochs: {sorted(held)}")
    recorded = None
    if store is not None:
        try:
            recorded = await store.epoch(adopt=next(iter(held), None))
        except LedgerError as exc:
            if not held:  # new or emptied: only the record can tell
                raise
            log.warning("could not compare the ledger's epoch with the record database's", extra={"error": str(exc)})
    if held and recorded is not None and held != {recorded}:
        raise LedgerError(f"{where} holds ledger epoch {next(iter(held))!r}; the record database "
                          f"{store.settings.redacted if store else ''} holds {recorded!r}: not this ledger's record")
    if not held and recorded is None and create:
        if store is not None and await store.has_claims():
            # Claims recorded, and no epoch: a ledger that lost its state, or the first start after an upgrade.
            log.error("the record database holds claims but no ledger epoch: this Redis takes no claims until "
                      "`geo-service ledger reconcile --repair` restores it from the record", extra={"ledger": where})
            return list(range(REDIS_BUCKETS))
        epoch = uuid.uuid4().hex
        if store is not None:  # the first to record one wins: every worker then marks the buckets with it
            epoch = await store.epoch(adopt=epoch) or epoch
        await mark_buckets(r, list(range(REDIS_BUCKETS)), epoch)
        log.info("a new Redis ledger: its buckets now hold its epoch", extra={"ledger": where, "epoch": epoch})
        return []
    lost = [b for b, mark in enumerate(marks) if mark is None]
    if lost:
        log.error("buckets of the Redis ledger hold no epoch: their claims are refused until `geo-service ledger "
                  "reconcile --repair` restores them from the record database (a new ledger: start it with record_db, "
                  "or `geo-service ledger init`)", extra={"ledger": where, "buckets": len(lost)})
    return lost


async def config_problems(r: Client, where: str) -> list[str]:
    """Return how each node falls short of REQUIRED_CONFIG, and replicas that could fail over on their own."""
    nodes = [(n.name, n.server_type, n) for n in r.get_nodes()] if isinstance(r, RedisCluster) else [(where, "primary", None)]
    found = []
    for name, role, node in nodes:
        config = await (r.config_get("*", target_nodes=node) if node is not None else r.config_get("*"))
        found += [f"{name}: {key} is {config.get(key)!r}, needs {want!r}"
                  for key, want in REQUIRED_CONFIG.items() if config.get(key) != want]
        if role == "replica" and config.get("cluster-replica-no-failover") != "yes":
            found.append(f"{name}: a replica that fails over on its own can lose acknowledged wins; "
                         "set cluster-replica-no-failover yes")
    if isinstance(r, RedisCluster):
        found += await _clock_problems(r, [node for _, role, node in nodes if role == "primary" and node is not None])
    return found


async def _clock_problems(r: RedisCluster, primaries: list[Any]) -> list[str]:
    """Return the primaries off the middle one's clock when their clocks spread over more than MAX_CLOCK_SKEW_S: a
    claim's hold on a player's place is set by one node's clock and enforced by another's (redis_players.py)."""
    readings = []
    for node in primaries:
        before = time.time()
        sec, usec = await r.time(target_nodes=node)
        readings.append((node.name, sec + usec / 1e6 - (before + time.time()) / 2))  # its offset from ours
    offsets = sorted(offset for _, offset in readings)
    middle = offsets[len(offsets) // 2]
    spread = offsets[-1] - offsets[0] if offsets else 0.0
    if spread <= MAX_CLOCK_SKEW_S:
        return []
    return [f"{name}: the primaries' clocks are {spread:.1f} s apart, beyond the {MAX_CLOCK_SKEW_S:g} s the event's "
            f"win cap allows; this one is {offset - middle:+.1f} s off the middle one; sync them (NTP)"
            for name, offset in readings if abs(offset - middle) > MAX_CLOCK_SKEW_S / 2]
