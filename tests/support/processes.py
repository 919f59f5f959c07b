"""geo-service and geo-collector as operators run them: real process trees on free loopback ports."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout_s: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return orjson.loads(resp.read())


@dataclass
class Process:
    """`python -m <module> <args>` on its own port; stop() sends SIGTERM and waits."""

    module: str
    args: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    preexec: Callable[[], None] | None = None  # run in the child before it starts (a lowered limit, say)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Process:
        cmd = [sys.executable, "-m", self.module, *self.args, "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, preexec_fn=self.preexec)
        return self

    def health(self) -> dict[str, Any]:
        return dict(get_json(f"{self.url}/healthz"))

    def wait_ready(self, workers: int = 1, timeout_s: float = 60) -> dict[int, int]:
        """Return {worker_id: pid} once `workers` workers answer /healthz (collector: worker 0)."""
        seen: dict[int, int] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < workers:  # bounded by the deadline
            assert self.proc is not None, f"{self.module} was not started"
            assert self.proc.poll() is None, f"{self.module} exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, f"only workers {sorted(seen)} of {self.module} answered"
            try:
                health = self.health()
                seen[health.get("worker_id", 0)] = health.get("pid", 0)
            except OSError:
                time.sleep(0.1)
        return seen

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def service(snapshots: Path, data_dir: Path, *extra: str, workers: int = 2) -> Process:
    """A geo-service serve process tree (not started)."""
    return Process("geo_service", ["serve", "--snapshots", str(snapshots), "--workers", str(workers),
                                   "--data-dir", str(data_dir), *extra])


def collector(snapshots: Path, ledger: str, *extra: str) -> Process:
    """A geo-collector run process (not started)."""
    return Process("collector", ["run", "--snapshots", str(snapshots), "--ledger", ledger, *extra])


@contextmanager
def running_pair(svc: Process, col: Process) -> Iterator[None]:
    """Run a service that takes task status from a collector (which may ask it back): both ready inside,
    both stopped after."""
    svc.args += ["--collector", col.url]
    try:
        col.start()
        svc.start()
        col.wait_ready()
        svc.wait_ready()
        yield
    finally:
        svc.stop()
        col.stop()
