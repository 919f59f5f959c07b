"""Read any ledger's counters straight from its store, past the ledger classes: the tests' oracle."""

from __future__ import annotations

import sqlite3
from typing import Any

import pymysql
import redis
from redis.cluster import ClusterNode, RedisCluster

from geo_service.dsn import MySQLSettings, RedisSettings


def sql_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    """Run a query on a SQLite file or a MySQL database, outside the service."""
    if dsn.startswith("sqlite:///"):
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchall()
    s = MySQLSettings.from_dsn(dsn)
    conn = pymysql.connect(host=s.host, port=s.port, user=s.user, password=s.password, database=s.database)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def redis_client(dsn: str) -> redis.Redis | RedisCluster:
    s = RedisSettings.from_dsn(dsn)
    if s.cluster:
        nodes = [ClusterNode(h, p) for h, p in s.nodes]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, decode_responses=True)
    return redis.Redis(host=s.nodes[0][0], port=s.nodes[0][1], db=s.db, decode_responses=True)


def counters(dsn: str) -> dict[tuple[int, str], tuple[int, int]]:
    """Return every prize counter as (task_id, prize_type) -> (quota, issued)."""
    if not dsn.startswith("redis"):
        return {(int(t), str(p)): (int(q), int(i)) for t, p, q, i in
                sql_rows(dsn, "SELECT task_id, prize_type, quota, issued FROM prize_counters")}
    client = redis_client(dsn)
    try:
        found = {}
        for key in client.scan_iter(match="gd:*:t:*", count=1000):
            task_id = int(key.rsplit(":", 1)[1])
            fields: Any = client.hgetall(key)
            for name, value in fields.items():
                if name.startswith("q:"):
                    found[(task_id, name[2:])] = (int(value), int(fields.get("i:" + name[2:], 0)))
        return found
    finally:
        client.close()


def execute(dsn: str, sql: str) -> None:
    """Run one write statement on a SQL ledger, as an operator's manual fix would."""
    if dsn.startswith("sqlite:///"):
        with sqlite3.connect(dsn.removeprefix("sqlite:///")) as conn:
            conn.execute(sql)
        return
    s = MySQLSettings.from_dsn(dsn)
    conn = pymysql.connect(host=s.host, port=s.port, user=s.user, password=s.password, database=s.database,
                           autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def claims_db(dsn: str, record_db: str) -> str:
    """Return where a ledger's claim records end up: the ledger itself (SQL), or the record database (Redis)."""
    return record_db if dsn.startswith("redis") else dsn


def won_claims(dsn: str, record_db: str = "") -> list[tuple[str, int, str]]:
    """Return every won claim recorded, as (claim_id, task_id, prize_type)."""
    rows = sql_rows(claims_db(dsn, record_db), "SELECT claim_id, task_id, prize_type FROM claims WHERE outcome = 'won'")
    return [(str(c), int(t), str(p)) for c, t, p in rows]


def flow_records(dsn: str) -> list[dict[str, str]]:
    """Return every claim record in a Redis ledger's flow streams (shipped ones may have been trimmed)."""
    from geo_service.dsn import REDIS_BUCKETS
    from geo_service.ledger.redis_layout import bucket_key

    client = redis_client(dsn)
    try:
        entries: list[Any] = [client.xrange(bucket_key(b, "flow")) for b in range(REDIS_BUCKETS)]
        return [fields for stream in entries for _, fields in stream]
    finally:
        client.close()


def set_issued(dsn: str, task_id: int, prize_type: str, issued: int) -> None:
    """Set a counter's issued count behind the ledger's back, as a bad manual fix would."""
    if not dsn.startswith("redis"):
        execute(dsn, f"UPDATE prize_counters SET issued = {issued} WHERE task_id = {task_id} AND prize_type = '{prize_type}'")
        return
    from geo_service.ledger.redis_layout import task_key

    client = redis_client(dsn)
    try:
        client.hset(task_key(task_id), f"i:{prize_type}", issued)
    finally:
        client.close()


async def ship_all(dsn: str, record_db: str) -> int:
    """Ship a Redis ledger's flow streams into the record database until they are empty; return the records shipped."""
    from geo_service.ledger import open_ledger
    from geo_service.ledger.records import RecordStore
    from geo_service.ledger.redis import RedisLedger
    from geo_service.ledger.ship import Shipper

    ledger = open_ledger(dsn, record_db)
    assert isinstance(ledger, RedisLedger)
    shipper = Shipper(ledger, RecordStore(MySQLSettings.from_dsn(record_db)))
    try:
        for _ in range(10_000):  # bounded: each round ships a batch per stream
            if not await shipper.ship_once() and shipper.health.backlog == 0:
                break
        return shipper.health.shipped
    finally:
        await shipper.store.close()
        await ledger.close()
