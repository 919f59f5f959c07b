"""A claim load as the load tests and fault drills send it: three tasks whose buckets a 3-master cluster
serves from three different nodes, 500 players each playing one task at one POI, and the checks that
counters equal won claims, no claim id is recorded twice and no acknowledged win is missing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from geo_service.tokens import mint
from tests.conftest import build_into, fresh_ledger
from tests.support.builders import claim_poi, write_claims_data
from tests.support.ledgers import counters, ship_all, won_claims
from tests.support.processes import Process
from tests.support.redis_nodes import RedisDeployment

SECRET = "load-secret"
TASKS = (1, 2, 4)  # their bucket tags hash to three different slots ranges: one per master of a 3-master cluster
QUOTAS = {"cash": 40, "coupon": 60}


@dataclass
class Served:
    process: Process
    dsn: str
    record_db: str  # where a Redis ledger's claims are shipped ("" for SQL ledgers)
    redis: RedisDeployment | None


def poi_of(player: int) -> tuple[int, int, float, float]:
    """Return (task_id, poi_id, lat, lng): where a player always plays."""
    task = TASKS[player % len(TASKS)]
    return (task, *claim_poi(task, player % 50))


def ledger_world(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, Path]:
    """Return (ledger DSN, record DB, snapshots) of a fresh ledger of this kind, and the claim tasks' snapshot."""
    dsn = fresh_ledger(kind, request, tmp_path)
    record_db = ""
    if dsn.startswith("redis"):
        record_db = fresh_ledger("mysql", request, tmp_path)  # an empty claims table to ship into
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, QUOTAS, pois=50, tasks=max(TASKS))
    build_into(data, snaps)
    return dsn, record_db, snaps


async def claim_load(port: int, claims: int, players: int, on_started: Any = None, claim_id: str = "load",
                     retry_s: float = 10.0, seen: Counter[tuple[int, str]] | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Send `claims` claims, 100 at a time over fresh connections; retry 503s and dropped connections for up to
    `retry_s` each (status 0: still failing then). `seen` counts every answer, retried ones included, by
    (status, error code or outcome)."""
    tokens = [mint(f"player{i}", SECRET, int(time.time()) + 3600) for i in range(players)]
    limit = asyncio.Semaphore(100)
    connector = aiohttp.TCPConnector(limit=100, force_close=True)  # new connections spread over the workers

    async def one(i: int, session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        player = i % players
        task, poi_id, lat, lng = poi_of(player)
        body = {"claim_id": f"{claim_id}-{i}", "task_id": task, "poi_id": poi_id, "lat": lat, "lng": lng}
        async with limit:
            for _ in range(int(retry_s * 10)):  # bounded retries: a killed worker or Redis node drops connections a while
                try:
                    async with session.post(f"http://127.0.0.1:{port}/v1/claims", json=body,
                                            headers={"Authorization": f"Bearer {tokens[player]}"}) as resp:
                        answer = await resp.json()
                        if seen is not None:
                            seen[resp.status, answer["error"]["code"] if "error" in answer else answer["outcome"]] += 1
                        if resp.status == 503:
                            await asyncio.sleep(0.1)
                            continue
                        return resp.status, {**answer, "player": player, "task_id": task}
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.1)
            return 0, {"player": player}

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = [asyncio.create_task(one(i, session)) for i in range(claims)]
        if on_started is not None:
            await on_started()
        return await asyncio.gather(*tasks)


def reconcile(served: Served, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "geo_service", "ledger", "reconcile", "--ledger", served.dsn, *extra]
    if served.record_db:
        command += ["--record-db", served.record_db]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


async def settle(served: Served) -> tuple[dict[tuple[int, str], int], list[tuple[str, int, str]]]:
    """Ship what a Redis ledger holds; return issued per counter and every won claim recorded."""
    if served.record_db:
        await ship_all(served.dsn, served.record_db)
    issued = {key: i for key, (_, i) in counters(served.dsn).items()}
    return issued, won_claims(served.dsn, served.record_db)


def assert_exact(issued: dict[tuple[int, str], int], won: list[tuple[str, int, str]],
                 answers: list[tuple[int, dict[str, Any]]]) -> None:
    """Counters equal won claims, no claim id twice, and every acknowledged win is recorded as won."""
    assert {k: v for k, v in issued.items() if v} == dict(Counter((t, p) for _, t, p in won))
    assert len({c for c, _, _ in won}) == len(won)
    recorded = {c: (t, p) for c, t, p in won}
    acknowledged = [(b["claim_id"], b["task_id"], b["prize_type"]) for status, b in answers
                    if status == 200 and b["outcome"] == "won"]
    assert all(recorded.get(c) == (t, p) for c, t, p in acknowledged)
