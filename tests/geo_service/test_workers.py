"""geo-service serve --workers 2 as operators run it: shared port, shared mmap'd snapshot, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=2) as resp:
        return orjson.loads(resp.read())  # type: ignore[no-any-return]


def test_two_workers_share_the_port_and_one_mapped_copy_of_the_snapshot(sample_snapshots: Path, tmp_path: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "geo_service", "serve", "--snapshots", str(sample_snapshots), "--port", str(port),
           "--workers", "2", "--log-level", "warning", "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        workers = _workers(port)
        assert sorted(workers) == [0, 1]
        body = _get(f"http://127.0.0.1:{port}/v1/nearby?lat=22.5329&lng=113.9305")
        assert body["seq"] == 1 and body["pois"]
        copies = list((tmp_path / "mapped").glob("1-*/cells.npy"))  # one private copy for the host's workers
        assert len(copies) == 1
        cells, source = str(copies[0].resolve()), str((sample_snapshots / "1" / "cells.npy").resolve())
        inodes = set()
        for pid in workers.values():
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            assert not [line for line in maps if line.endswith(source)]  # never the snapshots folder itself
            mapped = [line.split() for line in maps if line.endswith(cells)]
            assert mapped, f"worker {pid} does not map {cells}"
            assert all(fields[1].startswith("r") and fields[1][3] == "s" for fields in mapped)  # read-only, shared
            inodes |= {fields[4] for fields in mapped}
        assert len(inodes) == 1  # the same file, so one copy in the page cache
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    for pid in workers.values():
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)
    assert b"Traceback" not in (proc.stderr.read() if proc.stderr else b"")


def _workers(port: int, dead: int = 0) -> dict[int, int]:
    """Worker id -> pid of each worker that answers /healthz, skipping a `dead` pid; up to 30 s for two."""
    workers: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while len(workers) < 2 and time.monotonic() < deadline:  # bounded
        try:
            health = _get(f"http://127.0.0.1:{port}/healthz")
            if health["pid"] != dead:
                workers[health["worker_id"]] = health["pid"]
        except OSError:
            time.sleep(0.1)
    return workers


def test_a_killed_worker_is_restarted_while_the_other_serves(sample_snapshots: Path, tmp_path: Path) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "geo_service", "serve", "--snapshots", str(sample_snapshots), "--port", str(port),
           "--workers", "2", "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        before = _workers(port)
        assert sorted(before) == [0, 1]
        os.kill(before[0], signal.SIGKILL)
        time.sleep(0.2)  # the kernel drops the dead worker's socket from the port's group
        answered = {_get(f"http://127.0.0.1:{port}/healthz")["pid"] for _ in range(20)}  # fresh connections
        assert before[0] not in answered
        after = _workers(port, dead=before[0])
        assert sorted(after) == [0, 1] and after[0] != before[0] and after[1] == before[1]
        assert _get(f"http://127.0.0.1:{port}/v1/nearby?lat=22.5329&lng=113.9305")["pois"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    log = proc.stderr.read() if proc.stderr else b""
    assert b"worker died; restarting it" in log and b"Traceback" not in log


@pytest.mark.parametrize("after_s", [0.3, 0.6, 0.9])
def test_a_stop_that_comes_while_a_worker_restarts_stops_it_too(sample_snapshots: Path, tmp_path: Path,
                                                                 after_s: float) -> None:
    """SIGTERM within a second of a worker's death, while the supervisor starts its replacement: every worker
    stops, the supervisor exits in its grace period, and nothing is left holding the port."""
    port = _free_port()
    cmd = [sys.executable, "-m", "geo_service", "serve", "--snapshots", str(sample_snapshots), "--port", str(port),
           "--workers", "2", "--data-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        before = _workers(port)
        os.kill(before[1], signal.SIGKILL)
        time.sleep(after_s)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)  # shutdown_timeout_s + 5 at most, then a worker that did not stop is killed
    finally:
        if proc.poll() is None:  # failed: stop all of it, workers included
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(OSError):  # no worker of it answers any more
        _get(f"http://127.0.0.1:{port}/healthz")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_serve_refuses_bad_settings_with_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "geo_service", "serve", "--workers", "0"],
                          capture_output=True, text=True, timeout=30, env={**os.environ})
    assert done.returncode == 2 and "workers: must be in [1, 64]" in done.stderr
