"""A Redis ledger held against its record, on one node and on a 3-master cluster: a claim remembered past its
binding, buckets that lost their state, the flow log's ceiling, a consumer group that is gone.

Every check reads the ledger's store or the record database past the ledger classes (tests/support/ledgers.py),
and what the claimers were told."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from geo_service.dsn import REDIS_BUCKETS, MySQLSettings
from geo_service.ledger import ClaimIdTaken, ClaimRequest, Ledger, LedgerError, LedgerRefusal, Outcome, open_ledger
from geo_service.ledger.records import RecordStore
from geo_service.ledger.redis import RedisLedger
from geo_service.ledger.redis_layout import bind_key, bucket_key, epoch_key, id_bucket, outcome_key, task_key
from geo_service.ledger.ship import GROUP, Shipper
from tests.conftest import fresh_ledger
from tests.support.builders import claim_poi
from tests.support.claiming import TASKS
from tests.support.ledgers import counters, execute, flow_records, redis_client, ship_all, sql_rows, won_claims
from tests.support.redis_nodes import RedisDeployment

SEEDS = [(t, "cash", 3, -1) for t in TASKS]  # TASKS' buckets lie on three different nodes of the cluster


@pytest.fixture(params=["redis", "redis+cluster"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, RedisDeployment]]:
    """(ledger DSN, record database, the Redis deployment): a flushed Redis holding the test epoch, and an empty
    claims table that knows no epoch yet."""
    dsn = fresh_ledger(request.param, request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path)
    yield dsn, record_db, request.getfixturevalue("redis_cluster" if request.param == "redis+cluster" else "redis_single")


def claim(claim_id: str, player: str = "alice", task: int = 1, i: int = 0) -> ClaimRequest:
    """A claim at POI i of a task, where that POI is (the ledger checks movement between a player's claims)."""
    poi, lat, lng = claim_poi(task, i)
    return ClaimRequest(claim_id, player, task, poi, lat, lng, time.time())


async def settle(ledger: Ledger, request: ClaimRequest, win_cap: int = 5) -> Outcome:
    return await ledger.claim(request, ["cash"], win_cap, 1000.0)


def issued(dsn: str) -> dict[int, int]:
    return {t: i for (t, _), (_, i) in counters(dsn).items()}


async def test_a_retry_after_its_binding_expired_gets_its_first_outcome_from_the_record(
        world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, _ = world
    short = f"{dsn}?record_ttl_s=1"  # the shipper gives shipped bindings one second
    ledger = open_ledger(short, record_db)
    assert isinstance(ledger, RedisLedger)
    try:
        await ledger.seed(SEEDS)
        first = await settle(ledger, claim("kept"))
        assert first.outcome == "won"
        await ship_all(short, record_db)
        client = redis_client(dsn)
        try:
            for _ in range(100):  # bounded: the binding expires a second after shipping
                if client.get(bind_key("kept")) is None:
                    break
                await asyncio.sleep(0.05)
            assert client.get(bind_key("kept")) is None
            assert client.ttl(outcome_key(1, "kept")) > 3000  # the outcome outlives its binding by a margin
            client.delete(outcome_key(1, "kept"))  # as if that had run out too
        finally:
            client.close()
        # Quota 3 and a win cap of 5: settled afresh, the retry would win again.
        assert await settle(ledger, claim("kept")) == first
        assert await ledger.outcome_of(claim("kept")) == first
        with pytest.raises(ClaimIdTaken):
            await settle(ledger, claim("kept", player="bob"))
        with pytest.raises(ClaimIdTaken):
            await settle(ledger, claim("kept", task=2))
        assert issued(dsn)[1] == 1 and issued(dsn)[2] == 0
        assert flow_records(dsn) == []  # shipped and trimmed; nothing settled since
        assert won_claims(dsn, record_db) == [("kept", 1, "cash")]
    finally:
        await ledger.close()


async def test_ids_a_full_filter_may_have_seen_are_looked_up_and_then_settled_once(
        world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, _ = world
    tiny = f"{dsn}?claim_filter_bits=64"  # a filter this small is all ones after a few ids: every new id is "seen"
    ids = [c for c in (f"id-{i}" for i in range(20_000)) if id_bucket(c) == 0][:40]  # all in one filter
    ledger = open_ledger(tiny, record_db)
    assert isinstance(ledger, RedisLedger)
    try:
        await ledger.seed([(1, "cash", 1000, -1)])
        outcomes = [await settle(ledger, claim(c, player=f"p{i}")) for i, c in enumerate(ids)]
        client = redis_client(dsn)
        try:
            assert client.bitcount(bucket_key(0, "seen")) == 64  # saturated: the later ids were all looked up
        finally:
            client.close()
        again = [await settle(ledger, claim(c, player=f"p{i}")) for i, c in enumerate(ids)]
        assert outcomes == again and {o.outcome for o in outcomes} == {"won"}
        await ship_all(tiny, record_db)
        assert issued(dsn)[1] == 40
        assert sorted(c for c, _, _ in won_claims(dsn, record_db)) == sorted(ids)
    finally:
        await ledger.close()


@contextlib.asynccontextmanager
async def shipping(dsn: str, record_db: str) -> AsyncIterator[tuple[RedisLedger, Shipper]]:
    """A Redis ledger and a shipper of its flow log into the record database, closed at the end."""
    ledger = open_ledger(dsn, record_db)
    assert isinstance(ledger, RedisLedger)
    shipper = Shipper(ledger, RecordStore(MySQLSettings.from_dsn(record_db)))
    try:
        yield ledger, shipper
    finally:
        await shipper.store.close()
        await ledger.close()


def lose(deployment: RedisDeployment, key: str, restart: bool) -> None:
    """Empty the node serving a key: FLUSHALL, or (restart) a SIGKILL and a start without its AOF."""
    node = deployment.node_of(key)
    if restart:
        node.kill()
        for aof in node.folder.glob("appendonly*"):
            if aof.is_dir():
                for part in aof.iterdir():
                    part.unlink()
                aof.rmdir()
            else:
                aof.unlink()
        node.start()
        deployment.wait_healthy()
    else:
        client = redis_client(f"redis://127.0.0.1:{node.port}/0")
        try:
            client.flushall()
        finally:
            client.close()


@pytest.mark.parametrize("restart", [False, True], ids=["flushed", "restarted_without_aof"])
async def test_a_node_that_lost_its_state_issues_no_second_quota_until_repaired_from_the_record(
        world: tuple[str, str, RedisDeployment], restart: bool) -> None:
    dsn, record_db, deployment = world
    ledger = open_ledger(dsn, record_db)
    assert isinstance(ledger, RedisLedger)
    try:
        await ledger.seed(SEEDS)
        told = {(t, i): await settle(ledger, claim(f"before-{t}-{i}", player=f"p{i}", task=t, i=i), win_cap=1)
                for t in TASKS for i in range(2)}
        assert {o.outcome for o in told.values()} == {"won"}
        await ship_all(dsn, record_db)
    finally:
        await ledger.close()
    lose(deployment, task_key(1), restart)
    lost = {t for t in TASKS if deployment.node_of(task_key(t)).port == deployment.node_of(task_key(1)).port}

    # A service started now seeds the snapshot's counters, as every load does: in a lost bucket they take no claims.
    restarted = open_ledger(dsn, record_db)
    assert isinstance(restarted, RedisLedger)
    try:
        await restarted.seed(SEEDS)
        for t in TASKS:
            new = claim(f"after-{t}", player="newcomer", task=t)
            if t in lost:
                with pytest.raises(LedgerRefusal, match="lost"):
                    await settle(restarted, new)
            else:
                assert (await settle(restarted, new)).outcome == "won"
        assert {t: issued(dsn)[t] for t in lost} == {t: 0 for t in lost}  # seeded, never issued again

        diffs = await restarted.reconcile(True, SEEDS)
        assert {(d.task_id, d.issued, d.won_claims) for d in diffs if d.task_id in lost} == {(t, 0, 2) for t in lost}
        await ship_all(dsn, record_db)
        assert issued(dsn) == {t: 2 if t in lost else 3 for t in TASKS}
        assert (await restarted.reconcile(False)) == []
        for t in lost:
            # Claims from before the loss answer as they did, from the record (on a cluster, one's binding may be on
            # a node that kept it, with its outcome gone); their players' win cap holds.
            for i in range(2):
                retry = claim(f"before-{t}-{i}", player=f"p{i}", task=t, i=i)
                assert await settle(restarted, retry, win_cap=1) == told[(t, i)]
            assert (await settle(restarted, claim(f"cap-{t}", player="p1", task=t, i=1), win_cap=1)).outcome == "cap_reached"
            outcomes = [await settle(restarted, claim(f"last-{t}-{i}", player=f"q{i}", task=t, i=i)) for i in range(3)]
            assert [o.outcome for o in outcomes] == ["won", "no_prize_left", "no_prize_left"]  # quota 3, 2 issued
        await ship_all(dsn, record_db)
        assert issued(dsn) == {t: 3 for t in TASKS}
        assert sorted(won_claims(dsn, record_db)) == sorted(
            [(f"before-{t}-{i}", t, "cash") for t in TASKS for i in range(2)]
            + [(f"after-{t}", t, "cash") for t in TASKS if t not in lost]
            + [(f"last-{t}-0", t, "cash") for t in lost])
    finally:
        await restarted.close()


async def test_a_redis_without_an_epoch_is_given_one_only_when_the_record_knows_none(
        world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, deployment = world
    deployment.flush(epoch=None)
    bare = open_ledger(dsn)  # no record database: nothing can tell a new ledger from a lost one
    try:
        await bare.seed(SEEDS)
        with pytest.raises(LedgerRefusal, match="lost"):
            await bare.claim(claim("x"), ["cash"], 5, 1000.0)
    finally:
        await bare.close()
    fresh = open_ledger(dsn, record_db)  # the record knows no epoch: a new ledger, given one
    try:
        assert (await fresh.claim(claim("y"), ["cash"], 5, 1000.0)).outcome == "won"
    finally:
        await fresh.close()
    recorded = sql_rows(record_db, "SELECT epoch FROM ledger_epoch")
    client = redis_client(dsn)
    try:
        assert {client.get(epoch_key(b)) for b in range(REDIS_BUCKETS)} == {recorded[0][0]}
    finally:
        client.close()
    deployment.flush(epoch=None)  # emptied now: the record knows the epoch, so this is a loss, not a new ledger
    again = open_ledger(dsn, record_db)
    try:
        with pytest.raises(LedgerError, match="lost"):
            await again.init()
        with pytest.raises(LedgerRefusal, match="lost"):
            await again.claim(claim("z"), ["cash"], 5, 1000.0)
    finally:
        await again.close()


async def test_claims_stop_at_the_flow_logs_ceiling_and_go_on_once_it_is_shipped(
        world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, _ = world
    capped = f"{dsn}?flow_backlog_max={2 * REDIS_BUCKETS}"  # two records a stream
    ledger = open_ledger(capped, record_db)
    try:
        await ledger.seed([(1, "cash", 100, -1)])
        first = [await settle(ledger, claim(f"f{i}", player=f"p{i}")) for i in range(2)]
        assert await ledger.backlog() == (2, 1000)
        with pytest.raises(LedgerRefusal, match="flow log"):
            await settle(ledger, claim("f2", player="p2"))
        assert await settle(ledger, claim("f0", player="p0")) == first[0]  # a retry is answered at the ceiling
        await ship_all(capped, record_db)
        assert (await settle(ledger, claim("f2", player="p2"))).outcome == "won"
        assert issued(dsn)[1] == 3
    finally:
        await ledger.close()


async def test_a_shipper_makes_a_lost_consumer_group_again_and_ships_what_the_stream_holds(
        world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, _ = world
    async with shipping(dsn, record_db) as (ledger, shipper):
        await ledger.seed([(1, "cash", 100, -1)])
        await settle(ledger, claim("g0", player="p0"))
        assert await shipper.ship_once() == 1
        await settle(ledger, claim("g1", player="p1"))
        client = redis_client(dsn)
        try:
            assert client.xgroup_destroy(bucket_key(1, "flow"), GROUP) == 1
        finally:
            client.close()
        for _ in range(10):  # bounded: a round or two
            await shipper.ship_once()
        assert shipper.health.groups_recreated == 1 and "bucket 1" in (shipper.health.last_gap or "")
        assert sorted(c for c, _, _ in won_claims(dsn, record_db)) == ["g0", "g1"]
        assert shipper.health.backlog == 0


async def test_claim_ids_that_differ_only_in_case_are_two_records_in_the_record_database(
        world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, _ = world
    ledger = open_ledger(dsn, record_db)
    try:
        await ledger.seed([(1, "cash", 10, -1)])
        assert [(await settle(ledger, claim(c))).outcome for c in ("Twin", "twin")] == ["won", "won"]
    finally:
        await ledger.close()
    await ship_all(dsn, record_db)
    assert sorted(won_claims(dsn, record_db)) == [("Twin", 1, "cash"), ("twin", 1, "cash")]
    assert issued(dsn)[1] == 2


async def test_a_claim_shipped_after_its_bindings_node_was_restored_is_still_remembered(
        redis_cluster: RedisDeployment, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dsn = fresh_ledger("redis+cluster", request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path)
    task_node = redis_cluster.node_of(task_key(1)).port
    # An id whose binding and filter live on another node than task 1's counters and outcome.
    claim_id = next(c for c in (f"far-{i}" for i in range(1000)) if redis_cluster.node_of(bind_key(c)).port != task_node)
    ledger = open_ledger(dsn, record_db)
    try:
        await ledger.seed(SEEDS)
        first = await settle(ledger, claim(claim_id))
        lose(redis_cluster, bind_key(claim_id), restart=False)  # before its record was shipped
        await ledger.reconcile(True, SEEDS)  # restores the id's node from a record that does not hold it yet
        await ship_all(dsn, record_db)  # now it does, and the filter learns the id again
        client = redis_client(dsn)
        try:
            assert client.delete(outcome_key(1, claim_id)) == 1  # as if its outcome had run out
        finally:
            client.close()
        assert await settle(ledger, claim(claim_id)) == first
        with pytest.raises(ClaimIdTaken):
            await settle(ledger, claim(claim_id, player="bob", task=2))
        assert issued(dsn)[1] == 1
    finally:
        await ledger.close()


async def test_a_record_with_claims_and_no_epoch_is_restored_not_started_afresh(
        world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, deployment = world
    ledger = open_ledger(dsn, record_db)
    try:
        await ledger.seed(SEEDS)
        told = [await settle(ledger, claim(f"old-{i}", player=f"p{i}")) for i in range(2)]
    finally:
        await ledger.close()
    await ship_all(dsn, record_db)
    # An upgrade from a release without epochs: claims in the record, none in ledger_epoch, and an emptied Redis.
    execute(record_db, "DELETE FROM ledger_epoch")
    deployment.flush(epoch=None)
    upgraded = open_ledger(dsn, record_db)
    try:
        await upgraded.seed(SEEDS)
        with pytest.raises(LedgerRefusal, match="lost"):
            await settle(upgraded, claim("new-0", player="q0"))
        with pytest.raises(LedgerError):
            await upgraded.init()
        await upgraded.reconcile(True, SEEDS)
        assert issued(dsn)[1] == 2
        assert [await settle(upgraded, claim(f"old-{i}", player=f"p{i}")) for i in range(2)] == told
        assert (await settle(upgraded, claim("new-0", player="q0"))).outcome == "won"
        assert issued(dsn)[1] == 3
    finally:
        await upgraded.close()


async def test_a_stream_gone_back_behind_what_was_shipped_fences_its_bucket_until_restored(
        world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, _ = world
    async with shipping(dsn, record_db) as (ledger, shipper):
        await ledger.seed(SEEDS)
        told = await settle(ledger, claim("kept", player="p0"))
        await ship_all(dsn, record_db)
        client = redis_client(dsn)
        try:  # the node of task 1's bucket as an older copy of it would be: shipping's group behind what was shipped,
            client.xgroup_setid(bucket_key(1, "flow"), GROUP, "1-1")
            client.hset(task_key(1), "i:cash", 0)  # and its counter behind the win
        finally:
            client.close()
        # A claim lands on the old copy before the shipper looks: its newer stream entry does not hide the fall back.
        assert (await settle(ledger, claim("since", player="p2"))).outcome == "won"
        await shipper.ship_once()
        assert shipper.health.buckets_fenced == 1 and "bucket 1" in (shipper.health.last_fence or "")
        with pytest.raises(LedgerRefusal, match="lost"):
            await settle(ledger, claim("next", player="p1"))
        await ledger.reconcile(True, SEEDS)  # restored from the record ...
        await ship_all(dsn, record_db)
        await shipper.ship_once()
        assert shipper.health.buckets_fenced == 1  # ... past its mark: not fenced again
        await ledger.reconcile(True, SEEDS)  # ... and the claim settled on the old copy counted once shipped
        assert issued(dsn)[1] == 2 == len(won_claims(dsn, record_db))
        assert await settle(ledger, claim("kept", player="p0")) == told
        assert (await settle(ledger, claim("next", player="p1"))).outcome == "won"


async def test_a_kill_switch_outlives_the_node_that_held_it(world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, deployment = world
    ledger = open_ledger(dsn, record_db)
    try:
        await ledger.seed(SEEDS)
        await ledger.set_enabled(1, False)
        lose(deployment, task_key(1), restart=False)
        await ledger.seed(SEEDS)
        await ledger.reconcile(True, SEEDS)
        assert (await settle(ledger, claim("off"))).outcome == "task_inactive"
        assert 1 in (await ledger.read_state(0)).disabled
    finally:
        await ledger.close()


async def test_a_ledger_opened_with_another_filter_size_is_refused(world: tuple[str, str, RedisDeployment]) -> None:
    dsn, record_db, _ = world
    first = open_ledger(dsn, record_db)
    try:
        await first.seed(SEEDS)
    finally:
        await first.close()
    other = open_ledger(f"{dsn}?claim_filter_bits=1024", record_db)
    try:
        with pytest.raises(LedgerError, match="claim_filter_bits"):
            await other.seed(SEEDS)
    finally:
        await other.close()
