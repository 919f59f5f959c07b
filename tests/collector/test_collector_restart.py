"""Fault drill: the collector is SIGKILLed under load and started again. Meanwhile the service (two worker
processes) answers every poll and claim, with the last status it had (a task switched off stays off)
and that status's age; once the collector is back it catches up: fresh status, the levels the claims
made meanwhile, and a kill switch thrown after the restart."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from geo_service.nearby import Levels
from tests.support.claiming import QUOTAS, SECRET, TASKS, claim_load, ledger_world
from tests.support.processes import Process, collector, get_json, service

ADMIN = "restart-admin"
# Every quota starts at `plenty` or above; the outage's claims take task 1's cash below it.
LEVELS = Levels(few_below=min(QUOTAS.values()), last_below=5)
SWITCHED = TASKS[1]


@dataclass
class Site:
    service: Process
    collector: Process
    ledger: str


@pytest.fixture
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    ledger, _, snaps = ledger_world("sqlite", request, tmp_path)
    col = collector(snaps, ledger, "--admin-token", ADMIN, "--tick-floor-s", "0.2", "--data-dir", str(tmp_path / "cvar"))
    svc = service(snaps, tmp_path / "var", "--token-secret", SECRET, "--ledger", ledger, "--collector", col.url,
                  "--status-poll-s", "0.2", "--level-few-below", str(LEVELS.few_below),
                  "--level-last-below", str(LEVELS.last_below), workers=2)
    try:
        col.start().wait_ready()
        svc.start().wait_ready(workers=2)
        yield Site(svc, col, ledger)
    finally:
        svc.stop()
        col.stop()


def switch(site: Site, task_id: int, enabled: bool) -> None:
    req = urllib.request.Request(f"{site.collector.url}/v1/admin/tasks/{task_id}", method="POST",
                                 data=orjson.dumps({"enabled": enabled}), headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def nearby(site: Site, task_id: int) -> dict[str, Any]:
    from tests.support.builders import claim_poi

    _, lat, lng = claim_poi(task_id, 0)
    return dict(get_json(f"{site.service.url}/v1/nearby?lat={lat}&lng={lng}"))


def shown(body: dict[str, Any], task_id: int) -> dict[str, Any] | None:
    return next((t for t in body["tasks"] if t["task_id"] == task_id), None)


async def until(check: Any, what: str, timeout_s: float = 20) -> None:
    """Wait until check() holds on several polls in a row (so both workers agree), at most timeout_s."""
    streak, deadline = 0, time.monotonic() + timeout_s
    while streak < 6:  # bounded by the deadline
        assert time.monotonic() < deadline, f"never: {what}"
        streak = streak + 1 if await asyncio.to_thread(check) else 0
        await asyncio.sleep(0.05)


async def test_the_service_rides_out_a_collector_restart_and_catches_up(site: Site) -> None:
    polls: Counter[int] = Counter()
    stop = asyncio.Event()

    async def poll() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():  # bounded by stop
                async with session.get(f"{site.service.url}/v1/nearby?lat=22.5329&lng=113.9305") as resp:
                    polls[resp.status] += 1
                await asyncio.sleep(0.005)

    poller = asyncio.create_task(poll())
    switch(site, SWITCHED, False)
    await until(lambda: shown(nearby(site, SWITCHED), SWITCHED) is None, "the switched-off task hidden")

    site.collector.kill()
    answers = await claim_load(site.service.port, claims=150, players=150, claim_id="outage")  # leaves every quota short
    await asyncio.sleep(1.5)
    stale = nearby(site, TASKS[0])
    assert stale["status_age_s"] > 1.5  # the age says the status is old
    before = {p["prize_type"]: p["level"] for p in shown(stale, TASKS[0])["prizes"]}  # type: ignore[index]
    assert before == {p: LEVELS.of(q) for p, q in QUOTAS.items()}  # levels from before the outage's claims
    assert shown(nearby(site, SWITCHED), SWITCHED) is None  # the last status still holds: the task stays off
    health = site.service.health()
    assert health["status"]["failures"] > 0 and health["status"]["last_error"]

    site.collector.start().wait_ready()
    switch(site, SWITCHED, True)  # a change made after the restart reaches the service too
    # What the outage's claims took, by the claimers' own count rather than the counters the collector reads: a
    # counter the ledger failed to move would otherwise set the expectation and the answer alike.
    assert {status for status, _ in answers} == {200}  # claims never needed the collector
    won = Counter((b["task_id"], b["prize_type"]) for _, b in answers if b["outcome"] == "won")
    assert all(won[TASKS[0], p] > 0 for p in QUOTAS)
    after = {p: LEVELS.of(q - won[TASKS[0], p]) for p, q in QUOTAS.items()}
    assert after != before  # catching up is visible in the answer

    def caught_up() -> bool:
        body = nearby(site, TASKS[0])
        task = shown(body, TASKS[0])
        left = {p["prize_type"]: p["level"] for p in task["prizes"]} if task else {}
        return body["status_age_s"] < 1.0 and shown(nearby(site, SWITCHED), SWITCHED) is not None and left == after

    await until(caught_up, "fresh status, levels that include the outage's claims, the task back on")
    stop.set()
    await poller
    assert set(polls) == {200} and polls[200] > 100, polls  # no poll failed, the outage included
