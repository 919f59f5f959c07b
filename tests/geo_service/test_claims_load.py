"""Claims under real concurrency: 4 worker processes on every ledger kind, and a worker killed mid-load."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from geo_service.ledger.redis_layout import task_key
from tests.conftest import LEDGER_KINDS, fresh_ledger
from tests.support.claiming import QUOTAS, SECRET, TASKS, Served, assert_exact, claim_load, ledger_world, reconcile, settle
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

    async def kill_one() -> None:
        await asyncio.sleep(0.5)
        os.kill(pids[1], signal.SIGKILL)

    answers = await claim_load(server.process.port, claims=1500, players=500, on_started=kill_one)
    assert sum(1 for status, _ in answers if status == 200) > 1000
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
    repaired = reconcile(served, "--repair")
    assert "(repaired)" in repaired.stdout
    assert reconcile(served).returncode == 0
    assert counters(any_ledger_dsn)[(1, "cash")] == (10, 1)
