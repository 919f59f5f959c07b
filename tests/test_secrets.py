"""Secrets stay secret: `make run` itself (its secrets swapped for ones of this test, the console's operator token
among them), plus a service pulling
from an origin with a password and a collector reading a MySQL source with one. No log line, no /healthz or
/metrics body and no process list entry holds any of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import REPO, SAMPLE, build_into
from tests.support.processes import free_port

SECRETS = {"DEMO_SECRET": "token-secret-7f3a9c1e5b2d4f6a8c0e", "DEMO_ADMIN": "admin-token-2b4d6f8a0c1e3a5c7e9b",
           "DEMO_PARTNER": "partner-secret-9e8d7c6b5a4f3e2d1c0b", "DEMO_CONSOLE": "console-token-4d3c2b1a0f9e8d7c6b5a"}
ORIGIN_PASSWORD, DSN_PASSWORD = "origin-password-5c4b3a2f1e0d", "dsn-password-1a2b3c4d5e6f"
EVERY = [*SECRETS.values(), ORIGIN_PASSWORD, DSN_PASSWORD]


def _ready(url: str, deadline: float) -> None:
    while True:  # bounded by the deadline
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)


def _bodies(urls: list[str]) -> str:
    out = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                out.append(resp.read().decode())
        except urllib.error.HTTPError as exc:
            out.append(exc.read().decode())
    return "\n".join(out)


def _process_list() -> str:
    """Every process's command line, as `ps` shows them to any user of the host."""
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return "\n".join(lines)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[dict[str, int], Path]]:
    ports = {name: free_port() for name in ("SERVICE_PORT", "COLLECTOR_PORT", "PARTNER_PORT", "DELIVER_PORT",
                                            "CONSOLE_PORT", "PULLER_PORT", "SOURCE_COLLECTOR_PORT")}
    channels = orjson.loads((SAMPLE / "channels.json").read_bytes())
    for c in channels["channels"]:
        c["url"] = c["url"].replace(":8082/", f":{ports['PARTNER_PORT']}/")
    (tmp_path / "channels.json").write_bytes(orjson.dumps(channels))
    log = (tmp_path / "log").open("wb")
    bin_dir = Path(sys.executable).parent
    make = subprocess.Popen(
        ["make", "-s", "-o", f"{bin_dir}/geo-snapshot", "run", f"BIN={bin_dir}", f"SNAPSHOTS={tmp_path / 'snaps'}",
         f"LEDGER={tmp_path / 'ledger.sqlite3'}", f"CHANNELS={tmp_path / 'channels.json'}",
         f"CONSOLE_DRAFT={tmp_path / 'console.sqlite3'}", f"OPERATORS={tmp_path / 'operators.json'}",
         *[f"{k}={v}" for k, v in ports.items()
           if k in ("SERVICE_PORT", "COLLECTOR_PORT", "PARTNER_PORT", "DELIVER_PORT", "CONSOLE_PORT")]],
        env={**os.environ, **SECRETS},  # as an operator overrides them: make reads ?= variables from the environment
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    build_into(SAMPLE, tmp_path / "pulled")
    # Secrets by environment, as an operator passes them: an origin with a password (nothing listens there, so the
    # puller keeps failing and saying so) and a MySQL source DSN with a wrong one (every read is refused and logged).
    env = {**os.environ, "GEODROP_SERVICE_ORIGIN": f"http://puller:{ORIGIN_PASSWORD}@127.0.0.1:{free_port()}/origin",
           "GEODROP_COLLECTOR_SOURCE": f"mysql://root:{DSN_PASSWORD}@127.0.0.1:3306/test"}
    others = [subprocess.Popen([sys.executable, "-m", "geo_service", "serve", "--snapshots", str(tmp_path / "pulled"),
                                "--workers", "1", "--data-dir", str(tmp_path / "var-puller"),
                                "--port", str(ports["PULLER_PORT"])], env=env, stdout=log, stderr=subprocess.STDOUT),
              subprocess.Popen([sys.executable, "-m", "collector", "run", "--snapshots", str(tmp_path / "pulled"),
                                "--ledger", f"sqlite:///{tmp_path / 'l2.sqlite3'}", "--port",
                                str(ports["SOURCE_COLLECTOR_PORT"]), "--data-dir", str(tmp_path / "var-source")],
                               env=env, stdout=log, stderr=subprocess.STDOUT)]
    try:
        deadline = time.monotonic() + 90
        for name in ("SERVICE_PORT", "COLLECTOR_PORT", "PARTNER_PORT", "DELIVER_PORT", "CONSOLE_PORT", "PULLER_PORT",
                     "SOURCE_COLLECTOR_PORT"):
            _ready(f"http://127.0.0.1:{ports[name]}/healthz", deadline)
        while b"snapshot pull failed" not in (tmp_path / "log").read_bytes():  # bounded by the deadline
            assert time.monotonic() < deadline, "the puller never said it failed"
            time.sleep(0.1)
        time.sleep(1)  # a few more pulls, ticks and source reads fail, and say so
        yield ports, tmp_path / "log"
    finally:
        os.killpg(make.pid, signal.SIGINT)
        for p in others:
            p.send_signal(signal.SIGINT)
        for p in [make, *others]:
            p.wait(timeout=30)
        log.close()


def test_no_log_line_health_body_or_process_list_entry_holds_a_secret(started: tuple[dict[str, int], Path]) -> None:
    ports, log = started
    bodies = _bodies([f"http://127.0.0.1:{port}{path}" for port in ports.values() for path in ("/healthz", "/metrics")])
    processes, logged = _process_list(), log.read_text()
    assert "puller:***@" in bodies  # the origin is shown, its password is not
    assert "snapshot pull failed" in logged  # the puller did fail and say so
    # The console took the operator token make gave it, and its file keeps only the token's hash.
    session = urllib.request.Request(f"http://127.0.0.1:{ports['CONSOLE_PORT']}/v1/session", method="POST",
                                     headers={"Authorization": f"Bearer {SECRETS['DEMO_CONSOLE']}"})
    with urllib.request.urlopen(session, timeout=5) as resp:
        assert orjson.loads(resp.read())["name"] == "demo"
    assert SECRETS["DEMO_CONSOLE"] not in (log.parent / "operators.json").read_text()
    for secret in EVERY:
        assert secret not in logged, f"a log line holds {secret[:12]}..."
        assert secret not in bodies, f"a /healthz or /metrics body holds {secret[:12]}..."
        assert secret not in processes, f"a process list entry holds {secret[:12]}..."
