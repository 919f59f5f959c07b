"""The player's side in a real browser (Debian's Chromium driven by Playwright) against a real geo-service on the
sample: the snapshot both modules serve, the service each starts, tokens, and the service's own request counts."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from geo_service.tokens import mint
from tests.conftest import SAMPLE
from tests.support.processes import Process, service

SECRET = "play-secret"


@pytest.fixture(scope="session")
def play_snapshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample, built once (in a process of its own: Playwright's sync API holds this thread's event loop)."""
    snaps = tmp_path_factory.mktemp("play") / "snaps"
    subprocess.run([sys.executable, "-m", "loaders", "build", "--source", str(SAMPLE), "--out", str(snaps), "--quiet"],
                   check=True, timeout=120)
    return snaps


@dataclass
class Site:
    service: Process
    ledger: str  # its DSN
    snapshots: Path


@contextmanager
def running_service(snaps: Path, tmp: Path, *extra: str) -> Iterator[Site]:
    """A geo-service (one worker) on the sample with a SQLite ledger, claims on and movement unchecked (the tests
    walk faster than a player)."""
    ledger = f"sqlite:///{tmp / 'ledger.sqlite3'}"
    svc = service(snaps, tmp / "var", "--ledger", ledger, "--token-secret", SECRET, "--max-speed-mps", "1000000000",
                  *extra, workers=1)
    try:
        svc.start().wait_ready()
        yield Site(svc, ledger, snaps)
    finally:
        svc.stop()


def token(user: str) -> str:
    return mint(user, SECRET, int(time.time()) + 3600)


def requests_total(url: str, route: str, status: str | None = None) -> int:
    """Return how many requests of a route (of one status, or all) the service has answered: its /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pattern = re.compile(r'^geodrop_http_requests_total\{[^}]*route="([^"]*)",status="([^"]*)"\} ([0-9.e+]+)$', re.M)
    return sum(int(float(n)) for r, s, n in pattern.findall(text) if r == route and status in (None, s))
