"""Benchmark the nearby path: in-process lookups at 10^6 and 10^7 POIs, then HTTP against a bare aiohttp handler.

    .venv/bin/python bench/nearby_bench.py [--sizes 1000000 10000000] [--rounds 6] [--seconds 5] [--connections 64]
        [--baseline /path/to/an/older/checkout]

In-process: `Lookup.find` (window, binary search, status filter, rows found) timed one call at a
time over 20,000 positions near random POIs: first a cold pass with the snapshot's files dropped from the
page cache (and how much of the snapshot those lookups paged in), then five warm passes; median and p99 over
all calls, the quietest pass's median, and calls/s. `--sizes 100000000` measures a 10^8-POI snapshot
(built once into bench/out, ~4 GB: two minutes here).
HTTP (needs wrk: apt-get install wrk): `geo-service serve --workers 2` on the largest snapshot and
bench/minimal_server.py (2 workers, a fixed body of the median answer size), each loaded by
`wrk -t2 -c64` cycling through the same 20,000 positions, alternated for `--rounds` rounds;
medians over the rounds, and the median of each round's nearby/minimal ratio.
Both the servers and wrk share this machine's cores, as they would in any one-box run.
--baseline runs an older checkout's lookups (its own bench script, cwd there, on a snapshot its own build
makes of the same synthetic data) after this one's, and its server as a third in each HTTP round, so
two snapshot formats or encoders compare in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from harness import WRK_DONE, free_port, run_wrk, wait_ready

from geo_service.nearby import Lookup, answer
from geo_service.snapshot.folder import current_seq, open_current

PY = sys.executable
# The machine is shared and noisy: several passes over the same positions, reported together and
# as the quietest pass's median.
PASSES = 5
WORKDIR = Path("bench/out")
LUA = """
local points = {%s}
local i = 0
request = function()
  i = i + 1
  local p = points[(i %% #points) + 1]
  return wrk.format("GET", "/v1/nearby?lat=" .. p[1] .. "&lng=" .. p[2])
end
"""


def ensure_snapshot(n: int) -> Path:
    data, snaps = WORKDIR / f"synth-{n}", WORKDIR / f"snaps-{n}"
    if not (data / "pois.csv").exists():
        subprocess.run([PY, "-m", "loaders", "synth", "--out", str(data), "--pois", str(n), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
    if not (snaps / "CURRENT").exists():
        subprocess.run([PY, "-m", "loaders", "build", "--source", str(data), "--out", str(snaps), "--quiet"], check=True)
    return snaps


def positions(lookup: Lookup, count: int, seed: int = 7) -> list[tuple[float, float]]:
    """Positions where players stand: near random POIs, up to ~200 m away."""
    snap = lookup.snapshot
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(snap.cells), count)
    lat_deg, lng_deg = snap.degrees(idx)
    lats = np.round(lat_deg + rng.uniform(-0.002, 0.002, count), 6)
    lngs = np.round(lng_deg + rng.uniform(-0.002, 0.002, count), 6)
    return list(zip(lats.tolist(), lngs.tolist()))


def evict(folder: Path) -> None:
    """Drop a snapshot's files from the page cache (clean pages of files nobody maps), so the first pass reads disk."""
    for path in folder.iterdir():
        with path.open("rb") as f:
            os.fdatasync(f.fileno())  # a page not yet written back is not dropped
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def resident_mib(folder: Path) -> float:
    """The pages of `folder`'s files this process has mapped and in memory (from /proc/self/smaps)."""
    kib, counting = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5:  # a mapping's first line: range, perms, offset, dev, inode[, path]
            counting = len(head) >= 6 and head[5].startswith(str(folder.resolve()))
        elif counting and head[0] == "Rss:":
            kib += int(head[1])
    return kib / 1024


def bench_inprocess(n: int) -> tuple[Lookup, list[tuple[float, float]]]:
    snaps = ensure_snapshot(n)
    folder = snaps / str(current_seq(snaps))
    evict(folder)
    lookup = Lookup(open_current(snaps, verify=False))  # verifying reads every page: the lookups' own needs are the point
    status = lookup.table.status(int(time.time()))
    points = positions(lookup, 20_000)
    find, clock = lookup.find, time.perf_counter_ns
    cold = []
    for lat, lng in points:  # the first pass pages in what the positions touch, from disk
        t = clock()
        find(lat, lng, status, 300)
        cold.append(clock() - t)
    cold_us = np.array(cold) / 1000
    arrays = sum(f.stat().st_size for f in folder.glob("*.npy"))
    print(f"cold     {n:>12,} POIs  median {np.median(cold_us):6.1f} us  p99 {np.percentile(cold_us, 99):8.1f} us  "
          f"(the snapshot evicted from the page cache first; {resident_mib(folder):,.0f} MiB of its "
          f"{arrays / 2**20:,.0f} MiB of arrays paged in by {len(points):,} lookups)", flush=True)
    passes = []
    found = 0
    for _ in range(PASSES):
        times = []
        for lat, lng in points:
            t = clock()
            result = find(lat, lng, status, 300)
            times.append(clock() - t)
            found += len(result.ids)
        passes.append(np.array(times) / 1000)
    us = np.concatenate(passes)
    best = min(float(np.median(p)) for p in passes)
    print(f"lookup   {n:>12,} POIs  median {np.median(us):6.1f} us (quietest pass {best:5.1f})  "
          f"p99 {np.percentile(us, 99):6.1f} us  {1e6 / us.mean():>9,.0f} lookups/s  "
          f"({found / len(us):.1f} POIs per answer)", flush=True)
    return lookup, points


def serve(snaps: Path, port: int, data_dir: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, "-m", "geo_service", "serve", "--snapshots", str(snaps.resolve()), "--port", str(port),
                             "--workers", "2", "--log-level", "warning", "--data-dir", data_dir], cwd=cwd)


def bench_http(lookup: Lookup, points: list[tuple[float, float]], snaps: Path, rounds_n: int, seconds: int,
               connections: int, baseline: Path | None) -> None:
    if shutil.which("wrk") is None:
        print("http     skipped: wrk is not installed (apt-get install wrk)")
        return
    status = lookup.table.status(int(time.time()))
    sizes = [len(orjson.dumps({**answer(lookup, status, a, b, 300), "next_poll_ms": 5000})) for a, b in points[:2000]]
    size = int(statistics.median(sizes))
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "points.lua"
        script.write_text(LUA % ",".join(f"{{{a},{b}}}" for a, b in points) + WRK_DONE)
        ports = {"nearby": free_port(), "minimal": free_port(), "baseline": free_port()}
        procs = [serve(snaps, ports["nearby"], tmp),
                 subprocess.Popen([PY, "bench/minimal_server.py", "--port", str(ports["minimal"]), "--workers", "2",
                                   "--size", str(size)])]
        if baseline is not None:
            procs.append(serve(baseline / WORKDIR / snaps.name, ports["baseline"], f"{tmp}/baseline", baseline))
        try:
            rounds: dict[str, list[dict[str, float]]] = {"nearby": [], "minimal": [], **({"baseline": []} if baseline else {})}
            for name in rounds:
                wait_ready(f"http://127.0.0.1:{ports[name]}/v1/nearby?lat=0&lng=0")
            for _ in range(rounds_n):
                for name in rounds:
                    rounds[name].append(run_wrk(ports[name], script, seconds, connections))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in rounds.items()}
    for name in rounds:
        m = med[name]
        print(f"http     {name:<8} {m['rps']:>9,.0f} req/s  p50 {m['p50_ms']:5.2f} ms  p99 {m['p99_ms']:5.2f} ms  "
              f"errors {m['errors']:.0f}  (body ~{size} B, 2 workers, {connections} connections)", flush=True)
    # This machine's speed drifts by half within minutes: the ratio of each round's two adjacent runs
    # holds still far better than either throughput does.
    ratios = [a["rps"] / b["rps"] for a, b in zip(rounds["nearby"], rounds["minimal"])]
    print(f"http     ratio nearby/minimal throughput: median {statistics.median(ratios):.2f} over {len(ratios)} rounds "
          f"(each round's adjacent runs; min {min(ratios):.2f}, max {max(ratios):.2f})")
    if baseline is not None:
        ratios = [a["rps"] / b["rps"] for a, b in zip(rounds["nearby"], rounds["baseline"])]
        print(f"http     ratio nearby/baseline throughput: median {statistics.median(ratios):.2f} over {len(ratios)} "
              f"rounds (min {min(ratios):.2f}, max {max(ratios):.2f})")
    print("raw " + json.dumps(rounds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000], help="Snapshot sizes in POIs.")
    ap.add_argument("--rounds", type=int, default=6, help="Rounds of one minimal run then one nearby run.")
    ap.add_argument("--seconds", type=int, default=5, help="Seconds per wrk run.")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections.")
    ap.add_argument("--no-http", action="store_true", help="Only the in-process lookups.")
    ap.add_argument("--baseline", type=Path, help="An older checkout to compare with in the same run (cwd there).")
    args = ap.parse_args()
    WORKDIR.mkdir(parents=True, exist_ok=True)
    last = None
    for n in args.sizes:
        last = (*bench_inprocess(n), WORKDIR / f"snaps-{n}")
        if args.baseline is not None:
            print("baseline:", flush=True)
            subprocess.run([PY, "bench/nearby_bench.py", "--no-http", "--sizes", str(n)], cwd=args.baseline, check=True,
                           env={**os.environ, "PYTHONPATH": str(args.baseline)})  # its code, not this install's
            bench_inprocess(n)  # this checkout again: the two alternate
    if last and not args.no_http:
        bench_http(*last, args.rounds, args.seconds, args.connections, args.baseline)


if __name__ == "__main__":
    main()
