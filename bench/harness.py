"""What the benchmark scripts share: loopback ports, waiting for a server, a fresh MariaDB ledger."""

from __future__ import annotations

import socket
import time
import urllib.request

import pymysql

from geo_service.ledger import LEDGER_TABLES
from geo_service.settings import MySQLSettings


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
            for table in LEDGER_TABLES:
                cur.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        conn.close()
