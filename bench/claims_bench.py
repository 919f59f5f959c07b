"""Benchmark POST /v1/claims on every ledger: SQLite, MariaDB, one Redis node, a 3-master Redis Cluster.

    .venv/bin/python bench/claims_bench.py [--seconds 10] [--connections 64] [--backends sqlite mysql redis redis+cluster]
                                          [--mysql mysql://root@127.0.0.1:3306/test] [--json bench/out/claims.json]

Each scenario starts `geo-service serve --workers 2` on a fresh ledger and a snapshot made for it, then
loads it with wrk (-t2, --connections in flight, a Lua script that gives every request a new claim_id;
needs `apt-get install wrk`): "hot" sends every claim to one task (every claim contends for the same
counters), "spread" to 1,000 tasks. 2,000 players each stand on one POI of their task, so every claim
runs the whole settlement (quotas never run out, no rate limit, no win cap in reach). A 2 s warm-up
precedes each measured run. Printed: claims/s, p50 and p99 as wrk sees them, errors, wins counted in
the ledger afterwards, CPU per claim of the service's workers and of the store (redis-server or
mariadbd), each figure's ratio to MariaDB's in the same scenario, and for Redis how fast one shipper
moves the run's flow records into MariaDB afterwards. Redis nodes run with the
durability the ledger requires (AOF, fsync always). Everything shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import WRK_DONE, children, cpu_seconds, drop_ledger_tables, free_port, run_wrk, wait_ready  # noqa: E402

from geo_service.tokens import mint  # noqa: E402
from tests.support.builders import claim_poi, write_claims_data  # noqa: E402
from tests.support.ledgers import counters, ship_all  # noqa: E402
from tests.support.redis_nodes import start_redis  # noqa: E402

PY = sys.executable
SECRET = "bench-secret"
PLAYERS, POIS_PER_TASK = 2000, 5
LUA = """
local players = {%s}
local n = 0
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("tag", "%s" .. counter)
end
request = function()
  n = n + 1
  local p = players[(n %% #players) + 1]
  local body = '{"claim_id":"' .. tag .. "-" .. n .. '","task_id":' .. p[2] .. ',"poi_id":' .. p[3] ..
    ',"lat":' .. p[4] .. ',"lng":' .. p[5] .. '}'
  return wrk.format("POST", "/v1/claims", {["Authorization"] = "Bearer " .. p[1],
    ["Content-Type"] = "application/json"}, body)
end
"""


def wrk_script(folder: Path, tasks: int, run: str) -> Path:
    expires = int(time.time()) + 7200
    rows = []
    for i in range(PLAYERS):
        task = 1 + i % tasks
        poi_id, lat, lng = claim_poi(task, i % POIS_PER_TASK)
        rows.append(f'{{"{mint(f"p{i}", SECRET, expires)}",{task},{poi_id},{lat},{lng}}}')
    script = folder / f"claims-{run}.lua"
    script.write_text(LUA % (",".join(rows), run) + WRK_DONE)
    return script


def store_pids(backend: str, redis: Any) -> list[int]:
    if backend.startswith("redis"):
        return [node.proc.pid for node in redis.nodes]
    if backend == "mysql":
        return [int(p) for p in subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True, text=True).stdout.split()]
    return []


def ship_rate(ledger: str, mysql: str) -> float:
    """Ship every flow record the run left in the streams into MariaDB; return records shipped a second."""
    drop_ledger_tables(mysql)
    started = time.monotonic()
    shipped = asyncio.run(ship_all(ledger, mysql))
    return shipped / (time.monotonic() - started)


def scenario(backend: str, dsn: str, redis: Any, tasks: int, seconds: int, connections: int,
             mysql: str, player_win_cap: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data, snaps = Path(tmp) / "data", Path(tmp) / "snaps"
        write_claims_data(data, {"cash": 10**9, "coupon": 10**9}, pois=POIS_PER_TASK, tasks=tasks)
        subprocess.run([PY, "-m", "loaders", "build", "--source", str(data), "--out", str(snaps), "--quiet"], check=True)
        ledger = f"sqlite:///{tmp}/ledger.sqlite3" if backend == "sqlite" else dsn
        if backend == "mysql":
            drop_ledger_tables(dsn)
        if redis is not None:
            redis.flush()
        port = free_port()
        server = subprocess.Popen([PY, "-m", "geo_service", "serve", "--snapshots", str(snaps), "--port", str(port),
                                   "--workers", "2", "--token-secret", SECRET, "--ledger", ledger, "--win-cap", "1000000",
                                   "--player-win-cap", str(player_win_cap), "--data-dir", tmp, "--log-level", "error"])
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz")
            run_wrk(port, wrk_script(Path(tmp), tasks, "warm"), 2, connections)
            workers, store = children(server.pid), store_pids(backend, redis)
            before = (cpu_seconds(workers), cpu_seconds(store), sum(i for _, i in counters(ledger).values()))
            result = run_wrk(port, wrk_script(Path(tmp), tasks, "run"), seconds, connections)
            after = (cpu_seconds(workers), cpu_seconds(store), sum(i for _, i in counters(ledger).values()))
            shipped = ship_rate(ledger, mysql) if backend.startswith("redis") else None
        finally:
            server.terminate()
            server.wait(timeout=60)
    claims = max(result["requests"], 1)
    return {**result, "backend": backend, "tasks": tasks, "wins": after[2] - before[2], "ship_per_s": shipped,
            "worker_cpu_ms": (after[0] - before[0]) * 1000 / claims, "store_cpu_ms": (after[1] - before[1]) * 1000 / claims}


def report(results: list[dict[str, Any]]) -> None:
    base = {r["tasks"]: r for r in results if r["backend"] == "mysql"}
    for r in results:
        name = "hot" if r["tasks"] == 1 else "spread"
        ratio = f"{r['rps'] / base[r['tasks']]['rps']:5.1f}x MariaDB" if r["tasks"] in base else ""
        print(f"claims  {r['backend']:<14} {name:<7} {r['rps']:>8,.0f} claims/s  p50 {r['p50_ms']:6.1f} ms  "
              f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']:.0f}  wins {r['wins']:,}  "
              f"cpu/claim: workers {r['worker_cpu_ms']:.2f} ms, store {r['store_cpu_ms']:.2f} ms  {ratio}"
              + (f"  shipped to MariaDB {r['ship_per_s']:,.0f} records/s" if r["ship_per_s"] else ""), flush=True)
    single = {r["tasks"]: r["rps"] for r in results if r["backend"] == "redis"}
    for r in results:
        if r["backend"] == "redis+cluster" and r["tasks"] in single:
            name = "hot" if r["tasks"] == 1 else "spread"
            print(f"claims  cluster / single node ({name}): {r['rps'] / single[r['tasks']]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="Seconds of each measured wrk run.")
    ap.add_argument("--connections", type=int, default=64, help="Claims in flight (wrk connections).")
    ap.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test", help="MariaDB for the mysql scenarios.")
    ap.add_argument("--backends", nargs="*", default=["sqlite", "mysql", "redis", "redis+cluster"],
                    help="Which ledgers to measure.")
    ap.add_argument("--json", type=Path, help="Also write the figures here, for docs/capacity.md's script.")
    ap.add_argument("--player-win-cap", type=int, default=0,
                    help="The service's event-wide cap per player (0: none); one far out of reach (10^6) makes every "
                         "claim pay for counting it (on a cluster: a hold and its confirmation, two more calls).")
    args = ap.parse_args()
    print(f"claims benchmark: wrk -t2 -c{args.connections}, {args.seconds} s per scenario, geo-service --workers 2, "
          f"player_win_cap {args.player_win_cap}")
    results = []
    for backend in args.backends:
        redis = start_redis(cluster=backend == "redis+cluster") if backend.startswith("redis") else None
        try:
            dsn = redis.dsn if redis is not None else args.mysql
            for tasks in (1, 1000):
                results.append(scenario(backend, dsn, redis, tasks, args.seconds, args.connections, args.mysql,
                                        args.player_win_cap))
        finally:
            if redis is not None:
                redis.close()
    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
