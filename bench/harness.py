"""What the benchmark scripts share: loopback ports, waiting for a server, a fresh MariaDB ledger, wrk runs
and CPU time of processes."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pymysql

from geo_service.dsn import MySQLSettings
from geo_service.ledger.plans import LEDGER_TABLES
from geo_service.ledger.records import RECORD_TABLES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 60) -> None:
    """Return once `url` answers; exit the benchmark if it does not within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server at {url} did not come up")


def drop_ledger_tables(dsn: str) -> None:
    """Drop every ledger table of a mysql:// DSN, so the next ledger starts empty."""
    s = MySQLSettings.from_dsn(dsn)
    conn = pymysql.connect(host=s.host, port=s.port, user=s.user, password=s.password, database=s.database,
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            for table in (*LEDGER_TABLES, *RECORD_TABLES):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        conn.close()


# A wrk script's done() prints this line; run_wrk reads it.
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def run_wrk(port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
    """Run wrk -t2 with a script ending in WRK_DONE; return requests/s, p50 and p99 (ms), errors and requests."""
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    requests, duration_us, p50, p99, errors = map(int, line.split()[1:])
    return {"rps": requests / (duration_us / 1e6), "p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "errors": errors,
            "requests": requests}


def cpu_seconds(pids: list[int]) -> float:
    """Return the user + system CPU seconds the processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def children(pid: int) -> list[int]:
    """Return a process's direct children (the workers of geo-service serve)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found
