"""Polls answered at the edge: deploy/nginx.conf (Debian's nginx) caching cell answers in front of two service hosts
and a collector on one ledger. A cell's answer is cached and served there; 200 phones polling one cell at once send
one request upstream; a phone's If-None-Match is a 304 from the edge; a task disabled or run out leaves the cached
answers within the bound the README gives; with both hosts down the last answers are still served, flagged STALE. Upstream
requests are counted from the hosts' own /metrics, not nginx's."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson
import pytest

from tests.conftest import SAMPLE
from tests.play.conftest import requests_total
from tests.support.builders import csv_records
from tests.support.nginx import Nginx, load_balancer, nginx_available
from tests.support.parts import missing
from tests.support.processes import Process, collector, service

NEXT_POLL_MS, STATUS_POLL_S, TICK_S = 1000, 0.2, 0.3  # an answer's max-age is then 1 s
HERE = "lat=22.5329&lng=113.9305"
ROUTE = "/v1/cells/{cell}"


@dataclass
class Edge:
    lb: Nginx
    hosts: list[Process]
    collector: Process
    ledger: str


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    if not nginx_available():
        missing("nginx", "install Debian's nginx-light to run this test")
    tmp = tmp_path_factory.mktemp("edge")
    snaps, ledger = tmp / "snaps", f"sqlite:///{tmp / 'ledger.sqlite3'}"
    subprocess.run([sys.executable, "-m", "loaders", "build", "--source", str(SAMPLE), "--out", str(snaps), "--quiet"],
                   check=True, timeout=120)
    col = collector(snaps, ledger, "--tick-floor-s", str(TICK_S)).start()
    hosts = [service(snaps, tmp / f"var{k}", "--ledger", ledger, "--collector", col.url, "--status-poll-s",
                     str(STATUS_POLL_S), "--next-poll-ms", str(NEXT_POLL_MS), workers=1).start() for k in range(2)]
    lb: Nginx | None = None
    try:
        for process in (col, *hosts):
            process.wait_ready()
        lb = load_balancer([h.port for h in hosts]).start()
        yield Edge(lb, hosts, col, ledger)
    finally:
        if lb is not None:
            lb.close()
        for process in (*hosts, col):
            process.stop()


def get(url: str, etag: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"If-None-Match": etag} if etag else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def upstream(edge: Edge) -> int:
    """Cell requests the hosts answered (their own count)."""
    return sum(requests_total(h.url, ROUTE) for h in edge.hosts if h.proc is not None and h.proc.poll() is None)


def a_cell(edge: Edge, k: int = 0) -> int:
    """A cell of the sample with envelopes (k: one of several near the centre, a fresh one for each test)."""
    _, _, body = get(f"{edge.hosts[0].url}/v1/nearby?{HERE}")
    return int(sorted(orjson.loads(body)["cells"])[k])


def test_200_phones_on_one_cell_cost_one_upstream_request_and_their_revalidations_none(edge: Edge) -> None:
    url = f"{edge.lb.url}/v1/cells/{a_cell(edge, 0)}"
    before = upstream(edge)
    with ThreadPoolExecutor(max_workers=200) as pool:
        answers = list(pool.map(lambda _: get(url), range(200)))
    assert {status for status, _, _ in answers} == {200}
    assert len({body for _, _, body in answers}) == 1  # one answer for every phone of the cell
    assert upstream(edge) - before == 1  # the lock: one miss went upstream, the other 199 waited for it
    status, headers, body = get(url)
    assert (status, headers["X-Cache-Status"]) == (200, "HIT")
    etag = headers["ETag"]
    status, headers, body = get(url, etag)  # a phone that has the answer
    assert status == 304 and body == b"" and headers["ETag"] == etag
    assert upstream(edge) - before == 1  # answered at the edge


def collector_command(edge: Edge, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "collector", *args, "--ledger", edge.ledger], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def quotas(task_id: int) -> dict[str, str]:
    """The sample's quota of each of a task's prizes."""
    return {row["prize_type"]: row["quota"] for row in csv_records(SAMPLE / "task_prizes.csv")
            if int(row["task_id"]) == task_id}


@pytest.mark.parametrize("change", ["disabled", "run out"])
def test_a_task_disabled_or_run_out_leaves_the_cached_answers_within_max_age_and_one_status_round(
        edge: Edge, change: str) -> None:
    url = f"{edge.lb.url}/v1/cells/{a_cell(edge, 1 if change == 'disabled' else 3)}"
    status, _, body = get(url)
    tasks = orjson.loads(body)["tasks"]
    assert status == 200 and tasks
    task_id = tasks[0]["task_id"]
    get(url)  # cached now
    if change == "disabled":
        collector_command(edge, "task", "disable", str(task_id))
    else:  # every prize's quota down to what is issued: none left
        for prize in quotas(task_id):
            collector_command(edge, "prize", "set", str(task_id), prize, "--quota", "0")
    started, seen = time.monotonic(), True
    bound = NEXT_POLL_MS / 1000 + STATUS_POLL_S + TICK_S  # README: max-age + status_poll_s + the collector's tick
    while seen and time.monotonic() - started < bound + 3:  # bounded: past the bound and a margin, it has failed
        time.sleep(0.05)
        seen = any(t["task_id"] == task_id for t in orjson.loads(get(url)[2])["tasks"])
    gone_after = time.monotonic() - started
    if change == "disabled":
        collector_command(edge, "task", "enable", str(task_id))
    else:
        for prize, quota in quotas(task_id).items():
            collector_command(edge, "prize", "set", str(task_id), prize, "--quota", quota)
    assert not seen, f"task {task_id} still in the edge's answer {gone_after:.1f} s after it was {change}"
    assert gone_after <= bound + 1.0, f"gone after {gone_after:.2f} s; the bound is {bound:.2f} s (+1 s: the change's own run)"


def test_with_every_host_down_the_edge_serves_the_last_answers_flagged_stale(edge: Edge) -> None:
    url = f"{edge.lb.url}/v1/cells/{a_cell(edge, 2)}"
    status, _, body = get(url)
    assert status == 200
    for host in edge.hosts:  # down: their connections refused (this module's last test)
        host.stop()
    deadline = time.monotonic() + 10
    answers = []
    while time.monotonic() < deadline:  # bounded: the 10 s the hosts are down
        answers.append(get(url))
        time.sleep(0.25)
    assert {status for status, _, _ in answers} == {200}
    flags = [headers["X-Cache-Status"] for _, headers, _ in answers]
    assert set(flags) <= {"HIT", "STALE", "UPDATING"} and flags[-1] == "STALE"  # fresh for its max-age, then stale
    assert {b for _, _, b in answers} == {body}
