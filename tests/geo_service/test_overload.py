"""Fault drill: twice the measured capacity offered to /v1/nearby. The capacity of one worker is measured
first (wrk, closed loop); then wrk plays phones that poll at twice that rate and obey the contract
(next_poll_ms after a 200, Retry-After after a 503: bench/lua/phones.lua). The excess is answered 503
overloaded with Retry-After, nothing else fails, and the service is back to plain 200s afterwards.
The shedding threshold is set low so the drill sheds on a fast machine too; bench/faults_bench.py
prints the latencies at the defaults."""

from __future__ import annotations

import resource
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE, build_into
from tests.support.parts import missing
from tests.support.processes import Process, get_json, service

PHONES = REPO / "bench" / "lua" / "phones.lua"
NEXT_POLL_MS = 100


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Process]:
    if shutil.which("wrk") is None:
        missing("wrk", "install Debian's wrk to run the overload drill")
    build_into(SAMPLE, tmp_path / "snaps")
    proc = service(tmp_path / "snaps", tmp_path / "var", "--busy-lag-ms", "2", "--shed-lag-ms", "10",
                   "--next-poll-ms", str(NEXT_POLL_MS), workers=1).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0


def wrk(url: str, connections: int, seconds: int, *script_args: str) -> list[int]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(PHONES), url, "--", *script_args],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return [int(x) for x in next(line for line in out.splitlines() if line.startswith("RESULT")).split()[1:]]


def shed_total(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        line = next(x for x in resp.read().decode().splitlines() if x.startswith("geodrop_shed_requests_total{"))
    return int(float(line.rsplit(" ", 1)[1]))


def test_twice_the_capacity_gets_503s_with_retry_after_for_the_excess_and_nothing_else(served: Process) -> None:
    requests, duration_us = wrk(served.url, 32, 3, "0", "22.5329", "113.9305", "closed")[:2]  # capacity: a closed loop
    capacity = requests / (duration_us / 1e6)
    phones = int(2 * capacity * NEXT_POLL_MS / 1000)  # each polls every NEXT_POLL_MS: twice the capacity
    assert phones <= resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100, "wrk needs a socket a phone"
    shed_before = shed_total(served.url)

    total, _, _, _, ok, shed, retry_after, other, errors, _ = wrk(served.url, phones, 6, str(NEXT_POLL_MS))

    assert shed > 0, f"nothing shed at {phones} phones every {NEXT_POLL_MS} ms (capacity {capacity:.0f}/s)"
    assert retry_after == shed  # every 503 told the phone when to come back
    assert other == 0 and errors == 0  # no other status, no refused, reset or timed-out connection
    assert ok + shed == total and ok > 0
    # Each 503 was a deliberate shed, counted; answers still in flight when wrk stopped were counted but not seen.
    assert shed <= shed_total(served.url) - shed_before <= shed + phones
    time.sleep(1.5)  # the lag estimate decays
    body = get_json(f"{served.url}/v1/nearby?lat=22.5329&lng=113.9305")
    assert body["pois"]  # answering normally again
