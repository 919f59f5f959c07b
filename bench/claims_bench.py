"""Benchmark POST /v1/claims: claims/s and latency on SQLite and MariaDB, one hot prize vs 1,000 tasks.

    .venv/bin/python bench/claims_bench.py [--claims 4000] [--concurrency 64] [--mysql mysql://root@127.0.0.1:3306/test]

Each scenario starts `geo-service serve --workers 2` on a fresh ledger and a snapshot made for it:
"hot" sends every claim to one task (two prizes, quotas never run out, no rate limit: every
claim contends for the same counter rows); "spread" sends each claim to one of 1,000 tasks at
random. Every claim comes from a distinct player standing on a POI of its task, so every one
runs the whole transaction. Latency is per request as the client sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import drop_ledger_tables, free_port, wait_ready  # noqa: E402

from geo_service.tokens import mint  # noqa: E402
from tests.support.builders import claim_poi, write_claims_data  # noqa: E402

PY = sys.executable
SECRET = "bench-secret"
POIS_PER_TASK = 5


async def load(port: int, tasks: int, claims: int, concurrency: int) -> tuple[list[float], Counter[str], float]:
    rng = random.Random(1)
    expires = int(time.time()) + 3600
    limit = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        task = rng.randint(1, tasks)
        poi_id, lat, lng = claim_poi(task, i % POIS_PER_TASK)
        body = {"claim_id": f"b{i}", "task_id": task, "poi_id": poi_id, "lat": lat, "lng": lng}
        headers = {"Authorization": f"Bearer {mint(f'p{i}', SECRET, expires)}"}
        async with limit:
            started = time.perf_counter()
            async with session.post(f"http://127.0.0.1:{port}/v1/claims", json=body, headers=headers) as resp:
                answer = await resp.json()
            latencies.append(time.perf_counter() - started)
            outcomes[answer.get("outcome") or answer["error"]["code"]] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(one(i, session) for i in range(claims)))
        return latencies, outcomes, time.perf_counter() - started


def scenario(backend: str, dsn: str, name: str, tasks: int, claims: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data, snaps = Path(tmp) / "data", Path(tmp) / "snaps"
        write_claims_data(data, {"cash": 10**7, "coupon": 10**7}, pois=POIS_PER_TASK, tasks=tasks)
        subprocess.run([PY, "-m", "loaders", "build", "--source", str(data), "--out", str(snaps), "--quiet"], check=True)
        ledger = f"sqlite:///{tmp}/ledger.sqlite3" if backend == "sqlite" else dsn
        if backend == "mysql":
            drop_ledger_tables(dsn)
        port = free_port()
        server = subprocess.Popen([PY, "-m", "geo_service", "serve", "--snapshots", str(snaps), "--port", str(port),
                                   "--workers", "2", "--token-secret", SECRET, "--ledger", ledger, "--win-cap", "1000000",
                                   "--data-dir", tmp, "--log-level", "warning"])
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz")
            latencies, outcomes, seconds = asyncio.run(load(port, tasks, claims, concurrency))
        finally:
            server.terminate()
            server.wait(timeout=60)
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"claims   {backend:<7} {name:<7} {len(ms) / seconds:>8,.0f} claims/s  p50 {statistics.median(ms):6.1f} ms  "
          f"p99 {p99:6.1f} ms  outcomes {dict(outcomes)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=int, default=4000, help="Claims per scenario.")
    ap.add_argument("--concurrency", type=int, default=64, help="Claims in flight at once.")
    ap.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test", help="MariaDB for the mysql scenarios.")
    ap.add_argument("--backends", nargs="*", default=["sqlite", "mysql"], help="Which ledgers to measure.")
    args = ap.parse_args()
    print(f"claims benchmark: {args.claims:,} claims per scenario, {args.concurrency} in flight, 2 workers")
    for backend in args.backends:
        for name, tasks in (("hot", 1), ("spread", 1000)):
            scenario(backend, args.mysql, name, tasks, args.claims, args.concurrency)


if __name__ == "__main__":
    main()
