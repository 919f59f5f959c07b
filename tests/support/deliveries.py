"""Delivery test helpers: channels files, wins landed in bulk, dispatcher processes, and the rows as they are."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pymysql

from geo_service.dsn import MySQLSettings
from geo_service.ledger.records import (
    ClaimRecord,
    claim_row,
    deliveries_schema,
    delivery_row,
    insert_claim,
    insert_delivery,
)
from tests.support.ledgers import sql_rows
from tests.support.partner_stub import SECRET
from tests.support.processes import Process

SECRET_ENV = "GEODROP_TEST_PARTNER_SECRET"


def channel(name: str, url: str, prizes: list[str], kind: str = "fast", rate_per_s: float = 1000,
            max_in_flight: int = 64, timeout_s: float = 1.0, eta: str = "within a minute") -> dict[str, Any]:
    return {"name": name, "url": f"{url}/deliver/{name}", "class": kind, "rate_per_s": rate_per_s,
            "max_in_flight": max_in_flight, "timeout_s": timeout_s, "secret_env": SECRET_ENV, "eta": eta, "prizes": prizes}


def write_channels(path: Path, *channels: dict[str, Any]) -> Path:
    path.write_bytes(orjson.dumps({"channels": list(channels)}))
    return path


def secret_env() -> dict[str, str]:
    return {SECRET_ENV: SECRET}


def land_wins(dsn: str, claim_ids: list[str], prize_type: str, user_of: Any = lambda i: f"u{i % 97}",
              task_id: int = 7) -> None:
    """Record won claims and their delivery rows as a ledger's claim transaction does (the same row functions), in
    bulk: the storms' wins, landed at once."""
    now = time.time()
    records = [ClaimRecord(c, user_of(i), task_id, 1, prize_type, "won", None, now) for i, c in enumerate(claim_ids)]
    claims, deliveries = [claim_row(r) for r in records], [delivery_row(r, now) for r in records]
    if dsn.startswith("sqlite:///"):
        from geo_service.ledger.plans import SCHEMA

        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            for statement in (*SCHEMA, *deliveries_schema("sqlite")):
                conn.execute(statement)
            conn.executemany(insert_claim("?"), claims)
            conn.executemany(insert_delivery("?"), deliveries)
        return
    s = MySQLSettings.from_dsn(dsn)
    conn = pymysql.connect(host=s.host, port=s.port, user=s.user, password=s.password, database=s.database)
    try:
        with conn.cursor() as cur:
            from geo_service.ledger.records import CLAIMS_EXACT, CLAIMS_TABLE

            for statement in (CLAIMS_TABLE, CLAIMS_EXACT, *deliveries_schema("mysql")):
                cur.execute(statement)
            for start in range(0, len(claims), 2000):
                cur.executemany(insert_claim("%s"), claims[start : start + 2000])
                cur.executemany(insert_delivery("%s"), deliveries[start : start + 2000])
        conn.commit()
    finally:
        conn.close()


def states(dsn: str) -> dict[str, str]:
    """Return every delivery's state by claim id, read past the store."""
    return {str(c): str(s) for c, s in sql_rows(dsn, "SELECT claim_id, state FROM deliveries")}


def dispatcher(ledger: str, channels: Path, *extra: str) -> Process:
    """A geo-deliver run process (not started); its secret comes from the test's environment (secret_env())."""
    return Process("delivery", ["run", "--ledger", ledger, "--channels", str(channels), *extra])
