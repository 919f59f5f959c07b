"""Claims under real concurrency: 4 worker processes, both ledger backends, and a worker killed mid-load."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pymysql
import pytest

from geo_service.tokens import mint
from tests.conftest import build_into, ledger_rows
from tests.support.builders import claim_poi, write_claims_data

SECRET = "load-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(ledger_dsn: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """geo-service serve --workers 4 on a task whose prizes total 300, as a real process tree."""
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 100, "coupon": 200}, pois=50)
    build_into(data, snaps)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "geo_service", "serve", "--snapshots", str(snaps), "--port", str(port), "--workers", "4",
         "--token-secret", SECRET, "--ledger", ledger_dsn, "--win-cap", "3", "--data-dir", str(tmp_path / "var"),
         "--log-level", "warning"],
    )
    try:
        _wait_for_workers(port, 4)
        yield port, ledger_dsn
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _wait_for_workers(port: int, count: int) -> dict[int, int]:
    import urllib.request

    import orjson

    seen: dict[int, int] = {}
    deadline = time.monotonic() + 60
    while len(seen) < count and time.monotonic() < deadline:  # bounded
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                health = orjson.loads(resp.read())
                seen[health["worker_id"]] = health["pid"]
        except OSError:
            time.sleep(0.1)
    assert len(seen) == count, f"only workers {sorted(seen)} answered"
    return seen


async def _claim_load(port: int, claims: int, players: int, on_started: Any = None) -> list[tuple[int, dict[str, Any]]]:
    tokens = [mint(f"player{i}", SECRET, int(time.time()) + 3600) for i in range(players)]
    limit = asyncio.Semaphore(100)
    connector = aiohttp.TCPConnector(limit=100, force_close=True)  # new connections spread over the workers

    async def one(i: int, session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        player = i % players
        poi_id, lat, lng = claim_poi(1, player % 50)
        body = {"claim_id": f"load-{i}", "task_id": 1, "poi_id": poi_id, "lat": lat, "lng": lng}
        async with limit:
            for _ in range(20):  # bounded retries: a killed worker drops its connections
                try:
                    async with session.post(f"http://127.0.0.1:{port}/v1/claims", json=body,
                                            headers={"Authorization": f"Bearer {tokens[player]}"}) as resp:
                        answer = await resp.json()
                        if resp.status == 503:
                            await asyncio.sleep(0.05)
                            continue
                        return resp.status, {**answer, "player": player}
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.05)
            return 0, {"player": player}

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = [asyncio.create_task(one(i, session)) for i in range(claims)]
        if on_started is not None:
            await on_started()
        return await asyncio.gather(*tasks)


def _reconcile(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geo_service", "ledger", "reconcile", "--ledger", dsn],
                          capture_output=True, text=True, timeout=60)


async def test_2000_concurrent_claims_on_4_workers_issue_exactly_the_quota(server: tuple[int, str]) -> None:
    port, dsn = server
    results = await _claim_load(port, claims=2000, players=500)
    assert {status for status, _ in results} == {200}
    wins = [body for _, body in results if body["outcome"] == "won"]
    assert len(wins) == 300
    assert Counter(b["prize_type"] for b in wins) == {"cash": 100, "coupon": 200}
    per_player = Counter(b["player"] for b in wins)
    assert max(per_player.values()) <= 3
    issued = dict(ledger_rows(dsn, "SELECT prize_type, issued FROM prize_counters WHERE task_id = 1"))
    assert issued == {"cash": 100, "coupon": 200}
    assert ledger_rows(dsn, "SELECT COUNT(*) FROM claims WHERE outcome = 'won'")[0][0] == 300
    done = _reconcile(dsn)
    assert done.returncode == 0 and "counters match claims" in done.stdout


async def test_a_worker_killed_mid_load_leaves_counters_equal_to_claims(server: tuple[int, str]) -> None:
    port, dsn = server
    pids = _wait_for_workers(port, 4)

    async def kill_one() -> None:
        await asyncio.sleep(0.5)
        os.kill(pids[1], signal.SIGKILL)

    results = await _claim_load(port, claims=1500, players=500, on_started=kill_one)
    assert sum(1 for status, _ in results if status == 200) > 1000
    counted = dict(((t, p), i) for t, p, i in ledger_rows(dsn, "SELECT task_id, prize_type, issued FROM prize_counters"))
    claimed = dict(((t, p), n) for t, p, n in ledger_rows(
        dsn, "SELECT task_id, prize_type, COUNT(*) FROM claims WHERE outcome = 'won' GROUP BY task_id, prize_type"))
    assert {k: v for k, v in counted.items() if v} == claimed
    assert _reconcile(dsn).returncode == 0


def test_reconcile_reports_a_drifted_counter_and_repairs_it(ledger_dsn: str) -> None:
    import asyncio as aio

    from geo_service.ledger import ClaimRequest, open_ledger

    async def one_win() -> None:
        ledger = open_ledger(ledger_dsn)
        try:
            await ledger.seed([(1, "cash", 10)])
            await ledger.claim(ClaimRequest("w1", "alice", 1, 1000, 22.5, 113.9, 1000.0), ["cash"], 5, 30.0)
        finally:
            await ledger.close()

    aio.run(one_win())
    assert _reconcile(ledger_dsn).returncode == 0
    _execute(ledger_dsn, "UPDATE prize_counters SET issued = 4 WHERE task_id = 1")  # drift, as a bad manual fix would
    drifted = _reconcile(ledger_dsn)
    assert drifted.returncode == 1 and "task 1 cash: counter issued 4, won claims 1" in drifted.stdout
    repaired = subprocess.run([sys.executable, "-m", "geo_service", "ledger", "reconcile", "--repair", "--ledger", ledger_dsn],
                              capture_output=True, text=True, timeout=60)
    assert "(repaired)" in repaired.stdout
    assert _reconcile(ledger_dsn).returncode == 0
    assert ledger_rows(ledger_dsn, "SELECT issued FROM prize_counters WHERE task_id = 1") == [(1,)]


def _execute(dsn: str, sql: str) -> None:
    if dsn.startswith("sqlite:///"):
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            conn.execute(sql)
        return
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database="test", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()
