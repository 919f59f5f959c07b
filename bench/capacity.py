"""Recompute docs/capacity.md's table from the benchmarks' JSON figures.

    .venv/bin/python bench/capacity.py [--hosts bench/out/hosts.json] [--claims bench/out/claims.json]
                                       [--collector bench/out/collector.json] [--polls 1000000] [--claims-per-s 50000]
                                       [--pois 100000000] [--bytes-per-row 44]
                                       [--delivery bench/out/delivery.json] [--partner-per-s 40000]
                                       [--edge bench/out/edge.json] [--busy-cells 100000] [--edge-instances 4]

Each JSON file is written by its benchmark's --json option (`make capacity` runs them all). The
per-core figures come from this machine, where load generator and servers share two cores, so they
are floors: a dedicated core does at least as much. Every result is rounded up and carries the
headroom below (a host planned at 60% of its measured capacity keeps its p99 through a peak).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

HEADROOM = 0.6  # plan every core at 60% of what it measured
CORES_PER_HOST = 32
SHIP_BATCH = 2000  # claim rows per upsert, as the shipper sends them


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def plan(hosts: dict[str, Any], claims: list[dict[str, Any]], collector: list[dict[str, Any]],
         polls_per_s: float, claims_per_s: float, pois: int, bytes_per_row: float) -> list[tuple[str, str, str]]:
    """Return (quantity, figure, how it is derived) rows."""
    direct = next(r for r in hosts["polls"] if r["path"] == "direct, 1 host")
    poll_core = direct["rps"]  # one worker process, about one core
    redis = next(r for r in claims if r["backend"] == "redis+cluster" and r["tasks"] == 1000)
    claim_core = 1000 / max(redis["worker_cpu_ms"], 1e-6)  # claims a service core settles
    node_core = 1000 / max(redis["store_cpu_ms"], 1e-6)  # claims a redis-server core settles
    tick = max((c for c in collector if c["backend"] == "redis+cluster"), key=lambda c: c["tasks"], default=None)
    poll_cores = math.ceil(polls_per_s / (poll_core * HEADROOM))
    claim_cores = math.ceil(claims_per_s / (claim_core * HEADROOM))
    hosts_needed = math.ceil((poll_cores + claim_cores) / CORES_PER_HOST)
    nodes = math.ceil(claims_per_s / (node_core * HEADROOM))
    snapshot_gb = pois * bytes_per_row / 1e9
    pull_s = snapshot_gb / hosts["pull"]["gb_per_s"]
    answer_gbit = polls_per_s * hosts["body_bytes"] * 8 / 1e9
    return [
        ("polls a core answers (10^7 POIs)", f"{poll_core:,.0f}/s", "bench/hosts_bench.py, one worker, direct"),
        ("claims a service core settles", f"{claim_core:,.0f}/s", "1000 / worker CPU ms per claim (bench/claims_bench.py, "
                                                                  "cluster, 1,000 tasks)"),
        ("claims a Redis core settles", f"{node_core:,.0f}/s", "1000 / redis-server CPU ms per claim"),
        (f"service cores for {polls_per_s:,.0f} polls/s", f"{poll_cores:,}", f"at {HEADROOM:.0%} of measured"),
        (f"service cores for {claims_per_s:,.0f} claims/s", f"{claim_cores:,}", f"at {HEADROOM:.0%} of measured"),
        (f"service hosts of {CORES_PER_HOST} cores", f"{hosts_needed:,}", "polls and claims share hosts; add one for loss"),
        ("Redis Cluster masters", f"{max(nodes, 3):,}", "one core each (Redis is single-threaded), at least 3"),
        ("MySQL writes (claim rows)", f"{claims_per_s:,.0f} rows/s", f"shipped as {claims_per_s / SHIP_BATCH:,.0f} "
                                                                      f"upserts/s of {SHIP_BATCH} rows"),
        ("flow-log shippers (collectors with ship_part K/N)",
         f"{math.ceil(claims_per_s / (redis['ship_per_s'] * HEADROOM)):,}",
         f"one ships {redis['ship_per_s']:,.0f} records/s into MariaDB here"),
        ("collector tick at 10^5 tasks", f"{tick['tick_median_s'] * 1000:,.0f} ms" if tick else "n/a",
         "bench/collector_bench.py, Redis Cluster, median"),
        (f"snapshot at {pois:,} POIs", f"{snapshot_gb:,.1f} GB", f"{bytes_per_row:g} bytes a row"),
        ("pull and verify it on a host", f"{pull_s:,.0f} s", f"at {hosts['pull']['gb_per_s']:.2f} GB/s (bench/hosts_bench.py)"),
        ("origin egress, every host at once", f"{snapshot_gb * hosts_needed:,.0f} GB", "or stagger the hosts' polls"),
        ("poll answers out", f"{answer_gbit:,.1f} Gbit/s", f"{int(hosts['body_bytes']):,} B an answer, before 304s"),
    ]


def edge_plan(edge: dict[str, Any], polls_per_s: float, busy_cells: int, instances: int, max_age_s: float,
              poll_core: float | None) -> list[tuple[str, str, str]]:
    """Return (quantity, figure, how it is derived) rows for cell polls answered by nginx's cell cache."""
    through, direct = edge["medians"]["edge"], edge["medians"]["direct"]
    nginx_core = through["rps"] / 2  # wrk, nginx and the service shared the two cores: a floor for one nginx core
    host_core = poll_core or direct["rps"] / 2
    nginx_cores = math.ceil(polls_per_s / (nginx_core * HEADROOM))
    upstream = busy_cells * instances / max_age_s  # at most one miss or revalidation per cell, instance and max-age
    return [
        ("polls through the edge / direct, same two cores", f"{through['rps'] / direct['rps']:.2f}x",
         f"bench/edge_bench.py: {through['rps']:,.0f} against {direct['rps']:,.0f} polls/s, p99 {through['p99_ms']:.1f} "
         f"against {direct['p99_ms']:.1f} ms"),
        ("polls answered at the edge", f"{through['edge_share']:.1%}", "standing phones, Zipf(1.1) over the sample's cells"),
        ("polls an nginx core answers from the cache", f"{nginx_core:,.0f}/s", "half the two cores' figure (a floor)"),
        (f"nginx cores for {polls_per_s:,.0f} cell polls/s", f"{nginx_cores:,}", f"at {HEADROOM:.0%} of measured"),
        (f"requests reaching the hosts, {busy_cells:,} busy cells, {instances} nginx instances", f"{upstream:,.0f}/s at most",
         f"one a cell, instance and max-age ({max_age_s:g} s)"),
        ("service cores behind the edge", f"{math.ceil(upstream / (host_core * HEADROOM)):,}",
         f"at {HEADROOM:.0%} of {host_core:,.0f} polls a core"),
    ]


def delivery_plan(delivery: dict[str, Any], partner_per_s: float) -> list[tuple[str, str, str]]:
    """Return the rows of what one partner's channel at partner_per_s needs: dispatchers, writes, connections."""
    push = delivery["mysql"]["push"]
    core = 1000 / max(push["dispatcher_cpu_ms_per_delivery"], 1e-6)  # deliveries a dispatcher core pushes
    dispatchers = math.ceil(partner_per_s / (core * HEADROOM))
    leases = dispatchers * 10  # each leases once a 100 ms slice, under the channel's row lock
    return [
        ("deliveries a dispatcher core pushes", f"{core:,.0f}/s", "1000 / dispatcher CPU ms per delivery "
                                                                  "(bench/delivery_bench.py, MariaDB)"),
        (f"dispatchers for a {partner_per_s:,.0f}/s partner", f"{dispatchers:,}",
         f"one process (a core) each, at {HEADROOM:.0%} of measured"),
        ("record-database row writes", f"{partner_per_s * 3:,.0f} rows/s",
         "3 a delivery: made with the claim, leased, recorded"),
        ("record-database transactions", f"{leases + dispatchers * 50:,}/s",
         f"{leases:,} leases (10 a dispatcher) + at most 50 answer batches a dispatcher"),
        ("channel row lock", f"{leases:,} holds/s", "every lease of the channel takes it: a few ms each"),
        ("record-database connections", f"{dispatchers * 4:,} at most", "a pool of 4 per class per dispatcher"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    out = Path("bench/out")
    ap.add_argument("--hosts", type=Path, default=out / "hosts.json", help="bench/hosts_bench.py --json output.")
    ap.add_argument("--claims", type=Path, default=out / "claims.json", help="bench/claims_bench.py --json output.")
    ap.add_argument("--collector", type=Path, default=out / "collector.json", help="bench/collector_bench.py --json output.")
    ap.add_argument("--delivery", type=Path, default=out / "delivery.json", help="bench/delivery_bench.py --json output.")
    ap.add_argument("--edge", type=Path, default=out / "edge.json", help="bench/edge_bench.py --json output.")
    ap.add_argument("--busy-cells", type=int, default=100_000, help="Cells with phones in them at the peak (edge table).")
    ap.add_argument("--edge-instances", type=int, default=4, help="nginx instances, each with its own cell cache.")
    ap.add_argument("--max-age-s", type=float, default=5, help="The cell answers' max-age (the service's next_poll_ms).")
    ap.add_argument("--partner-per-s", type=float, default=40_000, help="A partner's capacity to plan a channel for.")
    ap.add_argument("--polls", type=float, default=1_000_000, help="Peak polls a second to plan for.")
    ap.add_argument("--claims-per-s", type=float, default=50_000, help="Peak claims a second to plan for.")
    ap.add_argument("--pois", type=int, default=100_000_000, help="POIs in the snapshot.")
    ap.add_argument("--bytes-per-row", type=float, default=32, help="Snapshot bytes a row (see geo-snapshot inspect).")
    args = ap.parse_args()
    missing = [str(p) for p in (args.hosts, args.claims, args.collector) if not p.exists()]
    hosts = None if missing else load(args.hosts)
    if hosts is None:
        print(f"(no main table: run `make bench` for {', '.join(missing)})")
    else:
        rows = plan(hosts, load(args.claims), load(args.collector), args.polls, args.claims_per_s, args.pois,
                    args.bytes_per_row)
        print("| quantity | figure | from |\n|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    if args.edge.exists():
        core = next(r for r in hosts["polls"] if r["path"] == "direct, 1 host")["rps"] if hosts else None
        print("\n| edge | figure | from |\n|---|---|---|")
        for row in edge_plan(load(args.edge), args.polls, args.busy_cells, args.edge_instances, args.max_age_s, core):
            print("| " + " | ".join(row) + " |")
    if args.delivery.exists():
        print("\n| delivery | figure | from |\n|---|---|---|")
        for row in delivery_plan(load(args.delivery), args.partner_per_s):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
