"""Players pinned to a host: deploy/nginx.conf (from Debian's nginx) in front of two service hosts sharing one ledger.
Once a player is at the event's win cap, their claims reach the ledger once on their host and never again; when
that host is SIGKILLed, its players move to the other, which learns each of them with one more ledger call, and
every answer stays right. Counted from the ledger's claim records (one per settled claim), not the service's."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from geo_service.tokens import mint
from tests.conftest import build_into
from tests.support.builders import claim_poi, write_claims_data
from tests.support.ledgers import sql_rows
from tests.support.nginx import Nginx, load_balancer, nginx_available
from tests.support.parts import missing
from tests.support.processes import Process, service

SECRET = "pinning-secret"
PLAYERS = 30


@pytest.fixture
def pinned(tmp_path: Path) -> Iterator[tuple[Nginx, list[Process], str]]:
    """(nginx, the two hosts, the ledger DSN): each host one worker, the event's cap one win."""
    if not nginx_available():
        missing("nginx", "install Debian's nginx-light to run this test")
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 1000}, tasks=2)
    build_into(data, snaps)
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    hosts = [service(snaps, tmp_path / f"var{k}", "--ledger", ledger, "--token-secret", SECRET, "--player-win-cap", "1",
                     "--max-speed-mps", "1e9", workers=1).start() for k in range(2)]
    lb: Nginx | None = None
    try:
        for host in hosts:
            host.wait_ready()
        lb = load_balancer([h.port for h in hosts], {"claims_per_player": 10_000}).start()  # sequential claims: no limit
        yield lb, hosts, ledger
    finally:
        if lb is not None:
            lb.close()
        for host in hosts:
            host.stop()


async def claims(session: aiohttp.ClientSession, lb: str, player: int, start: int, count: int) -> list[dict[str, Any]]:
    """Send one player's claims one after another (as geodrop-client does), half the players naming themselves in
    X-Geodrop-Player and half by their token alone; return the answers."""
    headers = {"Authorization": f"Bearer {mint(f'p{player}', SECRET, int(time.time()) + 3600)}"}
    if player % 2:
        headers["X-Geodrop-Player"] = f"p{player}"
    answers = []
    for n in range(start, start + count):
        task = 1 + n % 2
        poi, lat, lng = claim_poi(task, 0)
        body = {"claim_id": f"p{player}-{n}", "task_id": task, "poi_id": poi, "lat": lat, "lng": lng}
        async with session.post(f"{lb}/v1/claims", json=body, headers=headers) as resp:
            answers.append({"status": resp.status, **await resp.json()})
    return answers


def ledger_calls(ledger: str) -> Counter[str]:
    """Settled claims per player, from the ledger's own records."""
    return Counter(str(u) for (u,) in sql_rows(ledger, "SELECT user_id FROM claims"))


async def test_a_capped_player_reaches_the_ledger_once_per_host_and_moves_when_their_host_dies(
        pinned: tuple[Nginx, list[Process], str]) -> None:
    lb, hosts, ledger = pinned
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        first = await asyncio.gather(*(claims(session, lb.url, p, 0, 1) for p in range(PLAYERS)))
        assert {(a["status"], a["outcome"], a["wins_left"]) for [a] in first} == {(200, "won", 0)}
        capped = await asyncio.gather(*(claims(session, lb.url, p, 1, 10) for p in range(PLAYERS)))
        assert {(a["status"], a["outcome"], a["wins_left"]) for answers in capped for a in answers} == {
            (200, "player_cap_reached", 0)}
        # One win and one refusal each: the nine claims after the refusal were answered by the player's host alone.
        assert ledger_calls(ledger) == {f"p{p}": 2 for p in range(PLAYERS)}

        os.kill(hosts[0].health()["pid"], signal.SIGKILL)
        moved = await asyncio.gather(*(claims(session, lb.url, p, 11, 5) for p in range(PLAYERS)))
    assert {(a["status"], a["outcome"]) for answers in moved for a in answers} == {(200, "player_cap_reached")}
    calls = ledger_calls(ledger)
    # The dead host's players cost the other host one refusal each, then none: their five claims reached it once.
    movers = {p for p, n in calls.items() if n == 3}
    assert set(calls.values()) == {2, 3} and 0 < len(movers) < PLAYERS
    won = Counter(str(u) for (u,) in sql_rows(ledger, "SELECT user_id FROM claims WHERE outcome = 'won'"))
    assert won == {f"p{p}": 1 for p in range(PLAYERS)}
