"""Benchmark `geo-snapshot build`: rows/s and peak RSS from a folder (10^6, 10^7) and from MySQL (10^6).

    .venv/bin/python bench/build_bench.py [--sizes 1000000 10000000] [--mysql-size 1000000]
        [--mysql mysql://root@127.0.0.1:3306/test] [--workdir bench/out]

Each build runs in its own process; its peak RSS is that process's ru_maxrss. Synthetic data is
made once per size (seeded) and reused by later runs. Targets (issue 2, 2 cores): 10^7 POIs from a
folder in at most 60 s under 3 GiB peak RSS; 10^6 from MySQL in at most 30 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson

PY = sys.executable


def run_measured(cmd: list[str]) -> tuple[float, float, int]:
    """Run a command; return wall seconds, peak RSS in MiB, and its exit status."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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


def bench_build(label: str, source: str, out: Path, pois: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [PY, "-m", "loaders", "build", "--source", source, "--out", str(out), "--quiet"]
    seconds, rss_mib, code = run_measured(cmd)
    if code:
        raise SystemExit(f"{label}: build failed with exit {code}")
    manifest = orjson.loads((out / (out / "CURRENT").read_text().strip() / "manifest.json").read_bytes())
    rows = manifest["counts"]["rows"]
    print(f"{label:<28} {pois:>12,} POIs {rows:>12,} rows {seconds:8.1f} s {pois / seconds:>12,.0f} POIs/s "
          f"{rss_mib:>8,.0f} MiB peak RSS", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000], help="Folder build sizes.")
    ap.add_argument("--mysql-size", type=int, default=1_000_000, help="POIs to import and build from MySQL (0: skip).")
    ap.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test", help="MySQL DSN for the MySQL build.")
    ap.add_argument("--workdir", type=Path, default=Path("bench/out"), help="Where synthetic data and snapshots go.")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"geo-snapshot build benchmark on {os.cpu_count()} cores", flush=True)
    for n in args.sizes:
        folder = ensure_synth(args.workdir, n)
        bench_build("folder", str(folder), args.workdir / "snaps", n)
    if args.mysql_size:
        folder = ensure_synth(args.workdir, args.mysql_size)
        t = time.perf_counter()
        subprocess.run([PY, "-m", "loaders", "import", "--source", str(folder), "--mysql", args.mysql, "--quiet"],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"  (imported {args.mysql_size:,} POIs into MySQL in {time.perf_counter() - t:.1f} s)", flush=True)
        bench_build("mysql", args.mysql, args.workdir / "snaps", args.mysql_size)
    shutil.rmtree(args.workdir / "snaps", ignore_errors=True)


if __name__ == "__main__":
    main()
