"""The Redis ledger: one server-side script settles a claim, on one node or a Redis Cluster.

The key layout and the scripts' arguments are in redis_layout.py: every key a claim touches shares its
task's bucket hash tag, so one claim is one slot.

This module may touch Redis, and the record database to reconcile against it; ship.py moves the flow log
into the record database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from geo_service.dsn import REDIS_BUCKETS, MySQLSettings, RedisSettings
from geo_service.ledger.interface import (
    ClaimIdTaken,
    ClaimRequest,
    CounterRow,
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
from geo_service.ledger.records import RecordStore, differences
from geo_service.ledger.redis_layout import (
    BIND_MARGIN_S,
    CLAIM_ARGS,
    LAYOUT,
    MOVE_ARGS,
    bind_key,
    bucket_key,
    bucket_tag,
    claim_of,
    owner_of,
    script,
    task_key,
)

CLAIM_ID_TAKEN = "claim_id_taken"  # the claim script's answer when the id is bound to another claim
POSITION_TTL_S = 86_400  # a player unseen for a day starts afresh (as after a long trip)
READ_CALLS_IN_FLIGHT = 16  # per read of many tasks: well inside the connection pool, enough to keep nodes busy
CHANGED_KEEP_S = 3_600  # how long a task stays in a bucket's changed set: far longer than any delta read's reach
# What the ledger needs of every node for "an acknowledged win is never lost, a prize never issued twice".
REQUIRED_CONFIG = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction",
                   "no-appendfsync-on-rewrite": "no"}
T = TypeVar("T")
Client = aioredis.Redis | RedisCluster


class RedisLedger:
    """Claims in one script call each on one node; on a cluster, the claim id's binding and the movement check
    (under the id's and the player's own tags) are two more calls, made together before it."""

    def __init__(self, settings: RedisSettings, record_db: str = "") -> None:
        self.settings = settings
        self.record_db = record_db
        self.kind = "redis+cluster" if settings.cluster else "redis"
        self._client: Client | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._limit = asyncio.Semaphore(settings.max_connections)

    async def client(self) -> Client:
        """Return the connected client, checking once that the server holds this key layout (or none)."""
        if self._client is None:
            s = self.settings
            options: dict[str, Any] = {"password": s.password or None, "decode_responses": True,
                                       "socket_timeout": s.timeout_s, "socket_connect_timeout": s.timeout_s,
                                       "max_connections": s.max_connections}
            client: Client = (RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in s.nodes], **options) if s.cluster
                              else aioredis.Redis(host=s.nodes[0][0], port=s.nodes[0][1], db=s.db, **options))
            try:
                await client.set("gd:layout", LAYOUT, nx=True)
                layout = await client.get("gd:layout")
            except BaseException:
                await client.aclose()
                raise
            if layout != LAYOUT:
                await client.aclose()
                raise LedgerError(f"{s.redacted} holds a ledger of layout {layout!r}; this release reads {LAYOUT!r}")
            self._scripts = {name: client.register_script(script(name))
                             for name in ("claim", "movement", "set_prize", "set_flag", "unbind", "read_tasks")}
            self._client = client
        return self._client

    async def call(self, work: Callable[[Client], Awaitable[T]]) -> T:
        """Run one piece of work with a bounded number in flight; any Redis failure becomes a LedgerError."""
        try:
            async with self._limit:
                result = await work(await self.client())
        except (RedisError, RedisClusterException, OSError) as exc:  # the cluster client's own is no RedisError
            deliver_cancellation(exc)
            raise LedgerError(f"redis ledger {self.settings.redacted}: {type(exc).__name__}: {exc}") from exc
        except (AttributeError, TypeError, RuntimeError) as exc:
            # redis-py's asyncio connection lets a write on a connection the peer just reset fail with these
            # instead of ConnectionError (redis/redis-py#4287, #3546; uvloop's transport says "the handler is
            # closed"): a lost connection when raised in there.
            if not raised_in(exc, "redis"):
                raise
            deliver_cancellation(exc)
            raise LedgerError(f"redis ledger {self.settings.redacted}: connection lost ({exc})") from exc
        deliver_cancellation(None)
        return result

    async def seed(self, counters: Sequence[Seed]) -> None:
        """Create the fields a counter lacks (HSETNX: a counter that exists keeps its counts, quota and rate)."""
        now_ms = int(time.time() * 1000)

        async def write(r: Client) -> None:
            # Tasks switched off by a release that kept the switch in gd:flags alone get it in their hash too.
            disabled = {int(t) for t, flag in (await r.hgetall("gd:flags")).items() if flag == "0"}
            for start in range(0, len(counters), 2000):
                pipe = r.pipeline(transaction=False)
                chunk = counters[start : start + 2000]
                for task_id in {c[0] for c in chunk} & disabled:
                    pipe.hset(task_key(task_id), "off", "1")
                for task_id, prize, quota, rate in chunk:
                    key = task_key(task_id)
                    for name, value in (("q", quota), ("i", 0), ("r", rate), ("s", 0), ("n", 0)):
                        pipe.hsetnx(key, f"{name}:{prize}", value)
                    pipe.zadd(bucket_key(task_id % REDIS_BUCKETS, "changed"), {str(task_id): now_ms})
                pipe.zadd("gd:tasks", {str(t): t for t in {c[0] for c in chunk}})
                await pipe.execute()

        await self.call(write)

    async def claim(self, request: ClaimRequest, draw: Sequence[str], win_cap: int, max_speed_mps: float) -> Outcome:
        r = request
        tag = bucket_tag(r.task_id)

        async def settle(client: Client) -> str:
            keys = [task_key(r.task_id), f"gd:{tag}:w:{r.task_id}", f"gd:{tag}:c:{r.task_id}:{r.claim_id}",
                    f"gd:{tag}:flow", f"gd:{tag}:changed"]
            values = {"claim_id": r.claim_id, "user_id": r.user_id, "task_id": r.task_id, "poi_id": r.poi_id,
                      "win_cap": win_cap, "record_ttl_s": self.settings.record_ttl_s,
                      "bind_ttl_s": self.settings.record_ttl_s + BIND_MARGIN_S, "lat": r.lat, "lng": r.lng,
                      "at_s": r.at_s, "max_speed_mps": max_speed_mps, "position_ttl_s": POSITION_TTL_S}
            player = f"gd:{{u:{r.user_id}}}:pos"
            if isinstance(client, RedisCluster):
                # The claim id's binding and the player's position live on other nodes than the task's keys: on a
                # cluster each is a call of its own, made together, before the claim's.
                holder, values["plausible"] = await asyncio.gather(
                    self._bind(client, r), self._run_script(client, "movement", [player], [values[arg] for arg in MOVE_ARGS]))
                if holder is not None and holder != claim_of(r):
                    return CLAIM_ID_TAKEN
                values["bound"] = "1"
            else:
                values["plausible"] = values["bound"] = "?"  # one node holds every key: the claim's call checks both
                keys += [player, bind_key(r.claim_id)]
            args = [*(values[arg] for arg in CLAIM_ARGS), *draw]
            answer = str(await self._run_script(client, "claim", keys, args))
            if answer == CLAIM_ID_TAKEN and values["bound"] == "1":
                # Bound here a moment ago to an id whose outcome is another player's: give the binding back.
                await self._run_script(client, "unbind", [bind_key(r.claim_id)], [claim_of(r)])
            return answer

        answer = await self.call(settle)
        if answer == CLAIM_ID_TAKEN:
            raise ClaimIdTaken(r.claim_id)
        return _outcome(r.claim_id, answer)

    async def _run_script(self, client: Client, name: str, keys: list[str], args: Sequence[Any]) -> Any:
        """Run a script on the node serving its keys. On a cluster the call goes straight to the node that the
        client's slot table names: the client's general routing costs a claim's worker a tenth of its CPU
        (py-spy). A moved slot, a lost node or a script not loaded there fails that call, and the general path,
        which sorts each of them out, runs it; both scripts are safe to run twice (a settled claim_id answers
        its first outcome; a position set twice is the same position)."""
        script = self._scripts[name]
        if isinstance(client, RedisCluster):
            node = client.nodes_manager.get_node_from_slot(key_slot(keys[0].encode()))
            try:
                return await node.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except RedisError:
                pass
        return await script(keys=keys, args=args)

    async def _bind(self, client: RedisCluster, r: ClaimRequest) -> Any:
        """Bind the claim id to this claim unless it is bound, and return what it was bound to (None: nothing),
        straight to the key's node as _run_script does. Safe to run twice: the second finds this claim."""
        key, ttl = bind_key(r.claim_id), self.settings.record_ttl_s + BIND_MARGIN_S
        node = client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        try:
            # get=True tells the reply callback to hand back the old value (its default turns a reply into OK or not).
            return await node.execute_command("SET", key, claim_of(r), "NX", "GET", "EX", ttl, get=True)
        except RedisError:
            return await client.set(key, claim_of(r), nx=True, get=True, ex=ttl)

    async def outcome_of(self, request: ClaimRequest) -> Outcome | None:
        r = request
        holder: Any
        raw: Any
        holder, raw = await asyncio.gather(  # two keys of two slots: two calls, made together
            self.call(lambda c: c.get(bind_key(r.claim_id))),
            self.call(lambda c: c.get(f"gd:{bucket_tag(r.task_id)}:c:{r.task_id}:{r.claim_id}")))
        if (holder is not None and holder != claim_of(r)) or (raw is not None and owner_of(raw) not in (None, claim_of(r))):
            raise ClaimIdTaken(r.claim_id)
        return None if raw is None else _outcome(r.claim_id, raw)

    async def set_prize(self, task_id: int, prize_type: str, quota: int | None, rate_milli: int | None) -> PrizeChange:
        bucket = task_id % REDIS_BUCKETS

        async def change(r: Client) -> tuple[int, list[str]]:
            seq = int(await r.incr("gd:change_seq"))  # a refused change leaves a gap: seqs only need to grow
            keys = [task_key(task_id), bucket_key(bucket, "changes"), bucket_key(bucket, "changed")]
            args: list[str | int] = [task_id, prize_type, "" if quota is None else quota,
                                     "" if rate_milli is None else rate_milli, seq]
            return seq, list(await self._scripts["set_prize"](keys=keys, args=args))

        seq, answer = await self.call(change)
        if answer[0] == "no_such_prize":
            raise PrizeChangeRefused("no_such_prize", f"task {task_id} has no prize {prize_type!r} in the ledger")
        if answer[0] == "quota_below_issued":
            raise PrizeChangeRefused("quota_below_issued", f"quota {quota} is below the {answer[1]} already issued "
                                                           f"of task {task_id} {prize_type}")
        return PrizeChange(seq, float(answer[3]), task_id, prize_type, int(answer[1]), int(answer[2]))

    async def task_counters(self, task_ids: Iterable[int]) -> list[CounterRow]:
        """Return the counters of these tasks, in key order: one script call per bucket they fall in (a few
        calls in flight at a time), not one command per task."""
        by_bucket: dict[int, list[int]] = {}
        for task_id in sorted(set(task_ids)):
            by_bucket.setdefault(task_id % REDIS_BUCKETS, []).append(task_id)
        groups = list(by_bucket.values())

        async def read(r: Client) -> list[list[list[str]]]:
            answers: list[list[list[str]]] = []
            for start in range(0, len(groups), READ_CALLS_IN_FLIGHT):
                answers += await asyncio.gather(*(self._run_script(r, "read_tasks", [task_key(t) for t in group], [])
                                                  for group in groups[start : start + READ_CALLS_IN_FLIGHT]))
            return answers

        rows = [(task_id, flat[j], int(flat[j + 1]) - int(flat[j + 2]), int(flat[j + 1]), int(flat[j + 3]))
                for group, found in zip(groups, await self.call(read)) for task_id, flat in zip(group, found)
                for j in range(0, len(flat), 4)]
        return sorted(rows)

    async def read_state(self, since: float) -> LedgerState:
        since_ms = int(since * 1000)

        async def read(r: Client) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for b in range(REDIS_BUCKETS):
                pipe.zrangebyscore(bucket_key(b, "changed"), since_ms, "+inf")
                pipe.zremrangebyscore(bucket_key(b, "changed"), "-inf", f"({since_ms - CHANGED_KEEP_S * 1000}")
            pipe.hgetall("gd:flags")
            return list(await pipe.execute())

        answers = await self.call(read)
        tasks = {int(t) for i in range(0, 2 * REDIS_BUCKETS, 2) for t in answers[i]}
        disabled = frozenset(int(t) for t, flag in answers[-1].items() if flag == "0")
        return LedgerState(Counters.from_rows(await self.task_counters(tasks)), disabled)

    async def read_changes(self, since: float) -> list[PrizeChange]:
        since_ms = int(since * 1000)

        async def read(r: Client) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for b in range(REDIS_BUCKETS):
                pipe.xrange(bucket_key(b, "changes"), min=f"{since_ms}-0")
            return list(await pipe.execute())

        changes = [PrizeChange.from_fields(fields) for entries in await self.call(read) for _, fields in entries]
        return sorted(changes, key=lambda c: c.seq)

    async def read_page(self, after: tuple[int, str] | None, limit: int) -> Counters:
        # Whole tasks from the task index, from after's task on, a slice at a time until `limit` counters: a
        # task has one counter or more, so limit tasks past after's are always enough.
        low: int | str = after[0] if after is not None else "-inf"
        ids: Any = await self.call(lambda r: r.zrangebyscore("gd:tasks", low, "+inf", start=0, num=limit + 1))
        rows: list[CounterRow] = []
        step = max(1, limit // 3)  # most tasks have a few prizes: one slice is usually the whole page
        for start in range(0, len(ids), step):
            rows += [row for row in await self.task_counters(int(t) for t in ids[start : start + step])
                     if after is None or row[:2] > after]
            if len(rows) >= limit:
                break
        return Counters.from_rows(rows[:limit])

    async def set_enabled(self, task_id: int, enabled: bool) -> float | None:
        async def switch(r: Client) -> Any:
            won_at = await self._run_script(r, "set_flag", [task_key(task_id)], ["0" if enabled else "1"])
            # The list the collector reads of every flag (the task hash holds the switch the claims obey).
            await (r.hdel("gd:flags", str(task_id)) if enabled else r.hset("gd:flags", str(task_id), "0"))
            return won_at

        won_at = await self.call(switch)
        return None if won_at is None else float(won_at)

    async def reconcile(self, repair: bool) -> list[Difference]:
        return await reconcile_redis(self, repair)

    async def set_issued(self, counts: Sequence[Difference]) -> None:
        """Set each counter's issued count to its won claims (the repair of reconcile and of a failover)."""

        async def write(r: Client) -> None:
            pipe = r.pipeline(transaction=False)
            for d in counts:
                pipe.hset(task_key(d.task_id), f"i:{d.prize_type}", d.won_claims)
                pipe.zadd(bucket_key(d.task_id % REDIS_BUCKETS, "changed"), {str(d.task_id): int(time.time() * 1000)})
            await pipe.execute()

        await self.call(write)

    async def problems(self) -> list[str]:
        """Return how each node falls short of REQUIRED_CONFIG, and replicas that could fail over on their own."""

        async def check(r: Client) -> list[str]:
            nodes = [(n.name, n.server_type, n) for n in r.get_nodes()] if isinstance(r, RedisCluster) else [
                (self.settings.redacted, "primary", None)]
            found = []
            for name, role, node in nodes:
                config = await (r.config_get("*", target_nodes=node) if node is not None else r.config_get("*"))
                found += [f"{name}: {key} is {config.get(key)!r}, needs {want!r}"
                          for key, want in REQUIRED_CONFIG.items() if config.get(key) != want]
                if role == "replica" and config.get("cluster-replica-no-failover") != "yes":
                    found.append(f"{name}: a replica that fails over on its own can lose acknowledged wins; "
                                 "set cluster-replica-no-failover yes")
            return found

        return await self.call(check)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _outcome(claim_id: str, raw: str) -> Outcome:
    """Return a claim's outcome from "<outcome>\t<prize_type>[\t<the claim it belongs to>]"."""
    outcome, prize = raw.split("\t", 2)[:2]
    return Outcome.of(claim_id, outcome, prize or None)


async def _stream_wins(ledger: RedisLedger) -> list[dict[str, str]]:
    """Return the won records the streams hold (shipped and not yet trimmed, or not shipped)."""
    records: list[dict[str, str]] = []

    async def read(r: Client) -> None:
        for b in range(REDIS_BUCKETS):
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
