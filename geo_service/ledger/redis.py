"""The Redis ledger: one server-side script settles a claim, on one node or a Redis Cluster.

The key layout and the scripts' arguments are in redis_layout.py: every key a claim touches shares its
task's bucket hash tag, so one claim is one slot.

This module may touch Redis, and the record database to reconcile against it; ship.py moves the flow log
into the record database.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from geo_service.dsn import REDIS_BUCKETS, MySQLSettings, RedisSettings
from geo_service.ledger import redis_reads
from geo_service.ledger.interface import (
    ClaimIdTaken,
    ClaimRequest,
    CounterRow,
    Counters,
    Difference,
    LedgerError,
    LedgerRefusal,
    LedgerState,
    Outcome,
    PrizeChange,
    PrizeChangeRefused,
    Seed,
    deliver_cancellation,
    raised_in,
)
from geo_service.ledger.records import RecordStore
from geo_service.ledger.redis_layout import (
    ASK_RECORD,
    BIND_ARGS,
    CLAIM_ARGS,
    CLAIM_ID_TAKEN,
    FLOW_FULL,
    HOLD_EXPIRED,
    MOVE_ARGS,
    STATE_LOST,
    bind_key,
    bucket_key,
    bucket_tag,
    claim_of,
    epoch_key,
    id_bucket,
    outcome_key,
    owner_of,
    player_key,
    script,
    task_key,
    wins_key,
)
from geo_service.ledger.redis_players import Caps, Place, confirm, hold_place, wins_of
from geo_service.ledger.redis_state import Client, check_epoch, check_layout, config_problems, flow_lengths

log = logging.getLogger("geodrop.ledger")
SCRIPTS = ("claim", "movement", "bind", "seen", "remember", "set_prize", "set_flag", "read_tasks", "counters_at",
           "fence", "expire", "reserve", "confirm")
POSITION_TTL_S = 86_400  # a player unseen for a day starts afresh (as after a long trip)
READ_CALLS_IN_FLIGHT = 16  # per read of many tasks: well inside the connection pool, enough to keep nodes busy
T = TypeVar("T")


class RedisLedger:
    """Claims in one script call each on one node; on a cluster, the claim id's binding and the movement check
    (under the id's and the player's own tags) are two more calls, made together before it."""

    def __init__(self, settings: RedisSettings, record_db: str = "") -> None:
        self.settings = settings
        self.record_db = record_db
        self.kind = "redis+cluster" if settings.cluster else "redis"
        self._client: Client | None = None
        self._store: RecordStore | None = None
        self._connecting = asyncio.Lock()
        self._flow_max = math.ceil(settings.flow_backlog_max / REDIS_BUCKETS)  # records a bucket's stream may hold
        self._scripts: dict[str, AsyncScript] = {}
        # A cluster claim's call holds two connections at once (its bind and movement calls, made together).
        self._limit = asyncio.Semaphore(max(1, settings.max_connections // 2))

    async def client(self) -> Client:
        """Return the connected client, checking once that the server holds this key layout (or none) and the
        ledger's epoch (check_epoch)."""
        if self._client is not None:
            return self._client
        async with self._connecting:  # the first calls of a worker arrive together: one connects, once
            return await self._connect()

    async def _connect(self) -> Client:
        if self._client is None:
            s = self.settings
            options: dict[str, Any] = {"password": s.password or None, "decode_responses": True,
                                       "socket_timeout": s.timeout_s, "socket_connect_timeout": s.timeout_s,
                                       "max_connections": s.max_connections}
            client: Client = (RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in s.nodes], **options) if s.cluster
                              else aioredis.Redis(host=s.nodes[0][0], port=s.nodes[0][1], db=s.db, **options))
            try:
                await check_layout(client, s.redacted, s.claim_filter_bits)
                await check_epoch(client, self.settings.redacted, self.store() if self.record_db else None,
                                  create=bool(self.record_db))
            except BaseException:
                await client.aclose()
                raise
            self._scripts = {name: client.register_script(script(name)) for name in SCRIPTS}
            self._client = client
        return self._client

    def store(self) -> RecordStore:
        """Return the record database (record_db) the flow log is shipped into; raise LedgerRefusal without one."""
        if self._store is None:
            if not self.record_db:
                raise LedgerRefusal("this needs the record database, and the ledger has none (set record_db)")
            self._store = RecordStore(MySQLSettings.from_dsn(self.record_db))
        return self._store

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
        """Create the fields a counter lacks (HSETNX: a counter that exists keeps its counts, quota and rate). A
        bucket that lost its state gets its counters too, but takes no claims until a repair sets their issued
        counts from the record."""
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

    async def claim(self, request: ClaimRequest, draw: Sequence[str], win_cap: int, max_speed_mps: float,
                    player_cap: int = 0) -> Outcome:
        # One node counts every win in the claim's own call, cap or none (one can be set mid-event); a cluster
        # counts them while a cap is set (README: the event's limit per player).
        r, cluster = request, self.kind == "redis+cluster"
        for _ in range(2):  # a hold that ran out before its claim reached the task's node is taken afresh, once
            place = (await hold_place(self, r, player_cap) if player_cap else Place("none")) if cluster else Place("here")
            try:
                outcome = await self._claim(r, draw, Caps(win_cap, player_cap, place.arg), max_speed_mps)
            except (ClaimIdTaken, LedgerRefusal):
                if place.new_hold:  # nothing written: the place goes back, unless a retry of this claim took it on
                    await confirm(self, r.user_id, r.claim_id, "", place.new_hold)
                raise
            if outcome is not None:
                break
        else:
            raise LedgerError("the claim's hold on the player's win cap ran out before its task's node settled it")
        if place.arg.isdigit():  # held: the hold becomes the win, or the place is given back
            win = f"{r.task_id}\t{outcome.prize_type}" if outcome.outcome == "won" else ""
            held = await confirm(self, r.user_id, r.claim_id, win)
            return replace(outcome, wins_left=max(player_cap - held, 0))
        if place.arg == "capped":
            refused = outcome.outcome == "player_cap_reached"
            return replace(outcome, wins_left=0, wins=place.wins if refused else None)
        return outcome

    async def _claim(self, r: ClaimRequest, draw: Sequence[str], caps: Caps, max_speed_mps: float) -> Outcome | None:
        """Settle a claim (None: its hold on the player's cap ran out first; nothing was written)."""
        answer = await self.call(lambda c: self._settle(c, r, draw, caps, max_speed_mps, checked=False))
        if answer == ASK_RECORD:
            # The id may have been used before and its binding is gone: its record, if any, is the answer. A ledger
            # without a record database remembers ids only as long as Redis keeps them: it settles.
            recorded = await self._recorded(r) if self.record_db else None
            if recorded is not None:
                return recorded
            answer = await self.call(lambda c: self._settle(c, r, draw, caps, max_speed_mps, checked=True))
        if answer == CLAIM_ID_TAKEN:
            raise ClaimIdTaken(r.claim_id)
        if answer == STATE_LOST:
            raise LedgerRefusal("the ledger's state of this claim's bucket was lost (its Redis node was emptied); its "
                                "claims wait for `geo-service ledger reconcile --repair`")
        if answer == FLOW_FULL:
            raise LedgerRefusal("the flow log of this task's bucket is full: nothing is shipping it into the record "
                                "database (is the collector running with record_db?)")
        return None if answer == HOLD_EXPIRED else _outcome(r.claim_id, answer)

    async def _settle(self, client: Client, r: ClaimRequest, draw: Sequence[str], caps: Caps, max_speed_mps: float,
                      checked: bool) -> str:
        """Run the claim script (and on a cluster the bind and movement calls before it); return its answer."""
        tag, s = bucket_tag(r.task_id), self.settings
        keys = [task_key(r.task_id), wins_key(r.task_id), outcome_key(r.task_id, r.claim_id), f"gd:{tag}:flow",
                f"gd:{tag}:changed", epoch_key(r.task_id % REDIS_BUCKETS)]
        values = {"claim_id": r.claim_id, "claim_of": claim_of(r), "user_id": r.user_id, "task_id": r.task_id, "poi_id": r.poi_id,
                  "win_cap": caps.task, "checked": "1" if checked else "0", "filter_bits": s.claim_filter_bits,
                  "flow_max": self._flow_max, "player_cap": caps.player, "player": caps.place, "lat": r.lat, "lng": r.lng,
                  "at_s": r.at_s, "max_speed_mps": max_speed_mps, "position_ttl_s": POSITION_TTL_S}
        player, ids = f"gd:{{u:{r.user_id}}}:pos", id_bucket(r.claim_id)
        if isinstance(client, RedisCluster):
            # The claim id's binding and the player's position live on other nodes than the task's keys: on a
            # cluster each is a call of its own, made together, before the claim's.
            state, values["plausible"] = await asyncio.gather(
                self.run_script(client, "bind", [bind_key(r.claim_id), bucket_key(ids, "seen"), epoch_key(ids)],
                                 [values[arg] for arg in BIND_ARGS]),
                self.run_script(client, "movement", [player], [values[arg] for arg in MOVE_ARGS]))
            if state not in ("new", "bound", ASK_RECORD):
                return str(state)
            values["bound"] = "ask" if state == ASK_RECORD else str(state)  # the outcome, if still here, answers first
        else:
            values["plausible"] = values["bound"] = state = "?"  # one node holds every key: the claim's call checks both
            keys += [player, bind_key(r.claim_id), bucket_key(ids, "seen"), player_key(r.user_id)]
        answer = str(await self.run_script(client, "claim", keys, [*(values[arg] for arg in CLAIM_ARGS), *draw]))
        if state == "new" and answer in (STATE_LOST, FLOW_FULL):
            # Bound a moment ago for a claim the task's bucket refused: the binding stays (the id is this player's,
            # and taking it back could take a retry's that settled), for record_ttl_s: a player who gives up
            # leaves nothing behind for good, and the filter still knows the id.
            await client.expire(bind_key(r.claim_id), s.record_ttl_s)
        return answer

    async def _recorded(self, r: ClaimRequest) -> Outcome | None:
        """Return the claim's outcome from the record database (None: it holds no such claim); raise ClaimIdTaken
        if the id is another claim's there."""
        record = await self.store().find(r.claim_id)
        if record is None:
            return None
        if (record.user_id, record.task_id, record.poi_id) != (r.user_id, r.task_id, r.poi_id):
            raise ClaimIdTaken(r.claim_id)
        return Outcome(r.claim_id, record.outcome, record.prize_type, record.reason)

    async def run_script(self, client: Client, name: str, keys: list[str], args: Sequence[Any]) -> Any:
        """Run a script on the node serving its keys. On a cluster the call goes straight to the node that the
        client's slot table names: the client's general routing costs a claim's worker a tenth of its CPU
        (py-spy). A moved slot, a lost node or a script not loaded there fails that call, and the general path,
        which sorts each of them out, runs it; the claim scripts are safe to run twice (a settled claim_id answers
        its first outcome, a bound one finds its own binding; a position set twice is the same position)."""
        script = self._scripts[name]
        if isinstance(client, RedisCluster):
            node = client.nodes_manager.get_node_from_slot(key_slot(keys[0].encode()))
            try:
                return await node.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except RedisError:
                pass
        return await script(keys=keys, args=args)

    def sha(self, name: str) -> str:
        """Return a loaded script's SHA-1, for a pipeline of calls (a node without it answers NOSCRIPT)."""
        return str(self._scripts[name].sha)

    async def outcome_of(self, request: ClaimRequest) -> Outcome | None:
        r = request
        holder: Any
        raw: Any
        holder, raw = await asyncio.gather(  # two keys of two slots: two calls, made together
            self.call(lambda c: c.get(bind_key(r.claim_id))),
            self.call(lambda c: c.get(outcome_key(r.task_id, r.claim_id))))
        if (holder is not None and holder != claim_of(r)) or (raw is not None and owner_of(raw) != claim_of(r)):
            raise ClaimIdTaken(r.claim_id)
        if raw is not None:
            return _outcome(r.claim_id, raw)
        if not self.record_db:
            return None
        # Bound with its outcome gone (a restored node), or unbound and maybe seen by the filter: the record tells.
        if holder is None:
            ids = id_bucket(r.claim_id)
            if not await self.call(lambda c: self.run_script(c, "seen", [bucket_key(ids, "seen")],
                                                             [self.settings.claim_filter_bits, r.claim_id])):
                return None
        return await self._recorded(r)

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
                answers += await asyncio.gather(*(self.run_script(r, "read_tasks", [task_key(t) for t in group], [])
                                                  for group in groups[start : start + READ_CALLS_IN_FLIGHT]))
            return answers

        rows = [(task_id, flat[j], int(flat[j + 1]) - int(flat[j + 2]), int(flat[j + 1]), int(flat[j + 3]))
                for group, found in zip(groups, await self.call(read)) for task_id, flat in zip(group, found)
                for j in range(0, len(flat), 4)]
        return sorted(rows)

    async def read_state(self, since: float) -> LedgerState:
        return await redis_reads.read_state(self, since)

    async def read_changes(self, since: float) -> list[PrizeChange]:
        return await redis_reads.read_changes(self, since)

    async def read_page(self, after: tuple[int, str] | None, limit: int) -> Counters:
        return await redis_reads.read_page(self, after, limit)

    async def set_enabled(self, task_id: int, enabled: bool) -> float | None:
        async def switch(r: Client) -> Any:
            won_at = await self.run_script(r, "set_flag", [task_key(task_id)], ["0" if enabled else "1"])
            # The list the collector reads of every flag (the task hash holds the switch the claims obey).
            await (r.hdel("gd:flags", str(task_id)) if enabled else r.hset("gd:flags", str(task_id), "0"))
            return won_at

        won_at = await self.call(switch)
        if self.record_db:  # kept in the record too, so a bucket restored after a loss keeps its switch
            try:
                await self.store().set_flag(task_id, enabled)
            except LedgerError as exc:
                raise LedgerError(f"the switch holds in Redis, but the record database did not take it (a restore "
                                  f"of the task's node would not know it): {exc}; set it again") from exc
        return None if won_at is None else float(won_at)

    async def reconcile(self, repair: bool, seeds: Sequence[Seed] = (), lower: bool = False) -> list[Difference]:
        from geo_service.ledger.redis_repair import reconcile_redis  # the operators' path, not the claims'

        return await reconcile_redis(self, repair, seeds, lower)

    async def backlog(self) -> tuple[int, int]:
        lengths = await self.call(flow_lengths)
        return sum(lengths), 1000 * max(lengths) // self._flow_max

    async def init(self) -> None:
        store = self.store() if self.record_db else None
        lost = await self.call(lambda r: check_epoch(r, self.settings.redacted, store, create=True))
        if lost:
            raise LedgerError(f"{len(lost)} bucket(s) hold no epoch while others do, or the record database knows this "
                              "ledger: its state was lost; `geo-service ledger reconcile --repair` restores it")

    async def problems(self) -> list[str]:
        return await self.call(lambda r: config_problems(r, self.settings.redacted))

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()


def _outcome(claim_id: str, raw: str) -> Outcome:
    """Return a claim's outcome from "<outcome>\t<prize_type>\t<the claim it belongs to>", followed on one node with
    an event cap by "\n<wins left>" and, on player_cap_reached, "\n<claim_id>\t<task>\t<prize>" per win."""
    stored, *extra = raw.split("\n")
    outcome, prize = stored.split("\t", 2)[:2]
    # A retried refusal is answered from its stored outcome, with no wins listed: not known then, not none.
    wins = wins_of([part for line in extra[1:] for part in line.split("\t", 1)]) if outcome == "player_cap_reached" else None
    return replace(Outcome.of(claim_id, outcome, prize or None, int(extra[0]) if extra else None), wins=wins)
