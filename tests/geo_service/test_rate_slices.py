"""A prize's rate_per_s holds across every worker of every host sharing the ledger, and a live rate change takes
effect on every instance at once; measured by the claimers, from when they sent each claim and read its answer
(time.monotonic() on the client), never from the times the ledger writes about itself."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import orjson
import pytest

from geo_service.tokens import mint
from tests.conftest import build_into, fresh_ledger
from tests.support.builders import claim_poi, write_claims_data
from tests.support.ledgers import ship_all, won_claims
from tests.support.processes import Process, service

SECRET = "rate-secret"
OFFERED_PER_S, SECONDS = 200, 6.0


class Answer(NamedTuple):
    """One claim as its claimer saw it: it was settled at some moment between sent_at and answered_at."""

    sent_at: float  # time.monotonic() just before the claim was sent
    answered_at: float  # time.monotonic() once its answer was read
    port: int
    claim_id: str
    outcome: str


async def paced_claims(ports: list[int], on_half_time: Any = None, changed: list[float] | None = None) -> list[Answer]:
    """Offer OFFERED_PER_S claims a second for SECONDS, each by a new player, alternating the instances, and on
    until 2 s after on_half_time has appended to `changed` the time it finished (a loaded machine can take seconds
    to run it), up to 3 * SECONDS; return every answer."""
    answers: list[Answer] = []
    expires = int(time.time()) + 3600
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int) -> None:
            port = ports[i % len(ports)]
            poi_id, lat, lng = claim_poi(1, i % 50)
            claim_id = f"r{i}"
            body = {"claim_id": claim_id, "task_id": 1, "poi_id": poi_id, "lat": lat, "lng": lng}
            sent_at = time.monotonic()
            async with session.post(f"http://127.0.0.1:{port}/v1/claims", json=body,
                                    headers={"Authorization": f"Bearer {mint(f'p{i}', SECRET, expires)}"}) as resp:
                answer = await resp.json()
            assert resp.status == 200, answer
            assert answer["claim_id"] == claim_id and answer["outcome"] in ("won", "no_prize_left"), answer
            answers.append(Answer(sent_at, time.monotonic(), port, claim_id, answer["outcome"]))

        started, pending = time.monotonic(), []
        for i in range(int(OFFERED_PER_S * SECONDS * 3)):  # bounded
            if i >= OFFERED_PER_S * SECONDS and (changed is None or (changed and time.monotonic() > changed[-1] + 2.0)):
                break
            await asyncio.sleep(max(0.0, started + i / OFFERED_PER_S - time.monotonic()))
            pending.append(asyncio.create_task(one(i)))
            if on_half_time is not None and i == int(OFFERED_PER_S * SECONDS / 2):
                pending.append(asyncio.create_task(on_half_time()))
        await asyncio.gather(*pending)
    return answers


def most_in_a_window(wins: list[Answer], length_s: float) -> int:
    """The most wins sent and answered within one stretch of length_s seconds (every stretch that can hold the
    most starts at some win's sending)."""
    return max((sum(1 for w in wins if start.sent_at <= w.sent_at and w.answered_at <= start.sent_at + length_s)
                for start in wins), default=0)


def window_cap(length_s: float, rate: int) -> int:
    """The most a rate may issue in a stretch of length_s seconds, from the README's promises alone: k consecutive
    100 ms slices issue at most ceil(k * rate / 10), and a stretch a hair longer than length_s (the client's clock
    against the ledger's) touches at most floor(10 * length_s) + 2 slices."""
    return math.ceil(Fraction(math.floor(10 * length_s) + 2) * rate / 10)


def full_slices(answers: list[Answer], offset_s: float, margin_s: float) -> dict[int, list[Answer]]:
    """The slices (numbers of 100 ms of the epoch) a refusal proves full: a claim refused no_prize_left that was
    sent and answered inside one slice was refused because that slice had issued all it may. Each with the wins
    that may have been settled in it: those sent before it ended and answered after it began."""
    full: dict[int, list[Answer]] = {}
    for a in answers:
        first, last = (math.floor((t + offset_s) * 10) for t in (a.sent_at - margin_s, a.answered_at + margin_s))
        if a.outcome == "no_prize_left" and first == last:
            full[first] = [w for w in answers if w.outcome == "won" and (w.sent_at + offset_s - margin_s) * 10 < first + 1
                           and (w.answered_at + offset_s + margin_s) * 10 >= first]
    return full


def epoch_offset() -> float:
    """time.time() - time.monotonic(): the ledgers cut slices from the epoch clock."""
    return time.time() - time.monotonic()


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
    changing: list[float] = []  # when the change was asked for
    changed: list[float] = []  # when it was done

    async def lower_the_rate() -> None:
        command = [sys.executable, "-m", "collector", "prize", "set", "1", "cash", "--rate", "5", "--ledger", dsn]
        changing.append(time.monotonic())
        done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        change = orjson.loads(done.stdout)
        assert change["rate_per_s"] == 5.0 and change["quota"] == 10**6
        changed.append(time.monotonic())

    offset = epoch_offset()
    try:
        for s in services:
            await asyncio.to_thread(s.wait_ready, 2)
        answers = await paced_claims([s.port for s in services], on_half_time=lower_the_rate, changed=changed)
    finally:
        for s in services:
            s.stop()
    # How far the two clocks drifted apart meanwhile, and a millisecond more for reading them: each claim's moment
    # on the epoch clock is known that closely.
    margin = abs(epoch_offset() - offset) + 0.001
    if record_db:
        await ship_all(dsn, record_db)
    wins = [a for a in answers if a.outcome == "won"]
    assert {c for c, _, _ in won_claims(dsn, record_db)} == {w.claim_id for w in wins}  # every win told is recorded

    # Settled before the change was asked for, at 20/s: 2 a slice, every slice.
    before = [a for a in answers if a.answered_at < changing[0]]
    won_before = [a for a in before if a.outcome == "won"]
    assert len(won_before) >= 40  # the offered 200/s really pressed on the limit of 20/s
    for length_s in (0.5, 1.0, 2.0):
        assert most_in_a_window(won_before, length_s) <= window_cap(length_s, 20), length_s
    full = full_slices(before, offset, margin)
    assert len(full) >= 5, f"only {len(full)} slices proven full"  # the claims pressed on the limit slice by slice
    short = {n: len(settled) for n, settled in full.items() if len(settled) < 2}
    assert not short, f"slices that refused a claim having issued fewer than 2: {short}"

    # Sent after the change was done, on whichever instance: 5/s between them, at once.
    after = [a for a in answers if a.sent_at > changed[0]]
    won_after = [a for a in after if a.outcome == "won"]
    assert len(won_after) >= 5
    for length_s in (0.5, 1.0, 2.0):
        assert most_in_a_window(won_after, length_s) <= window_cap(length_s, 5), length_s
    # Every instance went on answering under the new rate; what they issued together obeys it.
    assert {a.port for a in after if a.sent_at > changed[0] + 1.0} == {s.port for s in services}
