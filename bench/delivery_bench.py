"""Benchmark delivery: what one dispatcher pushes to a fast loopback partner, its CPU per delivery, win-to-delivered
latency under a steady stream of wins, and the measured rate against the configured one.

    .venv/bin/python bench/delivery_bench.py [--wins 20000] [--backends sqlite mysql]
                                            [--mysql mysql://root@127.0.0.1:3306/test] [--json bench/out/delivery.json]

Each backend gets a fresh record database. "push": --wins wins landed at once, one `geo-deliver run` process on a
channel with no effective rate limit (1e6/s, 512 calls in flight: one lease a 100 ms slice caps a dispatcher at
10 x max_in_flight a second) against the demo partner (`geo-deliver partner`,
its own process: it checks every signature and applies each delivery_id once); deliveries/s from the first to the
last recorded delivery, CPU seconds per delivery of the dispatcher and of the partner. "steady": 400 wins a second
landed in 40 ms batches for 10 s while the dispatcher runs (channel at 2,000/s); win to recorded-delivered p50 and
p99 (won_at to delivered_at: the dispatcher's own record, so the partner's answer and the batched write are in
it). "paced": a backlog on a channel configured at 1,000/s; delivered per second over 10 s against 1,000.
Everything shares this machine's two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import cpu_seconds, drop_ledger_tables, free_port, wait_ready  # noqa: E402

from tests.support.deliveries import SECRET_ENV, channel, land_wins, write_channels  # noqa: E402
from tests.support.ledgers import sql_rows  # noqa: E402
from tests.support.partner_stub import SECRET  # noqa: E402

PY = sys.executable
ENV = {**os.environ, SECRET_ENV: SECRET}


def start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, "-m", "delivery", *args], env=ENV, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def delivered(dsn: str) -> int:
    return int(sql_rows(dsn, "SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'")[0][0])


def wait_delivered(dsn: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while delivered(dsn) < count:  # bounded by the deadline
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {delivered(dsn)} of {count} delivered in {timeout_s:g} s")
        time.sleep(0.2)


def fresh(backend: str, mysql: str, folder: Path) -> str:
    if backend == "mysql":
        drop_ledger_tables(mysql)
        return mysql
    path = folder / f"{backend}-{time.monotonic_ns()}.sqlite3"
    return f"sqlite:///{path}"


def partner(folder: Path, rate: float, in_flight: int) -> tuple[subprocess.Popen[bytes], Path]:
    port = free_port()
    channels = write_channels(folder / f"channels-{port}.json", channel("wallet", f"http://127.0.0.1:{port}", ["cash"],
                                                                          rate_per_s=rate, max_in_flight=in_flight,
                                                                          timeout_s=5))
    proc = start("partner", "--port", str(port), "--channels", str(channels))
    wait_ready(f"http://127.0.0.1:{port}/statement/wallet")
    return proc, channels


def push(backend: str, mysql: str, folder: Path, wins: int) -> dict[str, Any]:
    dsn = fresh(backend, mysql, folder)
    land_wins(dsn, [f"push-{i}" for i in range(wins)], "cash")
    partner_proc, channels = partner(folder, 1e6, 512)
    port = free_port()
    dispatcher = start("run", "--ledger", dsn, "--channels", str(channels), "--port", str(port))
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        cpu_before = cpu_seconds([dispatcher.pid]), cpu_seconds([partner_proc.pid])
        wait_delivered(dsn, wins, 300)
        cpu_after = cpu_seconds([dispatcher.pid]), cpu_seconds([partner_proc.pid])
    finally:
        stop(dispatcher)
        stop(partner_proc)
    first, last = sql_rows(dsn, "SELECT MIN(delivered_at), MAX(delivered_at) FROM deliveries")[0]
    seconds = float(last) - float(first)
    return {"deliveries_per_s": round(wins / seconds), "dispatcher_cpu_ms_per_delivery":
            round((cpu_after[0] - cpu_before[0]) / wins * 1000, 3),
            "partner_cpu_ms_per_delivery": round((cpu_after[1] - cpu_before[1]) / wins * 1000, 3)}


def steady(backend: str, mysql: str, folder: Path) -> dict[str, Any]:
    dsn = fresh(backend, mysql, folder)
    land_wins(dsn, ["warm"], "cash")
    partner_proc, channels = partner(folder, 2000, 64)
    port = free_port()
    dispatcher = start("run", "--ledger", dsn, "--channels", str(channels), "--port", str(port))
    total = 0
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        wait_delivered(dsn, 1, 30)
        started = time.monotonic()
        for batch in range(250):  # 10 s: 16 wins every 40 ms
            land_wins(dsn, [f"steady-{batch}-{i}" for i in range(16)], "cash")
            total += 16
            time.sleep(max(0.0, started + (batch + 1) * 0.04 - time.monotonic()))
        wait_delivered(dsn, total + 1, 60)
    finally:
        stop(dispatcher)
        stop(partner_proc)
    latency = sorted(float(d) - float(w) for w, d in sql_rows(
        dsn, "SELECT won_at, delivered_at FROM deliveries WHERE claim_id LIKE 'steady-%'"))
    return {"wins": total, "p50_ms": round(latency[len(latency) // 2] * 1000, 1),
            "p99_ms": round(latency[int(len(latency) * 0.99)] * 1000, 1)}


def paced(backend: str, mysql: str, folder: Path) -> dict[str, Any]:
    dsn = fresh(backend, mysql, folder)
    land_wins(dsn, [f"paced-{i}" for i in range(20_000)], "cash")
    partner_proc, channels = partner(folder, 1000, 128)
    port = free_port()
    dispatcher = start("run", "--ledger", dsn, "--channels", str(channels), "--port", str(port))
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        wait_delivered(dsn, 1000, 30)  # past the start
        before, started = delivered(dsn), time.monotonic()
        time.sleep(10)
        after, ended = delivered(dsn), time.monotonic()
    finally:
        stop(dispatcher)
        stop(partner_proc)
    rate = (after - before) / (ended - started)
    return {"configured_per_s": 1000, "measured_per_s": round(rate, 1), "ratio": round(rate / 1000, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wins", type=int, default=20_000, help="Wins landed for the push run (default 20000).")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "mysql"], choices=("sqlite", "mysql"))
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test", help="The MariaDB to use.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for backend in args.backends:
            results[backend] = {"push": push(backend, args.mysql, folder, args.wins),
                                "steady": steady(backend, args.mysql, folder),
                                "paced": paced(backend, args.mysql, folder)}
            r = results[backend]
            print(f"{backend:7} push: {r['push']['deliveries_per_s']:,} deliveries/s, dispatcher "
                  f"{r['push']['dispatcher_cpu_ms_per_delivery']} ms CPU each, partner "
                  f"{r['push']['partner_cpu_ms_per_delivery']} ms | steady {r['steady']['wins']} wins: win to delivered "
                  f"p50 {r['steady']['p50_ms']} ms, p99 {r['steady']['p99_ms']} ms | paced: {r['paced']['measured_per_s']}/s "
                  f"of 1,000 ({r['paced']['ratio']})", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
