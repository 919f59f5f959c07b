"""Benchmark `geo-snapshot build`: wall time, peak RSS, snapshot bytes per row and each phase's seconds, from a
folder (10^6, 10^7; 10^8 with --huge) and from MySQL (10^6).

    .venv/bin/python bench/build_bench.py [--sizes 1000000 10000000] [--huge] [--memory-mb 2048] [--workers 2]
        [--baseline /path/to/an/older/checkout] [--mysql-size 1000000] [--workdir bench/out]

Each build runs in its own process; its peak RSS is that process's ru_maxrss. Synthetic data is made
once per size (seeded) and reused by later runs. --huge adds 10^8 POIs: about 3.5 GB of CSV, 3.5 GB of
snapshot and 6 GB of spilled runs while it builds (check `df` first). --baseline runs the same builds
with an older checkout's code too (its own `python -m loaders`, cwd there) between two of this one's,
so the two compare in one run on one machine, time and every array (from the manifests' SHA-256s).
To make a baseline: `git worktree add /tmp/base <rev>; ln -s $PWD/.venv /tmp/base/.venv`.
Targets (issue 22, 2 cores, default --memory-mb 2048): 10^8 POIs in at most 4 minutes under 6 GiB peak
RSS, at most 32 bytes a row, the baseline's arrays exactly; 10^7 not slower than the baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

PY = sys.executable


def run_measured(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, int]:
    """Run a command (in `cwd`); return wall seconds, peak RSS in MiB, and its exit status."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if status:
        sys.stderr.write(proc.stderr.read().decode() if proc.stderr else "")
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def ensure_synth(workdir: Path, n: int) -> Path:
    folder = workdir / f"synth-{n}"
    if not (folder / "pois.csv").exists():
        t = time.perf_counter()
        subprocess.run([PY, "-m", "loaders", "synth", "--out", str(folder), "--pois", str(n), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"  (made {n:,} synthetic POIs in {time.perf_counter() - t:.1f} s)", flush=True)
    return folder


ARRAYS = ("cells.npy", "task_index.npy", "poi_ids.npy", "lats.npy", "lngs.npy", "poi_order.npy", "tasks.json",
          "districts.json")


def bench_build(label: str, source: str, out: Path, pois: int, options: list[str], cwd: Path | None = None) -> dict[str, Any]:
    """Build once; print and return its figures and its files' checksums (from its manifest)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [PY, "-m", "loaders", "build", "--source", source, "--out", str(out.resolve()), "--quiet", *options]
    seconds, rss_mib, code = run_measured(cmd, cwd)
    if code:
        raise SystemExit(f"{label}: build failed with exit {code}")
    folder = out / (out / "CURRENT").read_text().strip()
    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    rows = manifest["counts"]["rows"]
    row_bytes = sum(info["bytes"] for name, info in manifest["files"].items() if name.endswith(".npy")) / max(rows, 1)
    build = manifest.get("build", {})
    phases = ", ".join(f"{k} {v:.1f}" for k, v in build.get("phases_s", {}).items()) or "-"
    print(f"{label:<20} {pois:>12,} POIs {rows:>12,} rows {seconds:8.1f} s {pois / seconds:>11,.0f} POIs/s "
          f"{rss_mib:>7,.0f} MiB peak RSS {row_bytes:6.2f} B/row  runs spilled {build.get('runs_spilled', '-')}  "
          f"phases (s): {phases}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "files": {name: manifest["files"][name]["sha256"] for name in ARRAYS}}


def compare(n: int, mine: list[dict[str, Any]], baseline: dict[str, Any]) -> None:
    """Print how this checkout's builds of one size compare with the baseline's: time and the files themselves."""
    ours = statistics.median(m["seconds"] for m in mine)
    same = all(m["files"] == baseline["files"] for m in mine)
    print(f"  {n:,} POIs: baseline {baseline['seconds']:.1f} s / this checkout {ours:.1f} s (median of {len(mine)}) = "
          f"{baseline['seconds'] / ours:.2f}x; arrays {'identical to' if same else 'DIFFERENT from'} the baseline's",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000], help="Folder build sizes.")
    ap.add_argument("--huge", action="store_true", help="Also build 10^8 POIs (needs ~16 GB of free disk).")
    ap.add_argument("--memory-mb", type=int, default=None, help="--memory-mb for this checkout's builds (default: "
                    "the build's own default).")
    ap.add_argument("--workers", type=int, default=None, help="--workers for this checkout's builds (default: the "
                    "build's own, one per core).")
    ap.add_argument("--baseline", type=Path, help="An older checkout to build with too, alternately (its venv: this "
                    "one), comparing times and every array.")
    ap.add_argument("--mysql-size", type=int, default=1_000_000, help="POIs to import and build from MySQL (0: skip).")
    ap.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test", help="MySQL DSN for the MySQL build.")
    ap.add_argument("--workdir", type=Path, default=Path("bench/out"), help="Where synthetic data and snapshots go.")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    options = [*(["--memory-mb", str(args.memory_mb)] if args.memory_mb else []),
               *(["--workers", str(args.workers)] if args.workers else [])]
    print(f"geo-snapshot build benchmark on {os.cpu_count()} cores", flush=True)
    for n in [*args.sizes, *([100_000_000] if args.huge else [])]:
        source = str(ensure_synth(args.workdir, n).resolve())
        mine = [bench_build("folder", source, args.workdir / "snaps", n, options)]
        if args.baseline:
            baseline = bench_build("folder (baseline)", source, args.workdir / "snaps", n, [], args.baseline)
            mine.append(bench_build("folder", source, args.workdir / "snaps", n, options))
            compare(n, mine, baseline)
    if args.mysql_size:
        folder = ensure_synth(args.workdir, args.mysql_size)
        t = time.perf_counter()
        subprocess.run([PY, "-m", "loaders", "import", "--source", str(folder), "--mysql", args.mysql, "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"  (imported {args.mysql_size:,} POIs into MySQL in {time.perf_counter() - t:.1f} s)", flush=True)
        bench_build("mysql", args.mysql, args.workdir / "snaps", args.mysql_size, options)


if __name__ == "__main__":
    main()
