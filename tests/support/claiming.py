"""A claim load as the load tests and fault drills send it: three tasks whose buckets a 3-master cluster
serves from three different nodes, 500 players each playing one task at one POI, and the checks that
counters equal won claims and that the wins recorded are the wins the claimers were told of."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest

from geo_service.tokens import mint
from tests.conftest import build_into, fresh_ledger
from tests.support.builders import claim_poi, write_claims_data
from tests.support.ledgers import claims_db, counters, ship_all, sql_rows, won_claims
from tests.support.processes import Process
from tests.support.redis_nodes import RedisDeployment

SECRET = "load-secret"
TASKS = (1, 2, 4)  # their bucket tags hash to three different slots ranges: one per master of a 3-master cluster
QUOTAS = {"cash": 40, "coupon": 60}


class Ack(NamedTuple):
    """A claim answered 200, as its claimer saw it (time.monotonic() on the client)."""

    sent_at: float  # when the attempt that was answered was sent
    answered_at: float
    task_id: int
    outcome: str


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
                     retry_s: float = 10.0, seen: Counter[tuple[int, str]] | None = None,
                     acked: list[Ack] | None = None) -> list[tuple[int, dict[str, Any]]]:
    """Send `claims` claims, 100 at a time over fresh connections; retry 503s and dropped connections for up to
    `retry_s` each (status 0: still failing then). `seen` counts every answer, retried ones included, by
    (status, error code or outcome); `acked` gets each claim answered 200 as it is answered. Each returned answer
    carries the claim id its claimer sent (`sent`), its player and task."""
    tokens = [mint(f"player{i}", SECRET, int(time.time()) + 3600) for i in range(players)]
    limit = asyncio.Semaphore(100)
    connector = aiohttp.TCPConnector(limit=100, force_close=True)  # new connections spread over the workers

    async def one(i: int, session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        player = i % players
        task, poi_id, lat, lng = poi_of(player)
        body = {"claim_id": f"{claim_id}-{i}", "task_id": task, "poi_id": poi_id, "lat": lat, "lng": lng}
        mine = {"sent": body["claim_id"], "player": player, "task_id": task}
        async with limit:
            for _ in range(int(retry_s * 10)):  # bounded retries: a killed worker or Redis node drops connections a while
                try:
                    sent_at = time.monotonic()
                    async with session.post(f"http://127.0.0.1:{port}/v1/claims", json=body,
                                            headers={"Authorization": f"Bearer {tokens[player]}"}) as resp:
                        answer = await resp.json()
                        if seen is not None:
                            seen[resp.status, answer["error"]["code"] if "error" in answer else answer["outcome"]] += 1
                        if resp.status == 503:
                            await asyncio.sleep(0.1)
                            continue
                        if acked is not None and resp.status == 200:
                            acked.append(Ack(sent_at, time.monotonic(), task, answer["outcome"]))
                        return resp.status, {**answer, **mine}
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.1)
            return 0, mine

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = [asyncio.create_task(one(i, session)) for i in range(claims)]
        if on_started is not None:
            await on_started()
        return await asyncio.gather(*tasks)


async def until_acked(acked: list[Ack], count: int, timeout_s: float = 60.0) -> float:
    """Wait until the claimers have been answered `count` claims; return the time (time.monotonic()) it happened.
    Drills strike on this rather than after a fixed sleep: a load that is over by then proves nothing."""
    deadline = time.monotonic() + timeout_s
    while len(acked) < count:  # bounded by the deadline
        assert time.monotonic() < deadline, f"only {len(acked)} of {count} claims answered in {timeout_s} s"
        await asyncio.sleep(0.01)
    return time.monotonic()


def reconcile(served: Served, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "geo_service", "ledger", "reconcile", "--ledger", served.dsn, *extra]
    if served.record_db:
        command += ["--record-db", served.record_db]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


async def settle(served: Served) -> tuple[dict[tuple[int, str], int], list[tuple[str, int, str]]]:
    """Ship what a Redis ledger holds; return issued per counter and every won claim recorded, after checking that
    each won claim has exactly one delivery row, of its player and prize, and no other claim has one (the outbox:
    assert_exact then ties the won claims to what the claimers were told)."""
    if served.record_db:
        await ship_all(served.dsn, served.record_db)
    issued = {key: i for key, (_, i) in counters(served.dsn).items()}
    records = claims_db(served.dsn, served.record_db)
    wins = sql_rows(records, "SELECT claim_id, user_id, prize_type FROM claims WHERE outcome = 'won'")
    deliveries = sql_rows(records, "SELECT claim_id, user_id, prize_type FROM deliveries")
    assert len(deliveries) == len(wins) and set(deliveries) == set(wins), (
        f"wins with no delivery: {sorted(set(wins) - set(deliveries))[:5]}; "
        f"deliveries with no win: {sorted(set(deliveries) - set(wins))[:5]}")
    return issued, won_claims(served.dsn, served.record_db)


def assert_exact(issued: dict[tuple[int, str], int], won: list[tuple[str, int, str]],
                 answers: list[tuple[int, dict[str, Any]]]) -> None:
    """Counters equal won claims, and the wins recorded are exactly the wins the claimers were told of (each
    under the id it was sent with, for its task and prize), plus at most some of the claims never answered."""
    assert {k: v for k, v in issued.items() if v} == dict(Counter((t, p) for _, t, p in won))
    told = {body["sent"]: (status, body) for status, body in answers}  # what each claim came to, by its claimer
    assert all(body["claim_id"] == c for c, (status, body) in told.items() if status == 200)  # its own answer
    acknowledged = {c: (body["task_id"], body["prize_type"]) for c, (status, body) in told.items()
                    if status == 200 and body["outcome"] == "won"}
    unanswered = {c for c, (status, _) in told.items() if status != 200}
    recorded = {c: (t, p) for c, t, p in won}
    # Neither a win told but not recorded, nor one recorded for a claim told something else, nor one never sent.
    answered = {c: tp for c, tp in recorded.items() if c not in unanswered}
    assert answered == acknowledged, (
        f"recorded, not told: {sorted(set(answered.items()) - set(acknowledged.items()))[:5]}; told, not recorded: "
        f"{sorted(set(acknowledged.items()) - set(answered.items()))[:5]}; what those were told: "
        f"{[told[c] for c, _ in sorted(set(answered.items()) ^ set(acknowledged.items()))[:5]]}")
