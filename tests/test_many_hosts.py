"""Many hosts on loopback: three service hosts pulling from one origin (nginx serving a folder), nginx in
front of them (deploy/nginx.conf), a collector, one MariaDB ledger. A client polling and claiming
through the load balancer sees no failed request while a snapshot is published, a host is SIGKILLed
and restarted, and the origin is down for 10 s; the quotas stay exact."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from geo_service.tokens import mint
from loaders.cli import main as snapshot_cli
from tests.conftest import build_into, fresh_ledger
from tests.support.builders import claim_poi, set_csv_field, write_claims_data
from tests.support.ledgers import counters, won_claims
from tests.support.nginx import Nginx, load_balancer, nginx_available, origin_server
from tests.support.parts import missing
from tests.support.processes import Process, collector, get_json, service

SECRET = "hosts-secret"
HOSTS = 3


@dataclass
class Site:
    origin_folder: Path
    origin: Nginx
    build: Path
    data: Path
    hosts: list[Process]
    lb: Nginx
    ledger: str
    collector: Process
    extra: list[str] = field(default_factory=list)


def _publish(site: Site, edition: int) -> None:
    set_csv_field(site.data / "tasks.csv", 2, "name", f"edition {edition}")
    build_into(site.data, site.build)
    assert snapshot_cli(["publish", "--snapshots", str(site.build), "--to", str(site.origin_folder)]) == 0


@pytest.fixture
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    if not nginx_available():
        missing("nginx", "install Debian's nginx-light to run this test")
    ledger = fresh_ledger("mysql", request, tmp_path)
    folder, data, build = tmp_path / "origin", tmp_path / "data", tmp_path / "build"
    folder.mkdir()
    write_claims_data(data, {"cash": 150}, pois=20, tasks=2)
    origin = origin_server(folder).start()
    started: list[Any] = [origin]
    try:
        site_ = Site(folder, origin, build, data, [], origin, ledger, Process("collector", []))
        _publish(site_, 1)
        site_.collector = collector(tmp_path / "collector", ledger, "--origin", origin.url, "--origin-poll-s", "0.2",
                                    "--tick-floor-s", "0.2").start()
        started.append(site_.collector)
        for k in range(HOSTS):
            host = service(tmp_path / f"host{k}", tmp_path / f"var{k}", "--origin", origin.url, "--origin-poll-s", "0.2",
                           "--ledger", ledger, "--token-secret", SECRET, "--collector", site_.collector.url,
                           "--status-poll-s", "0.2", workers=1).start()
            started.append(host)
            site_.hosts.append(host)
        for process in [site_.collector, *site_.hosts]:
            process.wait_ready()
        site_.lb = load_balancer([h.port for h in site_.hosts]).start()
        started.append(site_.lb)
        yield site_
    finally:
        for part in reversed(started):
            part.close() if isinstance(part, Nginx) else part.stop()


@dataclass
class Tally:
    polls: int = 0
    claims: int = 0
    failed: list[str] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


async def client(lb: str, stop: asyncio.Event, tally: Tally) -> None:
    """Poll as phones do (40/s) and claim (10/s) through the load balancer until stopped."""
    expires = int(time.time()) + 3600
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def poll(i: int) -> None:
            task = 1 + i % 2
            _, lat, lng = claim_poi(task, i % 20)
            try:
                async with session.get(f"{lb}/v1/nearby?lat={lat}&lng={lng}") as resp:
                    await resp.read()
                    tally.polls += 1
                    if resp.status != 200:
                        tally.failed.append(f"poll {resp.status} {resp.headers.get('Retry-After')}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.failed.append(f"poll {type(exc).__name__}")

        async def claim(i: int) -> None:
            task = 1 + (i // 4) % 2
            poi_id, lat, lng = claim_poi(task, i % 20)
            body = {"claim_id": f"h-{i}", "task_id": task, "poi_id": poi_id, "lat": lat, "lng": lng}
            headers = {"Authorization": f"Bearer {mint(f'p{i % 400}', SECRET, expires)}"}
            try:
                async with session.post(f"{lb}/v1/claims", json=body, headers=headers) as resp:
                    answer = await resp.json()
                    tally.claims += 1
                    if resp.status != 200:
                        tally.failed.append(f"claim {resp.status} {answer}")
                    else:
                        tally.answers.append((resp.status, {**answer, "task_id": task}))
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.failed.append(f"claim {type(exc).__name__}")

        pending: set[asyncio.Task[None]] = set()
        for i in range(10**6):  # bounded by the stop event, checked every 25 ms
            if stop.is_set():
                break
            for job in [poll(i)] + ([claim(i)] if i % 4 == 0 else []):
                task = asyncio.create_task(job)
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(0.025)
        await asyncio.gather(*pending)


async def seqs(site: Site) -> list[int | None]:
    def one(host: Process) -> int | None:
        try:
            return int(get_json(f"{host.url}/healthz")["snapshot"]["seq"])
        except (OSError, KeyError, TypeError):
            return None

    return [await asyncio.to_thread(one, h) for h in site.hosts]


async def test_polls_and_claims_through_nginx_fail_never_while_hosts_and_origin_change(site: Site) -> None:
    stop, tally = asyncio.Event(), Tally()
    load = asyncio.create_task(client(site.lb.url, stop, tally))
    await asyncio.sleep(1.0)

    published = time.monotonic()
    await asyncio.to_thread(_publish, site, 2)
    for _ in range(100):  # bounded: 5 s
        if await seqs(site) == [2] * HOSTS:
            break
        await asyncio.sleep(0.05)
    took = time.monotonic() - published
    assert await seqs(site) == [2] * HOSTS and took < 5.0, f"hosts at {await seqs(site)} after {took:.1f} s"

    victim = site.hosts[1]
    victim.kill()
    await asyncio.sleep(1.0)
    victim.start()
    await asyncio.to_thread(victim.wait_ready)

    site.origin.stop()
    await asyncio.sleep(10.0)
    site.origin.start()
    await asyncio.sleep(1.0)
    stop.set()
    await load

    assert tally.failed == [], tally.failed[:10]
    assert tally.polls > 400 and tally.claims > 100
    issued = {key: n for key, (quota, n) in counters(site.ledger).items() if n}
    won = won_claims(site.ledger)
    assert issued == dict(Counter((t, p) for _, t, p in won)) and all(n <= 150 for n in issued.values())
    assert set(issued) == {(1, "cash"), (2, "cash")}
    # Every claim was answered (nothing failed), so the wins recorded are exactly the wins the client was told of:
    # none missing, and none recorded for a claim told it lost.
    told = {b["claim_id"]: (b["task_id"], b["prize_type"]) for _, b in tally.answers if b["outcome"] == "won"}
    assert {c: (t, p) for c, t, p in won} == told
    assert {b["outcome"] for _, b in tally.answers} <= {"won", "no_prize_left", "cap_reached"}
