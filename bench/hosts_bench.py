"""Benchmark the many-hosts path: polls through nginx (deploy/nginx.conf) to 1, 2 and 3 service hosts, and
the pull of a large snapshot from an origin (deploy/origin.nginx.conf).

    .venv/bin/python bench/hosts_bench.py [--pois 10000000] [--seconds 10] [--connections 64] [--json bench/out/hosts.json]

Polls: `geo-service serve --workers 1` hosts on the --pois synthetic snapshot (built once under bench/out),
each run first loaded directly (one host, no nginx), then through nginx in front of 1, 2 and 3 hosts;
wrk -t2 cycles through 20,000 positions near POIs. The hosts, nginx and wrk share this machine's two
cores, so three hosts cannot be faster than one here: the point is what the load balancer costs and
that nothing fails. Pull: a host with an empty folder pulls the snapshot from nginx serving an origin
folder (download, SHA-256 of every file, fsync, local publish); printed as seconds and GB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import WRK_DONE, free_port, run_wrk, wait_ready  # noqa: E402
from nearby_bench import LUA, WORKDIR, ensure_snapshot, positions  # noqa: E402

from geo_service.nearby import Lookup, answer  # noqa: E402
from geo_service.snapshot.folder import open_current  # noqa: E402
from geo_service.snapshot.origin import open_origin, publish  # noqa: E402
from geo_service.snapshot.pull import Puller  # noqa: E402
from tests.support.nginx import load_balancer, origin_server  # noqa: E402

PY = sys.executable


def start_hosts(snaps: Path, count: int, tmp: Path) -> list[tuple[int, subprocess.Popen[bytes]]]:
    hosts = []
    for k in range(count):
        port = free_port()
        hosts.append((port, subprocess.Popen([PY, "-m", "geo_service", "serve", "--snapshots", str(snaps), "--port",
                                              str(port), "--workers", "1", "--log-level", "error",
                                              "--data-dir", str(tmp / f"var{k}")])))
    for port, _ in hosts:
        wait_ready(f"http://127.0.0.1:{port}/healthz")
    return hosts


def polls(snaps: Path, script: Path, seconds: int, connections: int) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        hosts = start_hosts(snaps, 3, Path(tmp))
        try:
            run_wrk(hosts[0][0], script, 2, connections)  # warm-up: page the snapshot in
            results.append({"path": "direct, 1 host", **run_wrk(hosts[0][0], script, seconds, connections)})
            for count in (1, 2, 3):
                lb = load_balancer([port for port, _ in hosts[:count]]).start()
                try:
                    results.append({"path": f"nginx, {count} host(s)", **run_wrk(lb.port, script, seconds, connections)})
                finally:
                    lb.close()
        finally:
            for _, proc in hosts:
                proc.terminate()
                proc.wait(timeout=60)
    return results


async def pull_time(snaps: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "origin"
        snapshot = open_current(snaps, verify=False)
        origin = open_origin(str(folder))
        await publish(origin, snapshot.path, snapshot.manifest)
        server = origin_server(folder).start()
        reader = open_origin(server.url)
        try:
            puller = Puller(reader, Path(tmp) / "host", 1.0)
            started = time.monotonic()
            assert await puller.pull_once()
            seconds = time.monotonic() - started
        finally:
            await reader.close()
            server.close()
    size = sum(int(f["bytes"]) for f in snapshot.manifest["files"].values())
    return {"bytes": size, "seconds": seconds, "gb_per_s": size / 1e9 / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pois", type=int, default=10_000_000, help="Synthetic snapshot size in POIs.")
    ap.add_argument("--seconds", type=int, default=10, help="Seconds per wrk run.")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections.")
    ap.add_argument("--json", type=Path, help="Also write the figures here, for bench/capacity.py.")
    args = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        raise SystemExit("needs wrk and nginx: apt-get install wrk nginx-light")
    WORKDIR.mkdir(parents=True, exist_ok=True)
    snaps = ensure_snapshot(args.pois)
    lookup = Lookup(open_current(snaps))
    points = positions(lookup, 20_000)
    status = lookup.table.status(int(time.time()))
    body = statistics.median(len(orjson.dumps({**answer(lookup, status, a, b, 300), "next_poll_ms": 5000}))
                             for a, b in points[:2000])
    script = WORKDIR / "hosts-points.lua"
    script.write_text(LUA % ",".join(f"{{{a},{b}}}" for a, b in points) + WRK_DONE)
    results = polls(snaps, script, args.seconds, args.connections)
    for r in results:
        print(f"polls    {r['path']:<18} {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:5.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
              f"errors {r['errors']}", flush=True)
    pull = asyncio.run(pull_time(snaps))
    print(f"pull     {args.pois:,} POIs: {pull['bytes'] / 1e9:.2f} GB pulled, checked and published in "
          f"{pull['seconds']:.1f} s ({pull['gb_per_s']:.2f} GB/s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"pois": args.pois, "body_bytes": body, "polls": results, "pull": pull}, indent=1))


if __name__ == "__main__":
    main()
