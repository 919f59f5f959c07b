"""Dispatchers against a partner stub on loopback: exactly once in effect under SIGKILL and garbage, the rate held
across dispatchers, fast channels untouched by a hanging slow one, and the pace following a partner's limit.
Every check is made from the stub's own log (what it received, when, and which effects it applied)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import fresh_ledger
from tests.support.deliveries import channel, dispatcher, land_wins, secret_env, states, write_channels
from tests.support.ledgers import sql_rows
from tests.support.partner_stub import Stub, serving
from tests.support.processes import Process


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in secret_env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
async def stub() -> AsyncIterator[tuple[Stub, str]]:
    partner = Stub(["wallet", "coupons"])
    async with serving(partner) as url:
        yield partner, url


async def until_delivered(dsn: str, count: int, timeout_s: float, running: list[Process]) -> float:
    """Wait until `count` deliveries are delivered (or parked); return the time it took."""
    started = time.monotonic()
    while True:  # bounded by the deadline
        # A count, not the rows: the stub shares this process, and its receive times must not wait on the test.
        done = Counter(dict(await asyncio.to_thread(sql_rows, dsn, "SELECT state, COUNT(*) FROM deliveries GROUP BY state")))
        if done["delivered"] + done["parked"] >= count:
            return time.monotonic() - started
        assert all(p.proc is not None and p.proc.poll() is None for p in running), "a dispatcher stopped"
        assert time.monotonic() - started < timeout_s, f"only {dict(done)} of {count} after {timeout_s} s"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_a_storm_with_a_dispatcher_sigkilled_and_garbage_answers_is_delivered_exactly_once(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path, stub: tuple[Stub, str]) -> None:
    partner, url = stub
    dsn = fresh_ledger(kind, request, tmp_path)
    ids = [f"storm-{i}" for i in range(3000)]  # the claimers' own log of their wins
    land_wins(dsn, ids, "cash")
    partner.faults["wallet"].garbage_every = 7
    partner.faults["wallet"].reset_every = 11
    channels = write_channels(tmp_path / "channels.json", channel("wallet", url, ["cash"], rate_per_s=1000, timeout_s=1))
    first, second = dispatcher(dsn, channels).start(), dispatcher(dsn, channels).start()
    running = [first, second]
    try:
        for _ in range(600):  # bounded: until a third of the storm reached the partner
            if len(partner.log.received) >= 1000:
                break
            await asyncio.sleep(0.05)
        first.kill()  # SIGKILL mid-storm: calls in flight and answers not yet recorded are lost with it
        killed_at = time.time()
        partner.faults["wallet"].garbage_after_apply = True  # now garbage comes after the effect was made
        first.start()
        await until_delivered(dsn, len(ids), 90, running)
    finally:
        for p in running:
            p.stop()
    assert partner.duplicates() == []  # no effect applied twice, whatever was sent twice
    assert partner.applied("wallet") == set(ids)  # every win delivered, each once
    assert Counter(states(dsn).values()) == {"delivered": len(ids)}
    # Each delivery recorded delivered carries the reference the partner gave when it applied it: no garbage
    # answer (non-JSON, huge, no reference, a redirect, a list, empty) marked one delivered.
    references = dict(sql_rows(dsn, "SELECT claim_id, partner_ref FROM deliveries"))
    assert references == partner._references
    # The storm went on through the kill: deliveries were received after it, some of them sent twice.
    assert sum(1 for t, _, _ in partner.log.received if t > killed_at) > 1000
    assert len(partner.log.received) > len(ids)
    assert partner.log.refused_signatures == 0


@pytest.mark.slow  # 20,000 wins at 500/s: 40 s
async def test_peak_shaving_holds_a_channel_to_its_rate_across_two_dispatchers(
        request: pytest.FixtureRequest, tmp_path: Path, stub: tuple[Stub, str]) -> None:
    partner, url = stub
    dsn = fresh_ledger("mysql", request, tmp_path)
    ids = [f"peak-{i}" for i in range(20_000)]
    land_wins(dsn, ids, "cash")  # 20,000 wins landed at once: the whole peak
    channels = write_channels(tmp_path / "channels.json", channel("wallet", url, ["cash"], rate_per_s=500))
    running = [dispatcher(dsn, channels).start(), dispatcher(dsn, channels).start()]
    try:
        took = await until_delivered(dsn, len(ids), 90, running)
    finally:
        for p in running:
            p.stop()
    received = partner.received_times("wallet")
    per_second, per_slice = Counter(int(t) for t in received), Counter(int(t * 10) for t in received)
    assert max(per_second.values()) <= 500 and max(per_slice.values()) <= 51, (per_second.most_common(3),
                                                                                   per_slice.most_common(3))
    assert partner.applied("wallet") == set(ids) and partner.duplicates() == []
    # Both dispatchers sent: the rate is one shared budget, not one each.
    assert len(set(sql_rows(dsn, "SELECT DISTINCT lease_owner FROM deliveries"))) == 2
    # The busy seconds ran at the rate: 20,000 at 500/s is 40 s.
    full = sorted(per_second.values())[len(per_second) // 4:]
    assert sum(full) / len(full) >= 450, f"delivered in {took:.1f} s; seconds: {sorted(per_second.items())[:5]}"


async def test_a_hanging_slow_partner_does_not_delay_the_fast_channel(
        request: pytest.FixtureRequest, tmp_path: Path, stub: tuple[Stub, str]) -> None:
    partner, url = stub
    dsn = fresh_ledger("mysql", request, tmp_path)
    partner.faults["coupons"].hang_s = 30.0  # every coupon call hangs past its timeout
    land_wins(dsn, [f"coupon-{i}" for i in range(2000)], "coupon")
    channels = write_channels(tmp_path / "channels.json",
                              channel("wallet", url, ["cash"], rate_per_s=2000),
                              channel("coupons", url, ["coupon"], kind="slow", rate_per_s=500, max_in_flight=200,
                                      timeout_s=2))
    running = [dispatcher(dsn, channels).start()]
    try:
        await asyncio.sleep(3)  # the coupon calls are hanging: the slow channel's whole budget is stuck
        ids = []
        for batch in range(50):  # 20 cash wins every 100 ms for 5 s, while coupons hang
            chunk = [f"cash-{batch}-{i}" for i in range(20)]
            await asyncio.to_thread(land_wins, dsn, chunk, "cash")
            ids += chunk
            await asyncio.sleep(0.1)
        await until_delivered(dsn, len(ids), 30, running)
    finally:
        for p in running:
            p.stop()
    won_at = {str(c): float(w) for c, w in sql_rows(dsn, "SELECT claim_id, won_at FROM deliveries WHERE prize_type = 'cash'")}
    latency = sorted(t - won_at[d] for t, c, d in partner.log.applied if c == "wallet")
    assert len(latency) == len(ids)
    p50, p99 = latency[len(latency) // 2], latency[int(len(latency) * 0.99)]
    assert p99 < 1.0, f"win to delivered: p50 {p50:.3f} s, p99 {p99:.3f} s"
    assert partner.applied("coupons") == set()  # the slow partner really hung throughout
    assert len([t for t, c, _ in partner.log.received if c == "coupons"]) >= 200


@pytest.mark.slow  # 35 s of a partner's limit and its lifting
async def test_the_pace_follows_a_partners_limit_and_climbs_back_when_it_lifts(
        request: pytest.FixtureRequest, tmp_path: Path, stub: tuple[Stub, str]) -> None:
    partner, url = stub
    dsn = fresh_ledger("mysql", request, tmp_path)
    land_wins(dsn, [f"pace-{i}" for i in range(16_000)], "cash")
    partner.faults["wallet"].limit_per_s = 200  # 429 above 200/s (20 a 100 ms slice)
    channels = write_channels(tmp_path / "channels.json", channel("wallet", url, ["cash"], rate_per_s=500))
    running = [dispatcher(dsn, channels).start()]
    try:
        started = time.time()
        await asyncio.sleep(20)
        partner.faults["wallet"].limit_per_s = 0
        lifted = time.time()
        await asyncio.sleep(15)
    finally:
        for p in running:
            p.stop()
    applied = Counter(int(t) for t, c, _ in partner.log.applied if c == "wallet")
    received = Counter(int(t) for t, c, _ in partner.log.received if c == "wallet")
    limited = range(int(started) + 5, int(lifted))  # after the first 5 s, while the limit holds
    delivered = sum(applied[s] for s in limited) / len(limited)
    refused = 1 - sum(applied[s] for s in limited) / sum(received[s] for s in limited)
    assert 160 <= delivered <= 240 and refused < 0.10, f"{delivered:.0f}/s delivered, {refused:.1%} refused"
    # Back to the configured 500/s within 30 s of the limit lifting (here, within the 15 s watched).
    assert max(applied[s] for s in range(int(lifted) + 1, int(lifted) + 14)) >= 475, sorted(applied.items())[-15:]
    assert partner.duplicates() == []


async def test_a_live_pause_and_rate_change_reach_a_running_dispatcher_within_a_second(
        request: pytest.FixtureRequest, tmp_path: Path, stub: tuple[Stub, str]) -> None:
    partner, url = stub
    dsn = fresh_ledger("sqlite", request, tmp_path)
    land_wins(dsn, [f"live-{i}" for i in range(6000)], "cash")
    channels = write_channels(tmp_path / "channels.json", channel("wallet", url, ["cash"], rate_per_s=1000))
    running = [dispatcher(dsn, channels).start()]

    async def steer(*flags: str) -> float:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "delivery", "channel", "wallet", *flags, "--ledger", dsn, "--channels", str(channels),
            env={**os.environ}, stdout=asyncio.subprocess.DEVNULL)
        assert await proc.wait() == 0
        return time.time()

    try:
        for _ in range(100):  # bounded: until deliveries flow
            if len(partner.log.received) > 500:
                break
            await asyncio.sleep(0.05)
        paused_at = await steer("--pause")
        await asyncio.sleep(2)
        held = len(partner.log.received)
        resuming_at = time.time()  # the resume commits while its command runs: count from its start
        resumed_at = await steer("--rate", "100", "--resume")
        await asyncio.sleep(4)
    finally:
        for p in running:
            p.stop()
    received = partner.received_times("wallet")
    assert max(t for t in received if t < resuming_at) < paused_at + 1.0  # nothing sent a second after the pause
    assert held < 6000
    after = Counter(int(t) for t in received if t > resumed_at)
    assert after and max(after.values()) <= 100  # the new rate, on the running dispatcher
    whole = [after[s] for s in range(int(resumed_at) + 1, int(max(received)))]  # whole seconds only
    assert whole and min(whole) >= 90, after
