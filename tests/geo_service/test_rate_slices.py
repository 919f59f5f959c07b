"""A prize's rate_per_s holds across every worker of every host sharing the ledger, measured from the claims'
own timestamps; and a live rate change takes effect on every instance at once."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest

from geo_service.tokens import mint
from tests.conftest import build_into, fresh_ledger
from tests.support.builders import claim_poi, write_claims_data
from tests.support.ledgers import ship_all, sql_rows
from tests.support.processes import Process, service

SECRET = "rate-secret"
OFFERED_PER_S, SECONDS = 200, 6.0


async def paced_claims(ports: list[int], on_half_time: object = None,
                       changed_at: list[float] | None = None) -> tuple[dict[str, int], list[tuple[float, int]]]:
    """Offer OFFERED_PER_S claims a second for SECONDS, each by a new player, alternating the instances,
    and on until 2 s after the time on_half_time appends to `changed_at` (a loaded machine can take seconds
    to run it), up to 3 * SECONDS; return {claim_id: port} of the wins, and (time answered, port) of every
    answer."""
    wins: dict[str, int] = {}
    answered: list[tuple[float, int]] = []
    expires = int(time.time()) + 3600
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int) -> None:
            port = ports[i % len(ports)]
            poi_id, lat, lng = claim_poi(1, i % 50)
            body = {"claim_id": f"r{i}", "task_id": 1, "poi_id": poi_id, "lat": lat, "lng": lng}
            async with session.post(f"http://127.0.0.1:{port}/v1/claims", json=body,
                                    headers={"Authorization": f"Bearer {mint(f'p{i}', SECRET, expires)}"}) as resp:
                answer = await resp.json()
            assert resp.status == 200, answer
            answered.append((time.time(), port))
            if answer["outcome"] == "won":
                wins[answer["claim_id"]] = port

        started, pending = time.monotonic(), []
        for i in range(int(OFFERED_PER_S * SECONDS * 3)):  # bounded
            if i >= OFFERED_PER_S * SECONDS and (changed_at is None or (changed_at and time.time() > changed_at[0] + 2.0)):
                break
            await asyncio.sleep(max(0.0, started + i / OFFERED_PER_S - time.monotonic()))
            pending.append(asyncio.create_task(one(i)))
            if on_half_time is not None and i == int(OFFERED_PER_S * SECONDS / 2):
                pending.append(asyncio.create_task(on_half_time()))  # type: ignore[operator]
        await asyncio.gather(*pending)
    return wins, answered


def win_times(dsn: str, record_db: str) -> dict[str, float]:
    db = record_db or dsn
    return {str(c): float(t) for c, t in sql_rows(db, "SELECT claim_id, created_at FROM claims WHERE outcome = 'won'")}


def assert_within(times: list[float], rate: float) -> None:
    """No calendar second above the rate, no 100 ms slice above a tenth of it (rounded up)."""
    assert max(Counter(math.floor(t) for t in times).values()) <= math.ceil(rate)
    assert max(Counter(math.floor(t * 10) for t in times).values()) <= math.ceil(rate / 10)


@pytest.mark.parametrize(("kind", "instances"), [("sqlite", 1), ("mysql", 1), ("redis+cluster", 2)])
async def test_rate_slices_hold_across_instances_and_a_live_change_applies_to_all_at_once(
        kind: str, instances: int, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dsn = fresh_ledger(kind, request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path) if kind.startswith("redis") else ""
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 10**6}, pois=50, rate_per_s="20")
    await asyncio.to_thread(build_into, data, snaps)
    services: list[Process] = [  # every instance shares the one ledger
        service(snaps, tmp_path / f"var{k}", "--token-secret", SECRET, "--ledger", dsn, "--win-cap", "5").start()
        for k in range(instances)]
    changed_at: list[float] = []

    async def lower_the_rate() -> None:
        command = [sys.executable, "-m", "collector", "prize", "set", "1", "cash", "--rate", "5", "--ledger", dsn]
        done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        change = orjson.loads(done.stdout)
        assert change["rate_per_s"] == 5.0 and change["quota"] == 10**6
        changed_at.append(time.time())

    try:
        for s in services:
            await asyncio.to_thread(s.wait_ready, 2)
        wins, answered = await paced_claims([s.port for s in services], on_half_time=lower_the_rate,
                                            changed_at=changed_at)
    finally:
        for s in services:
            s.stop()
    if record_db:
        await ship_all(dsn, record_db)
    times = win_times(dsn, record_db)
    assert set(times) == set(wins)  # every acknowledged win is recorded, with the time its slice was taken at
    cut = changed_at[0]
    before = [t for t in times.values() if t < cut - 1.0]
    after = [t for t in times.values() if t >= cut]
    assert len(before) >= 40  # the offered 200/s really pressed on the limit of 20/s
    assert_within(before, 20)
    assert_within(after, 5)
    assert len(after) >= 5
    # Every instance went on answering under the new rate; what they issued together obeys it.
    assert {port for at, port in answered if at > cut + 1.0} == {s.port for s in services}
