"""Claims under real concurrency: 4 worker processes on every ledger kind, and a worker killed mid-load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from geo_service.ledger.redis_layout import task_key
from tests.conftest import LEDGER_KINDS, fresh_ledger
from tests.support.claiming import (
    QUOTAS,
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
from tests.support.ledgers import counters, set_issued
from tests.support.processes import Process, service


@pytest.fixture(params=LEDGER_KINDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """geo-service serve --workers 4 on a fresh ledger of each kind, as a real process tree."""
    dsn, record_db, snaps = ledger_world(request.param, request, tmp_path)
    extra = ["--record-db", record_db] if record_db else []
    process = service(snaps, tmp_path / "var", "--token-secret", SECRET, "--ledger", dsn, "--win-cap", "3", *extra,
                      workers=4).start()
    redis = request.getfixturevalue("redis_cluster" if request.param == "redis+cluster" else "redis_single") \
        if dsn.startswith("redis") else None
    try:
        process.wait_ready(workers=4)
        yield Served(process, dsn, record_db, redis)
    finally:
        process.stop()


async def test_2000_concurrent_claims_on_4_workers_issue_exactly_the_quota(server: Served) -> None:
    if server.redis is not None and server.redis.cluster:
        assert len({server.redis.node_of(task_key(t)).port for t in TASKS}) == 3  # every master settles claims
    answers = await claim_load(server.process.port, claims=2000, players=500)
    assert {status for status, _ in answers} == {200}
    wins = [body for _, body in answers if body["outcome"] == "won"]
    assert len(wins) == 300
    assert Counter((b["task_id"], b["prize_type"]) for b in wins) == {(t, p): q for t in TASKS for p, q in QUOTAS.items()}
    assert max(Counter(b["player"] for b in wins).values()) <= 3
    issued, won = await settle(server)
    assert_exact(issued, won, answers)
    done = reconcile(server)
    assert done.returncode == 0 and "counters match claims" in done.stdout, done.stdout + done.stderr


async def test_a_worker_killed_mid_load_leaves_counters_equal_to_claims(server: Served) -> None:
    pids = server.process.wait_ready(workers=4)
    acked: list[Ack] = []
    killed_at: list[float] = []

    async def kill_one() -> None:
        # A fifth of the way through, counted in answers: a timed kill can land after a fast load is over.
        killed_at.append(await until_acked(acked, 300))
        os.kill(pids[1], signal.SIGKILL)

    answers = await claim_load(server.process.port, claims=1500, players=500, on_started=kill_one, acked=acked)
    assert sum(1 for status, _ in answers if status == 200) > 1000
    # The load went on past the kill: claims sent after it were answered, retried ones among them.
    assert sum(1 for a in acked if a.sent_at > killed_at[0]) >= 500
    issued, won = await settle(server)
    assert_exact(issued, won, answers)
    assert reconcile(server).returncode == 0


@pytest.mark.parametrize("any_ledger_dsn", LEDGER_KINDS, indirect=True)
def test_reconcile_reports_a_drifted_counter_and_repairs_it(any_ledger_dsn: str, request: pytest.FixtureRequest,
                                                            tmp_path: Path) -> None:
    from geo_service.ledger import ClaimRequest, open_ledger

    record_db = ""
    if any_ledger_dsn.startswith("redis"):
        record_db = fresh_ledger("mysql", request, tmp_path)

    async def one_win() -> None:
        ledger = open_ledger(any_ledger_dsn)
        try:
            await ledger.seed([(1, "cash", 10, -1)])
            await ledger.claim(ClaimRequest("w1", "alice", 1, 1000, 22.5, 113.9, time.time()), ["cash"], 5, 30.0)
        finally:
            await ledger.close()

    asyncio.run(one_win())
    served = Served(Process("geo_service", []), any_ledger_dsn, record_db, None)
    assert reconcile(served).returncode == 0  # on Redis: the win is counted from the stream, not shipped yet
    set_issued(any_ledger_dsn, 1, "cash", 4)  # drift, as a bad manual fix would
    drifted = reconcile(served)
    assert drifted.returncode == 1 and "task 1 cash: counter issued 4, won claims 1" in drifted.stdout
    kept = reconcile(served, "--repair")  # above its claims: its prizes may have gone to players whose records were lost
    assert "task 1 cash: counter issued 4, won claims 1  (left: above its claims" in kept.stdout
    assert counters(any_ledger_dsn)[(1, "cash")] == (10, 4)
    lowered = reconcile(served, "--repair", "--lower")
    assert "task 1 cash: counter issued 4, won claims 1  (repaired)" in lowered.stdout
    assert reconcile(served).returncode == 0
    assert counters(any_ledger_dsn)[(1, "cash")] == (10, 1)
    set_issued(any_ledger_dsn, 1, "cash", 0)  # below its claims: it would issue past the quota
    raised = reconcile(served, "--repair")
    assert "task 1 cash: counter issued 0, won claims 1  (repaired)" in raised.stdout
    assert counters(any_ledger_dsn)[(1, "cash")] == (10, 1)


async def test_repairs_during_a_claim_load_and_shipping_leave_counters_equal_to_the_record(server: Served) -> None:
    from geo_service.dsn import MySQLSettings
    from geo_service.ledger import open_ledger
    from geo_service.ledger.records import RecordStore
    from geo_service.ledger.redis import RedisLedger
    from geo_service.ledger.ship import Shipper

    ledger = open_ledger(server.dsn, server.record_db)
    shipper = Shipper(ledger, RecordStore(MySQLSettings.from_dsn(server.record_db))) \
        if isinstance(ledger, RedisLedger) else None
    shipping = asyncio.create_task(shipper.run()) if shipper is not None else None
    acked: list[Ack] = []
    repairs: list[tuple[float, float, int]] = []  # (start, end, counters moved) of each repair, time.monotonic()
    await ledger.reconcile(False)  # connected before the load: every repair then runs at its own pace

    async def repair_meanwhile() -> None:
        set_issued(server.dsn, TASKS[0], "cash", QUOTAS["cash"] + 5)  # drift past any true count, as claims land
        for _ in range(500):  # bounded: repair again and again until the load is over
            start = time.monotonic()
            moved = len(await ledger.reconcile(True, lower=True))
            repairs.append((start, time.monotonic(), moved))
            if len(acked) >= 1400:
                break

    try:
        answers = await claim_load(server.process.port, claims=1500, players=500, acked=acked,
                                   on_started=repair_meanwhile)
    finally:
        if shipping is not None:
            shipping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shipping
        if shipper is not None:
            await shipper.store.close()
        await ledger.close()
    assert repairs[0][2] >= 1  # the drift was found
    # Repairs ran while wins were being settled: some win was answered during one of them.
    assert any(start < a.answered_at < end for a in acked if a.outcome == "won" for start, end, _ in repairs)
    issued, won = await settle(server)
    assert all(issued[(t, p)] <= q for t in TASKS for p, q in QUOTAS.items())
    assert_exact(issued, won, answers)
    assert reconcile(server).returncode == 0
