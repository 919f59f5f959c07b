"""The Redis ledger's own promises: the flow log shipped exactly once, its requirements checked, and no
acknowledged win lost when the shipper or the Redis node holding the hot task is SIGKILLed mid-load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geo_service.dsn import REDIS_BUCKETS, MySQLSettings
from geo_service.ledger import ClaimRequest, LedgerCheck, LedgerError, open_ledger
from geo_service.ledger.records import ClaimRecord, RecordStore
from geo_service.ledger.redis import RedisLedger
from geo_service.ledger.redis_layout import bucket_key, task_key
from geo_service.ledger.ship import CONSUMER, GROUP, Shipper
from geo_service.tokens import mint
from tests.conftest import MakeClient, build_into, fresh_ledger
from tests.support.builders import claim_poi, write_claims_data
from tests.support.claiming import (
    SECRET,
    TASKS,
    Ack,
    Served,
    assert_exact,
    claim_load,
    ledger_world,
    reconcile,
    settle,
    until_acked,
)
from tests.support.ledgers import flow_records, redis_client, sql_rows
from tests.support.processes import Process, collector, service
from tests.support.redis_nodes import RedisDeployment


async def _claims(ledger: RedisLedger, count: int) -> None:
    await ledger.seed([(t, "cash", 10_000, -1) for t in range(1, 9)])
    for i in range(count):
        task = 1 + i % 8  # spread over eight buckets' streams
        await ledger.claim(ClaimRequest(f"c{i}", f"u{i}", task, task * 1000, 22.5, 113.9, time.time()), ["cash"], 5, 30.0)


async def test_records_read_but_never_acknowledged_are_shipped_once_by_the_next_shipper(
        redis_single: RedisDeployment, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dsn = fresh_ledger("redis", request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path)
    ledger = open_ledger(dsn, record_db)
    assert isinstance(ledger, RedisLedger)
    store = RecordStore(MySQLSettings.from_dsn(record_db))
    try:
        await _claims(ledger, 200)
        first = Shipper(ledger, store)
        await first.ship_once()  # ships and trims what there is
        for i in range(200, 260):
            await ledger.claim(ClaimRequest(f"c{i}", f"u{i}", 1 + i % 8, (1 + i % 8) * 1000, 22.5, 113.9, time.time()),
                               ["cash"], 5, 30.0)
        # A shipper that read the new records and committed half of them to MySQL, then died before XACK.
        client = redis_client(dsn)
        answers: list[Any] = [client.xreadgroup(GROUP, CONSUMER, {bucket_key(b, "flow"): ">"}) for b in range(REDIS_BUCKETS)]
        client.close()
        read = [fields for answer in answers for _, entries in (answer or []) for _, fields in entries]
        assert len(read) == 60
        await store.insert([ClaimRecord.from_flow(fields) for fields in read[:30]])
        shipped = 0
        second = Shipper(ledger, store)
        for _ in range(10):  # bounded
            shipped += await second.ship_once()
            if second.health.backlog == 0:
                break
        assert shipped == 60  # the pending 60 are delivered again; the upsert stores the 30 already there once
        # Exactly the claims made above: none lost, none under another id (claim_id is the table's key, so a
        # record shipped twice could only show as a count off, or an id that was never claimed).
        rows = sql_rows(record_db, "SELECT claim_id FROM claims")
        assert sorted(c for (c,) in rows) == sorted(f"c{i}" for i in range(260))
        assert flow_records(dsn) == []  # acknowledged and trimmed
        assert reconcile(Served(Process("geo_service", []), dsn, record_db, None)).returncode == 0
    finally:
        await store.close()
        await ledger.close()


async def _claim(client: Any, user: str, claim_id: str) -> tuple[int, dict[str, Any]]:
    poi_id, lat, lng = claim_poi(1, 0)
    resp = await client.post("/v1/claims", json={"claim_id": claim_id, "task_id": 1, "poi_id": poi_id, "lat": lat,
                                                  "lng": lng}, headers={"Authorization": f"Bearer {mint(user, SECRET, 2**33)}"})
    return resp.status, await resp.json()


@pytest.mark.parametrize(("key", "bad", "good"), [("appendfsync", "everysec", "always"),
                                                   ("maxmemory-policy", "allkeys-lru", "noeviction")])
async def test_a_redis_node_lacking_what_the_ledger_needs_takes_no_claims_and_says_why(
        make_client: MakeClient, redis_single: RedisDeployment, request: pytest.FixtureRequest, tmp_path: Path,
        key: str, bad: str, good: str) -> None:
    dsn = fresh_ledger("redis", request, tmp_path)
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 3}, pois=2)
    await asyncio.to_thread(build_into, data, snaps)
    healthy = await make_client(snaps, ledger=dsn, token_secret=SECRET)
    assert (await (await healthy.get("/healthz")).json())["ledger"] == {
        "kind": "redis", "problems": [], "check_error": None, "claims": "taken", "claim_failures": 0,
        "last_failure": None, "last_failure_s_ago": None, "claims_refused": 0, "last_refusal": None,
        "flow_backlog": 0, "flow_fill": 0.0, "flow_filling": False}
    assert (await _claim(healthy, "alice", "before"))[1]["outcome"] == "won"
    client = redis_client(dsn)
    client.config_set(key, bad)
    try:
        service = await make_client(snaps, ledger=dsn, token_secret=SECRET)
        ledger = (await (await service.get("/healthz")).json())["ledger"]
        assert len(ledger["problems"]) == 1 and f"{key} is '{bad}', needs '{good}'" in ledger["problems"][0]
        assert ledger["claims"].startswith("refused: ") and f"{key} is '{bad}'" in ledger["claims"]
        metrics = await (await service.get("/metrics")).text()
        assert any(line.startswith("geodrop_ledger_config_problems{") and line.endswith(" 1") for line in metrics.splitlines())
        before = flow_records(dsn)
        status, body = await _claim(service, "bob", "during")
        assert status == 503 and body["error"]["code"] == "ledger_unavailable"
        assert f"{key} is '{bad}', needs '{good}'" in body["error"]["message"]
        assert flow_records(dsn) == before  # nothing settled: no record, no count
        unsafe = await make_client(snaps, ledger=dsn, token_secret=SECRET, ledger_unsafe_ok=True)
        assert (await _claim(unsafe, "carol", "despite"))[1]["outcome"] == "won"
        said = (await (await unsafe.get("/healthz")).json())["ledger"]["claims"]
        assert said == "taken without the ledger's guarantees (ledger_unsafe_ok)"
    finally:
        client.config_set(key, good)
        client.close()


@pytest.fixture(params=["redis", "redis+cluster"])
def redis_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Served, Path]]:
    """geo-service (2 workers) on a fresh Redis ledger whose flow log ships into MariaDB."""
    dsn, record_db, snaps = ledger_world(request.param, request, tmp_path)
    process = service(snaps, tmp_path / "var", "--token-secret", SECRET, "--ledger", dsn, "--win-cap", "3").start()
    deployment = request.getfixturevalue("redis_cluster" if request.param == "redis+cluster" else "redis_single")
    try:
        process.wait_ready(workers=2)
        yield Served(process, dsn, record_db, deployment), snaps
    finally:
        process.stop()


async def test_a_shipper_killed_mid_load_and_restarted_loses_and_duplicates_nothing(
        redis_world: tuple[Served, Path]) -> None:
    served, snaps = redis_world
    shipping = collector(snaps, served.dsn, "--record-db", served.record_db, "--tick-floor-s", "0.2").start()
    try:
        shipping.wait_ready()

        acked: list[Ack] = []
        killed_at: list[float] = []

        async def kill_and_restart() -> None:
            # Killed a third of the way through, counted in answers rather than seconds: on a fast machine a timed
            # kill can land after the load, leaving the restarted shipper nothing to prove itself on.
            killed_at.append(await until_acked(acked, 500))
            shipping.kill()
            await asyncio.sleep(0.5)
            shipping.start()

        answers = await claim_load(served.process.port, claims=1500, players=500, on_started=kill_and_restart,
                                   acked=acked)
        shipping.wait_ready()
        for _ in range(600):  # bounded: up to 60 s for the restarted shipper to catch up
            shipped = shipping.health()["shipping"]
            if shipped["backlog"] == 0 and shipped["last_round_s_ago"] is not None:
                break
            await asyncio.sleep(0.1)
        assert shipped["backlog"] == 0 and shipped["last_error"] is None
        # Every claim sent after the kill was recorded after it: only the restarted shipper can have shipped those.
        after_kill = sum(1 for a in acked if a.sent_at > killed_at[0])
        assert after_kill >= 500 and shipped["shipped"] >= after_kill
        assert flow_records(served.dsn) == []  # every record shipped, acknowledged and trimmed
    finally:
        shipping.stop()
    issued, won = await settle(served)  # settle ships nothing more: the collector did it
    assert len(won) == 300
    assert_exact(issued, won, answers)
    assert reconcile(served).returncode == 0


async def test_the_redis_node_of_the_hot_task_killed_and_restarted_from_its_aof_loses_no_win(
        redis_world: tuple[Served, Path]) -> None:
    served, _ = redis_world
    assert served.redis is not None
    node = served.redis.node_of(task_key(TASKS[0]))

    acked: list[Ack] = []
    killed_at: list[float] = []

    async def kill_and_restart() -> None:
        await until_acked(acked, 150)  # counted in answers: a timed kill can land after a fast load is over
        await asyncio.to_thread(node.kill)
        killed_at.append(time.monotonic())
        await asyncio.sleep(1.5)
        await asyncio.to_thread(node.start)  # replays its AOF: every acknowledged write was fsynced

    try:
        # A restarted cluster master takes a few seconds to rejoin: the claims wait up to 60 s for it.
        answers = await claim_load(served.process.port, claims=1500, players=500, on_started=kill_and_restart,
                                   retry_s=60.0, acked=acked)
    finally:
        await asyncio.to_thread(served.redis.wait_healthy, 60)
    # The node settled the hot task's wins before its death, and again once restarted from its AOF (a claim sent
    # after the kill can only have been settled by the restarted node): the kill landed in the middle of the
    # task's load, with wins to lose on either side of it.
    hot = [a for a in acked if a.task_id == TASKS[0] and a.outcome == "won"]
    assert any(a.answered_at < killed_at[0] for a in hot) and any(a.sent_at > killed_at[0] for a in hot)
    assert {status for status, _ in answers} == {200}  # every claim settled once the node was back
    issued, won = await settle(served)
    assert_exact(issued, won, answers)
    assert reconcile(served).returncode == 0


async def test_a_task_cancelled_inside_a_ledger_call_stops_even_where_it_catches_ledger_errors(
        any_ledger_dsn: str) -> None:
    from geo_service.ledger import LedgerError

    ledger = open_ledger(any_ledger_dsn)
    await ledger.seed([(t, "cash", 5, -1) for t in range(1, 200)])
    calls = 0

    async def reader() -> None:  # as the ticker and the ledger check do: a failed read is retried
        nonlocal calls
        while True:
            try:
                await ledger.read_state(0)
                await ledger.problems()
            except LedgerError:
                pass
            calls += 1

    try:
        started = time.perf_counter()
        await ledger.read_state(0)
        await ledger.problems()
        one = time.perf_counter() - started  # how long a round of reads takes on this machine now
        for _ in range(20):  # bounded: cancel at twenty different points of the reads, up to 3 rounds in
            task = asyncio.create_task(reader())
            await asyncio.sleep(one * 0.15 * (1 + _))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)
        assert calls > 0
    finally:
        await ledger.close()


async def test_two_shippers_share_the_buckets_and_ship_every_record_once(
        redis_cluster: RedisDeployment, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dsn = fresh_ledger("redis+cluster", request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path)
    ledger = open_ledger(dsn, record_db)
    assert isinstance(ledger, RedisLedger)
    store = RecordStore(MySQLSettings.from_dsn(record_db))
    try:
        await _claims(ledger, 160)  # tasks 1..8: buckets 1..8, half odd, half even
        first = Shipper(ledger, store, part=(1, 2))
        assert await first.ship_once() == 80 and first.buckets == list(range(0, REDIS_BUCKETS, 2))
        assert len(flow_records(dsn)) == 80  # the other part's records wait for their shipper
        second = Shipper(ledger, store, part=(2, 2))
        assert await second.ship_once() == 80
        rows = sql_rows(record_db, "SELECT claim_id FROM claims")
        assert sorted(c for (c,) in rows) == sorted(f"c{i}" for i in range(160)) and flow_records(dsn) == []
    finally:
        await store.close()
        await ledger.close()


@pytest.mark.parametrize("dsn", ["redis://127.0.0.1:1", "redis+cluster://127.0.0.1:1"])
async def test_an_unreachable_server_is_a_ledger_error_and_the_check_goes_on(dsn: str) -> None:
    ledger = open_ledger(dsn)
    check = LedgerCheck()
    try:
        with pytest.raises(LedgerError):  # the cluster client's own exception too, not a 500 or a dead worker
            await ledger.problems()
        await check.look(ledger)
        assert check.error and check.checked_at == 0.0
        assert (check.refusal() or "").startswith("the ledger's server has not been checked yet")
    finally:
        await ledger.close()
