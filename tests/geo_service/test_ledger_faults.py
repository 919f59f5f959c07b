"""Fault drill: the MariaDB ledger goes away in the middle of a claim load. A TCP proxy in front of it
first resets every connection (and every new one), or in the other drill goes silent (a dead network:
nothing answers, nothing closes), then lets traffic through again. Meanwhile claims answer 503
ledger_unavailable within claim_timeout_s, /v1/nearby keeps answering, and afterwards, every claim
retried with its own claim_id, counters equal won claims and no acknowledged win is missing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.claiming import QUOTAS, SECRET, TASKS, Ack, Served, assert_exact, claim_load, ledger_world, settle, until_acked
from tests.support.processes import service
from tests.support.tcp_proxy import TcpProxy

FAULT_S = 3.0
CLAIM_TIMEOUT_S = 1.0


@pytest.fixture
def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Served, TcpProxy]]:
    dsn, _, snaps = ledger_world("mysql", request, tmp_path)
    proxy = TcpProxy(3306).start()
    through_proxy = dsn.replace("127.0.0.1:3306", f"127.0.0.1:{proxy.port}")
    assert through_proxy != dsn
    process = service(snaps, tmp_path / "var", "--token-secret", SECRET, "--ledger", through_proxy,
                      "--claim-timeout-s", str(CLAIM_TIMEOUT_S), workers=2).start()
    try:
        process.wait_ready(workers=2)
        yield Served(process, dsn, "", None), proxy  # the checks read MariaDB directly, not through the proxy
    finally:
        process.stop()
        proxy.stop()


async def _poll(port: int, stop: asyncio.Event, log: list[tuple[float, int]]) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set():  # bounded by the test's stop
            async with session.get(f"http://127.0.0.1:{port}/v1/nearby?lat=22.5329&lng=113.9305") as resp:
                log.append((time.monotonic(), resp.status))
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("fault", ["cut", "stall"])
async def test_claims_settle_exactly_through_a_ledger_outage(proxied: tuple[Served, TcpProxy], fault: str) -> None:
    served, proxy = proxied
    seen: Counter[tuple[int, str]] = Counter()
    polls: list[tuple[float, int]] = []
    window: list[float] = []
    acked: list[Ack] = []
    stop = asyncio.Event()
    poller = asyncio.create_task(_poll(served.process.port, stop, polls))

    async def outage() -> None:
        await until_acked(acked, 200)  # counted in answers: a timed outage can begin after a fast load is over
        window.append(time.monotonic())
        getattr(proxy, fault)()
        await asyncio.sleep(FAULT_S)
        proxy.heal()
        window.append(time.monotonic())

    answers = await claim_load(served.process.port, claims=1500, players=500, on_started=outage, retry_s=30, seen=seen,
                               acked=acked)
    stop.set()
    await poller

    # During the outage claims were refused as the contract says, and nothing else went wrong.
    assert seen[503, "ledger_unavailable"] > 0, seen
    assert {status for status, _ in seen} <= {200, 503} and all(code == "ledger_unavailable" for s, code in seen if s == 503)
    # Nearby kept answering throughout, the outage included.
    during = [status for t, status in polls if window[0] <= t <= window[1]]
    assert len(during) > 20 and set(during) == {200}, Counter(during)
    assert {status for _, status in polls} == {200}
    # Every claim settled once the ledger was back, each retried with its own claim_id, and exactly.
    assert {status for status, _ in answers} == {200}, Counter(status for status, _ in answers)
    wins = [body for _, body in answers if body["outcome"] == "won"]
    assert len(wins) == len(TASKS) * sum(QUOTAS.values())
    issued, won = await settle(served)
    assert_exact(issued, won, answers)
    # The load really straddled the outage: claims were settled before it and claims sent after it.
    assert any(a.answered_at < window[0] for a in acked) and any(a.sent_at > window[1] for a in acked)
    failures = [served.process.health()["ledger"]["claim_failures"] for _ in range(20)]
    assert max(failures) > 0
