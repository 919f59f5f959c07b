"""Benchmark cell polls answered at the edge: wrk through nginx (deploy/nginx.conf, its cell cache) against the same
service host polled directly, in alternated runs on this machine.

    .venv/bin/python bench/edge_bench.py [--seconds 10] [--connections 64] [--rounds 2] [--json bench/out/edge.json]

The city is the sample (Shenzhen's nine districts); phones stand in its cells with a Zipf(1.1) skew over the
cells that hold POIs (a few busy cells, a long tail), 20,000 polls of /v1/cells/{cell} in a random order that
wrk cycles through. One `geo-service serve --workers 2` host (next_poll_ms 5000: answers' max-age 5 s); each
round polls it through nginx, then directly, with the same wrk (-t2, --connections in flight, closed loop: it
measures capacity). Printed per mode, medians over rounds: polls/s, p50 and p99, the share of polls answered at
the edge (1 - what reached the host, by the host's own count), and upstream requests a second. nginx, the
service and wrk share two cores: the edge's figure is what nginx alone can do with what the service leaves it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import WRK_DONE, free_port, run_wrk, wait_ready  # noqa: E402

from geo_service.snapshot.folder import open_current  # noqa: E402
from tests.conftest import SAMPLE  # noqa: E402
from tests.support.nginx import load_balancer  # noqa: E402

PY = sys.executable
ROUTE = 'route="/v1/cells/{cell}"'
LUA = """
local paths = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
"""


def zipf_paths(snaps: Path, count: int, seed: int = 11) -> list[str]:
    """Polls of the cells holding POIs, the k-th busiest taken with weight 1 / k^1.1, in a random order."""
    cells = np.unique(np.asarray(open_current(snaps).cells))
    rng = np.random.default_rng(seed)
    ranked = rng.permutation(cells)
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** 1.1
    picks = rng.choice(ranked, size=count, p=weights / weights.sum())
    return [f"/v1/cells/{int(c)}" for c in picks]


def upstream_requests(port: int, workers: int = 2) -> int:
    """Return the cell requests the host's workers answered: each worker's /metrics counts its own, and a fresh
    connection reaches either, so ask until every worker has answered (bounded)."""
    seen: dict[str, int] = {}
    for _ in range(200):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            lines = resp.read().decode().splitlines()
        worker = next(line.split('worker="', 1)[1].split('"', 1)[0] for line in lines if 'worker="' in line)
        seen[worker] = sum(int(float(line.rsplit(" ", 1)[1])) for line in lines
                           if line.startswith("geodrop_http_requests_total{") and ROUTE in line)
        if len(seen) == workers:
            return sum(seen.values())
    raise RuntimeError(f"only workers {sorted(seen)} answered /metrics")


def measure(port: int, host_port: int, script: Path, seconds: int, connections: int) -> dict[str, Any]:
    before = upstream_requests(host_port)
    result = run_wrk(port, script, seconds, connections)
    reached = upstream_requests(host_port) - before
    # Direct, the hosts count a few requests more than wrk does (those in flight as it stops): none at the edge.
    edge_share = max(0.0, 1 - reached / max(result["requests"], 1))
    return {**result, "edge_share": edge_share, "upstream_per_s": reached / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="Seconds of each measured wrk run.")
    ap.add_argument("--connections", type=int, default=64, help="Polls in flight (wrk connections).")
    ap.add_argument("--rounds", type=int, default=2, help="Edge-then-direct rounds; medians are printed.")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        snaps = Path(tmp) / "snaps"
        subprocess.run([PY, "-m", "loaders", "build", "--source", str(SAMPLE), "--out", str(snaps), "--quiet"], check=True)
        paths = zipf_paths(snaps, 20_000)
        script = Path(tmp) / "cells.lua"
        script.write_text(LUA % ", ".join(f'"{p}"' for p in paths) + WRK_DONE)
        port = free_port()
        host = subprocess.Popen([PY, "-m", "geo_service", "serve", "--snapshots", str(snaps), "--port", str(port),
                                 "--workers", "2", "--log-level", "error", "--data-dir", str(Path(tmp) / "var")])
        lb = None
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz")
            lb = load_balancer([port], {"polls": 10**6}).start()
            print(f"edge benchmark: {len(set(paths)):,} cells polled (Zipf 1.1 over the sample's cells with POIs), "
                  f"wrk -t2 -c{args.connections}, {args.seconds} s a run, {args.rounds} rounds", flush=True)
            runs: dict[str, list[dict[str, Any]]] = {"edge": [], "direct": []}
            run_wrk(lb.port, script, 2, args.connections)  # warm-up: the cache and the host
            for _ in range(args.rounds):
                runs["edge"].append(measure(lb.port, port, script, args.seconds, args.connections))
                runs["direct"].append(measure(port, port, script, args.seconds, args.connections))
        finally:
            if lb is not None:
                lb.close()
            host.terminate()
            host.wait(timeout=60)
    figures = {mode: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "errors", "edge_share",
                                                                        "upstream_per_s")} for mode, rs in runs.items()}
    for mode, f in figures.items():
        print(f"edge  {mode:<7} {f['rps']:>9,.0f} polls/s  p50 {f['p50_ms']:6.2f} ms  p99 {f['p99_ms']:6.2f} ms  "
              f"errors {f['errors']:.0f}  answered at the edge {f['edge_share']:6.1%}  upstream {f['upstream_per_s']:,.0f}/s")
    print(f"edge  polls/s through the edge / direct: {figures['edge']['rps'] / figures['direct']['rps']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs, "medians": figures}, indent=1))


if __name__ == "__main__":
    main()
