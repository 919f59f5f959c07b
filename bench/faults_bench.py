"""Benchmark the two load drills' latencies: normal polling beside 2,000 idle keep-alive connections and two
slow-drip clients, against its unloaded value; and twice the measured capacity offered by phones.

    .venv/bin/python bench/faults_bench.py [--seconds 10] [--rounds 3] [--idle 2000] [--json bench/out/faults.json]

One `geo-service serve --workers 1` on the sample snapshot at its default settings, pinned to CPU 0, and
wrk pinned to CPU 1 (taskset; unpinned where there is one CPU), so the load generator and the service do
not take turns on one core. Normal polling: wrk -t1 -c16 in a closed loop (bench/lua/phones.lua "closed"),
alone and then while this script holds --idle keep-alive connections open (each asked one poll first)
and two clients drip a request line a byte every 100 ms. Overload: the closed loop at -c32 measures the
capacity C; then wrk plays phones that obey the contract (next_poll_ms, Retry-After) polling at 2C,
with the service's next_poll_ms set to 100 ms so that 2C takes a few thousand phones rather than
a hundred thousand; printed: answers a second, the share shed (503), p50 and p99 of every answer,
socket errors. The same again through deploy/nginx.conf (Debian's nginx), its polls zone sized at 0.35 of
the capacity through it, with the accepted polls' p99 (an upper bound: bench/lua/phones.lua). Rounds
alternate; medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import free_port, wait_ready  # noqa: E402

from tests.support.nginx import load_balancer  # noqa: E402  (deploy/nginx.conf on loopback, as the drill runs it)

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
PHONES = REPO / "bench" / "lua" / "phones.lua"
POLL = "/v1/nearby?lat=22.5329&lng=113.9305"
NEXT_POLL_MS = 100
NGINX_SHARE = 0.35  # the polls zone's share of the capacity: nginx, wrk and the service share two cores here


def pinned(cpu: int) -> list[str]:
    """taskset prefix that keeps a process on one CPU, when there are two or more and taskset exists."""
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") else []


@contextmanager
def serving(snaps: Path, tmp: Path, *extra: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([*pinned(0), PY, "-m", "geo_service", "serve", "--snapshots", str(snaps), "--port", str(port),
                             "--workers", "1", "--log-level", "error", "--data-dir", str(tmp / f"var{port}"), *extra])
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def wrk(port: int, connections: int, seconds: int, *args: str) -> dict[str, float]:
    out = subprocess.run([*pinned(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(PHONES),
                          f"http://127.0.0.1:{port}", "--", *args], capture_output=True, text=True, check=True).stdout
    fields = [int(x) for x in next(line for line in out.splitlines() if line.startswith("RESULT")).split()[1:]]
    requests, duration_us, p50, p99, ok, shed, _, other, errors, _, accepted_p99 = fields
    return {"rps": requests / (duration_us / 1e6), "p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "ok": ok, "shed": shed,
            "other": other, "socket_errors": errors, "accepted_p99_ms": accepted_p99 / 1000}


def closed_loop(port: int, connections: int, seconds: int) -> dict[str, float]:
    return wrk(port, connections, seconds, "0", "22.5329", "113.9305", "closed")


class Crowd:
    """--idle keep-alive connections (each asked one poll, then silent) and two slow-drip clients, held open
    from a thread of their own until close()."""

    def __init__(self, port: int, idle: int) -> None:
        self.port, self.idle = port, idle
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.writers: list[asyncio.StreamWriter] = []
        self.drips: list[asyncio.Task[None]] = []

    def open(self) -> Crowd:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout=120)
        return self

    async def _open(self) -> None:
        for start in range(0, self.idle, 200):  # 200 at a time
            self.writers += await asyncio.gather(*(self._one() for _ in range(start, min(start + 200, self.idle))))
        self.drips = [asyncio.create_task(self._drip()) for _ in range(2)]

    async def _one(self) -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET {POLL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")).split(b":")[1])
        await reader.readexactly(length)
        return writer

    async def _drip(self) -> None:
        line = f"GET {POLL} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        for _ in range(1000):  # bounded: each connection is closed by the service's keep-alive timer, then redone
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                for byte in line:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.1)
            except ConnectionError:
                pass
            writer.close()

    def close(self) -> None:
        async def close() -> None:
            for task in self.drips:
                task.cancel()
            for writer in self.writers:
                writer.close()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def round_once(snaps: Path, tmp: Path, seconds: int, idle: int) -> dict[str, Any]:
    with serving(snaps, tmp) as port:
        alone = closed_loop(port, 16, seconds)
        crowd = Crowd(port, idle).open()
        try:
            beside = closed_loop(port, 16, seconds)
        finally:
            crowd.close()
    with serving(snaps, tmp, "--next-poll-ms", str(NEXT_POLL_MS)) as port:
        capacity = closed_loop(port, 32, seconds)["rps"]
        phones = int(2 * capacity * NEXT_POLL_MS / 1000)
        overload = wrk(port, phones, seconds, str(NEXT_POLL_MS))
    with serving(snaps, tmp, "--next-poll-ms", str(NEXT_POLL_MS)) as port:
        through = through_nginx(port, seconds)
    return {"alone": alone, "beside_idle": beside, "capacity_rps": capacity, "phones": phones, "overload": overload,
            "nginx": through}


def through_nginx(port: int, seconds: int) -> dict[str, Any]:
    """The overload through deploy/nginx.conf: the deployment's capacity in a closed loop through nginx (limits
    lifted), then twice it offered by phones with the polls zone sized at NGINX_SHARE of it."""
    lb = load_balancer([port], {"polls": 10**6}).start()
    try:
        capacity = wrk(lb.port, 32, seconds, "0", "22.5329", "113.9305", "closed")["rps"]
    finally:
        lb.close()
    lb = load_balancer([port], {"polls": int(NGINX_SHARE * capacity)}).start()
    try:
        overload = wrk(lb.port, int(2 * capacity * NEXT_POLL_MS / 1000), seconds, "500")
    finally:
        lb.close()
    return {"capacity_rps": capacity, "overload": overload}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="Length of each wrk run (default 10).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds; medians are printed (default 3).")
    parser.add_argument("--idle", type=int, default=2000, help="Idle keep-alive connections held open (default 2000).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install wrk")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        snaps = Path(tmp) / "snaps"
        subprocess.run([PY, "-m", "loaders", "build", "--source", str(REPO / "data" / "sample"), "--out", str(snaps),
                        "--quiet"], check=True)
        for i in range(args.rounds):
            rounds.append(round_once(snaps, Path(tmp), args.seconds, args.idle))
            print(f"round {i + 1}: {json.dumps(rounds[-1])}", flush=True)

    def med(*path: str) -> float:
        values = []
        for r in rounds:
            value: Any = r
            for key in path:
                value = value[key]
            values.append(value)
        return float(statistics.median(values))

    shed_share = statistics.median(r["overload"]["shed"] / max(1, r["overload"]["ok"] + r["overload"]["shed"]) for r in rounds)
    print(f"\nnormal polling (wrk -c16, closed loop), medians of {args.rounds} rounds:")
    print(f"  alone:                 {med('alone', 'rps'):9,.0f} polls/s  p50 {med('alone', 'p50_ms'):6.2f} ms  "
          f"p99 {med('alone', 'p99_ms'):6.2f} ms")
    print(f"  beside {args.idle} idle + 2 drips: {med('beside_idle', 'rps'):9,.0f} polls/s  "
          f"p50 {med('beside_idle', 'p50_ms'):6.2f} ms  p99 {med('beside_idle', 'p99_ms'):6.2f} ms  "
          f"(p99 ratio {med('beside_idle', 'p99_ms') / med('alone', 'p99_ms'):.2f})")
    print(f"overload: capacity {med('capacity_rps'):,.0f}/s; {med('phones'):,.0f} phones polling every {NEXT_POLL_MS} ms "
          f"(2x):")
    print(f"  answered {med('overload', 'rps'):,.0f}/s, shed {shed_share:.0%} (503 + Retry-After), "
          f"p50 {med('overload', 'p50_ms'):.1f} ms, p99 {med('overload', 'p99_ms'):.1f} ms (target < 50), "
          f"other statuses {med('overload', 'other'):.0f}, socket errors {med('overload', 'socket_errors'):.0f}")
    ng_share = statistics.median(r["nginx"]["overload"]["shed"] / max(1, r["nginx"]["overload"]["ok"]
                                                                      + r["nginx"]["overload"]["shed"]) for r in rounds)
    print(f"overload through nginx: capacity {med('nginx', 'capacity_rps'):,.0f}/s through it; 2x offered, polls zone at "
          f"{NGINX_SHARE:.0%} of it:")
    print(f"  answered {med('nginx', 'overload', 'rps'):,.0f}/s, shed {ng_share:.0%}, accepted p99 "
          f"{med('nginx', 'overload', 'accepted_p99_ms'):.1f} ms at most (target < 50), p99 of all "
          f"{med('nginx', 'overload', 'p99_ms'):.1f} ms, other statuses {med('nginx', 'overload', 'other'):.0f}, "
          f"socket errors {med('nginx', 'overload', 'socket_errors'):.0f}")
    print(f"  direct, for comparison: accepted p99 {med('overload', 'accepted_p99_ms'):.1f} ms at most")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
