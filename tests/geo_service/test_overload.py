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
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from geo_service.tokens import mint
from tests.conftest import REPO, SAMPLE, build_into
from tests.support.nginx import load_balancer, nginx_available
from tests.support.parts import missing
from tests.support.processes import Process, free_port, get_json, service
from tests.test_error_shape import assert_error_shape

PHONES = REPO / "bench" / "lua" / "phones.lua"
NEXT_POLL_MS = 100
SHARE_BEHIND_NGINX = 0.35
TOKEN_SECRET = "t" * 32


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

    total, _, _, _, ok, shed, retry_after, other, errors, _, _ = wrk(served.url, phones, 6, str(NEXT_POLL_MS))

    assert shed > 0, f"nothing shed at {phones} phones every {NEXT_POLL_MS} ms (capacity {capacity:.0f}/s)"
    assert retry_after == shed  # every 503 told the phone when to come back
    assert other == 0 and errors == 0  # no other status, no refused, reset or timed-out connection
    assert ok + shed == total and ok > 0
    # Each 503 was a deliberate shed, counted; answers still in flight when wrk stopped were counted but not seen.
    assert shed <= shed_total(served.url) - shed_before <= shed + phones
    time.sleep(1.5)  # the lag estimate decays
    body = get_json(f"{served.url}/v1/nearby?lat=22.5329&lng=113.9305")
    assert body["pois"]  # answering normally again


@pytest.fixture
def behind_nginx(tmp_path: Path) -> Iterator[Process]:
    """A service at its default shedding settings (nginx sheds first), one worker, not yet behind anything."""
    if shutil.which("wrk") is None:
        missing("wrk", "install Debian's wrk to run the overload drill")
    if not nginx_available():
        missing("nginx", "install Debian's nginx-light to run the drill through the load balancer")
    build_into(SAMPLE, tmp_path / "snaps")
    proc = service(tmp_path / "snaps", tmp_path / "var", "--next-poll-ms", str(NEXT_POLL_MS), "--token-secret", TOKEN_SECRET,
                   workers=1).start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0


def test_through_nginx_twice_the_capacity_is_shed_in_front_and_accepted_polls_stay_fast(behind_nginx: Process) -> None:
    # The capacity of the deployment: polls answered through nginx in a closed loop, its limits lifted.
    unlimited = load_balancer([behind_nginx.port], {"polls": 10**6}).start()
    try:
        requests, duration_us = wrk(unlimited.url, 32, 3, "0", "22.5329", "113.9305", "closed")[:2]
    finally:
        unlimited.close()
    capacity = requests / (duration_us / 1e6)
    # Sized as the README says: the polls zone at a share of what the hosts answer. Here nginx and wrk share the
    # host's two cores with the service, so its share is lower than on a balancer of its own.
    lb = load_balancer([behind_nginx.port], {"polls": int(SHARE_BEHIND_NGINX * capacity)}).start()
    try:
        phones = int(2 * capacity * NEXT_POLL_MS / 1000)
        assert phones <= resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 100, "wrk needs a socket a phone"
        # Phones start over the first half second, as a crowd does, not all in one poll interval.
        total, _, _, _, ok, shed, retry_after, other, errors, _, accepted_p99_us = wrk(lb.url, phones, 6, "500")
    finally:
        lb.close()
    assert shed > 0 and ok > 0 and ok + shed == total
    assert retry_after == shed  # every 503 told the phone when to come back
    assert other == 0 and errors == 0  # no other status; no refused, reset or timed-out connection
    # No queue formed behind nginx: directly, the same load holds accepted polls about a second at p99. The figure
    # itself (30-40 ms here, target 50) is bench/faults_bench.py's to measure: a timed bound this machine's noise
    # cannot cross is all a test may hold.
    assert accepted_p99_us < 250_000, f"accepted polls' p99 is {accepted_p99_us / 1000:.1f} ms (at most)"


def test_nginxs_refusals_have_the_services_error_shape_and_claims_are_limited_per_player(behind_nginx: Process) -> None:
    lb = load_balancer([behind_nginx.port], {"polls": 1, "claims_per_player": 1}).start()
    a, b = (f"Bearer {mint(user, TOKEN_SECRET, int(time.time()) + 600)}" for user in ("player-a", "player-b"))
    try:
        polls = [_request(f"{lb.url}/v1/nearby?lat=22.5329&lng=113.9305") for _ in range(4)]
        cells = [_request(f"{lb.url}/v1/cells/1") for _ in range(2)]  # answered from the edge cache, not the polls zone
        claims = [_request(f"{lb.url}/v1/claims", b"{}", a) for _ in range(4)]
        other_player = _request(f"{lb.url}/v1/claims", b"{}", b)
        health = _request(f"{lb.url}/healthz")
    finally:
        lb.close()
    assert polls[0][0] == 200 and 503 in [status for status, _, _ in polls]
    assert [status for status, _, _ in cells] == [cells[0][0]] * 2 and cells[0][0] != 503  # the polls zone spent
    assert claims[0][0] == 400 and 429 in [status for status, _, _ in claims]  # the service saw the first: no body
    assert other_player[0] == 400  # another player's claims are not held back by player a's
    assert health[0] == 200  # the operators' networks (loopback among them) reach /healthz
    outsider = load_balancer([behind_nginx.port], operators=["127.0.0.2"]).start()  # 127.0.0.1 is not an operator
    dead = load_balancer([free_port()]).start()  # no host answers
    try:
        refused = [_request(f"{outsider.url}{path}") for path in ("/healthz", "/metrics")]
        refused.append(_request(f"{outsider.url}/v1/admin/reload", b"{}"))
        unreachable = _request(f"{dead.url}/v1/nearby?lat=22.5329&lng=113.9305")
    finally:
        outsider.close()
        dead.close()
    for status, headers, body in refused:
        assert status == 403
        assert_error_shape(403, headers, orjson.loads(body), "forbidden")
    status, headers, body = unreachable
    assert status == 503
    assert_error_shape(503, headers, orjson.loads(body), "service_unavailable")  # not nginx's HTML 502
    assert int(headers["Retry-After"]) >= 1
    for status, headers, body in polls + cells + claims:
        if status in (429, 503):
            assert_error_shape(status, headers, orjson.loads(body), "overloaded" if status == 503 else "too_many_requests")
            assert int(headers["Retry-After"]) >= 1 and headers["X-Request-Id"]


def _request(url: str, body: bytes | None = None, authorization: str = "") -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Authorization": authorization} if authorization else {},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()
