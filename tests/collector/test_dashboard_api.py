"""The dashboard's routes over HTTP: outlines, a task's POIs, the kill switch's refusals, the series, the stream."""

from __future__ import annotations

import asyncio
import gzip
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from geo_service.snapshot.folder import open_current
from geo_service.tokens import mint
from tests.conftest import MakeClient
from tests.support.ledgers import sql_rows
from tests.support.processes import collector, get_json
from tests.test_error_shape import assert_error_shape

ADMIN = "api-admin"


async def test_outlines_are_the_snapshots_districts_gzipped_with_an_etag_by_seq(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}")
    resp = await client.get("/v1/districts.geojson", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip" and resp.headers["ETag"] == '"outlines-1"'
    doc = orjson.loads(gzip.decompress(await resp.read()))
    districts = open_current(sample_snapshots).districts
    assert [f["properties"]["code"] for f in doc["features"]] == [d["code"] for d in districts]
    assert all(f["geometry"]["type"] in ("Polygon", "MultiPolygon") for f in doc["features"])
    again = await client.get("/v1/districts.geojson", headers={"If-None-Match": '"outlines-1"'})
    assert again.status == 304


async def test_a_tasks_pois_are_its_snapshot_rows_capped_with_their_total(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}")
    snap = open_current(sample_snapshots)
    position = 5
    rows = (snap.task_index == position).nonzero()[0]
    task_id = snap.tasks[position]["task_id"]
    body = await (await client.get(f"/v1/tasks/{task_id}/pois?limit=7")).json()
    assert body["total"] == len(rows) > 7 and len(body["pois"]) == 7
    assert [p[2] for p in body["pois"]] == [int(snap.poi_ids[r]) for r in rows[:7]]  # the first 7 in row order
    for path, status, code in [(f"/v1/tasks/{task_id}/pois?limit=0", 400, "invalid_param"),
                               (f"/v1/tasks/{task_id}/pois?limit=x", 400, "invalid_param"),
                               ("/v1/tasks/999/pois", 404, "not_found"), ("/v1/tasks/x1/pois", 400, "invalid_param")]:
        resp = await client.get(path)
        assert resp.status == status
        assert_error_shape(status, resp.headers, await resp.json(), code)


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("Bearer nope", 401), (f"Bearer {ADMIN}x", 401)])
async def test_the_kill_switch_refuses_a_missing_or_bad_token_and_changes_nothing(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path, token: str | None, status: int) -> None:
    ledger = tmp_path / "l.sqlite3"
    client = await make_collector(sample_snapshots, f"sqlite:///{ledger}", admin_token=ADMIN)
    headers = {"Authorization": token} if token else {}
    resp = await client.post("/v1/admin/tasks/44030500", json={"enabled": False}, headers=headers)
    assert resp.status == status
    assert_error_shape(status, resp.headers, await resp.json(), "invalid_token")
    assert sql_rows(f"sqlite:///{ledger}", "SELECT * FROM task_flags") == []
    ok = await client.post("/v1/admin/tasks/44030500", json={"enabled": False},
                           headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status == 200 and (await ok.json()) == {"task_id": 44030500, "enabled": False, "last_win_at": None}
    assert sql_rows(f"sqlite:///{ledger}", "SELECT task_id, enabled FROM task_flags") == [(44030500, 0)]


async def test_without_an_admin_token_the_kill_switch_is_off_and_the_page_is_told(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}")
    resp = await client.post("/v1/admin/tasks/44030500", json={"enabled": False}, headers={"Authorization": "Bearer x"})
    assert resp.status == 401 and "no admin_token" in (await resp.json())["error"]["message"]
    overview = await (await client.get("/v1/dashboard")).json()
    assert overview["admin"] is False and overview["probe"] is False and overview["snapshot"]["seq"] == 1
    probe = await client.get("/v1/probe?lat=22.53&lng=113.93")
    assert probe.status == 404 and "service" in (await probe.json())["error"]["message"]


async def test_the_series_and_last_minute_counts_follow_claims(
        make_client: MakeClient, make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    service = await make_client(sample_snapshots, token_secret="s", ledger=ledger, max_speed_mps=1e9)
    collector = await make_collector(sample_snapshots, ledger, tick_floor_s=0.1)
    snap = open_current(sample_snapshots)
    for _ in range(100):  # bounded: the first interval has no start in the series, so claim after it
        if len((await (await collector.get("/v1/series")).json())["t"]) >= 1:
            break
        await asyncio.sleep(0.05)
    won = 0
    for k in range(12):
        i = int((snap.task_index == 0).nonzero()[0][k])
        body = {"claim_id": f"s{k}", "task_id": snap.tasks[0]["task_id"], "poi_id": int(snap.poi_ids[i]),
                "lat": float(snap.degrees(i)[0]), "lng": float(snap.degrees(i)[1])}
        resp = await service.post("/v1/claims", json=body, headers={"Authorization": f"Bearer {mint(f'u{k}', 's', 2**33)}"})
        won += (await resp.json())["outcome"] == "won"
    assert won >= 1
    for _ in range(100):  # bounded: up to 10 s for the collector's ticks to take in every win
        await asyncio.sleep(0.1)
        series = await (await collector.get("/v1/series")).json()
        per_tick = [sum(series[p][k] for p in ("cash", "coupon")) * (series["t"][k] - (series["t"][k - 1] if k else 0))
                    for k in range(1, len(series["t"]))]
        if sum(per_tick) == pytest.approx(won, abs=0.5):
            break
    assert set(series) == {"t", "cash", "coupon"} and len(series["t"]) >= 2
    assert sum(per_tick) == pytest.approx(won, abs=0.5)  # rates times tick lengths add up to the wins
    districts = await (await collector.get("/v1/districts")).json()
    code = snap.tasks[0]["district_code"]
    assert next(d for d in districts["districts"] if d["code"] == code)["claims_last_minute"] == won


def test_a_stream_subscriber_that_goes_away_is_let_go_without_an_error(sample_snapshots: Path, tmp_path: Path) -> None:
    import socket

    process = collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}", "--stream-heartbeat-s", "0.05").start()
    try:
        process.wait_ready()
        with socket.create_connection(("127.0.0.1", process.port), timeout=5) as tab:
            tab.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while b"event: district" not in received:  # bounded by the socket's timeout
                received += tab.recv(65536)
        # A heartbeat meets the closed connection and the subscriber is let go: waited for, not slept on, so the
        # metrics below are read after the moment an error could have been counted.
        subscribers = -1
        for _ in range(200):  # bounded: 10 s
            subscribers = get_json(f"{process.url}/healthz")["stream_subscribers"]
            if subscribers == 0:
                break
            time.sleep(0.05)
        assert subscribers == 0
        metrics = urllib.request.urlopen(f"{process.url}/metrics", timeout=5).read().decode()
        assert 'route="/v1/stream",status="200"' in metrics and 'status="500"' not in metrics
    finally:
        process.stop()
