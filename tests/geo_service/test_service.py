"""geo_service over real HTTP on loopback: correctness against the oracle, ETags, health, load."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from geo_service.handlers import ROUTES
from geo_service.keys import load_key, snapshot_key
from geo_service.nearby import Lookup
from geo_service.snapshot.folder import open_current
from geo_service.web.openapi import EXAMPLE
from tests.conftest import SAMPLE, MakeClient, build_into
from tests.support.builders import claim_poi, set_csv_field, write_claims_data
from tests.support.oracle import haversine_m


@pytest.fixture(scope="module")
def synth_snapshots(synth_100k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth-snaps")
    build_into(synth_100k, out)
    return out


async def test_nearby_returns_every_active_poi_within_reach_and_nothing_outside_the_window(
    make_client: MakeClient, synth_snapshots: Path
) -> None:
    client = await make_client(synth_snapshots, max_pois=100_000)
    snap = open_current(synth_snapshots)
    assert len(np.unique(snap.poi_ids)) >= 100_000 - 100
    status = Lookup(snap).table.status(int(time.time()))
    active = np.frombuffer(status.active, dtype=np.uint8).astype(bool)[snap.task_index]
    assert 0 < active.sum() < len(active)  # the disabled and the upcoming task are really filtered
    rng = np.random.default_rng(5)
    found = 0
    for i in rng.choice(len(snap.cells), 500, replace=False):
        # Players stand near POIs: jitter up to ~300 m so windows hold POIs and reach edges are probed.
        lat, lng = (float(x) + rng.uniform(-0.003, 0.003) for x in snap.degrees(i))
        resp = await client.get("/v1/nearby", params={"lat": str(lat), "lng": str(lng)})
        assert resp.status == 200
        body = await resp.json()
        got = {(p["poi_id"], p["task_id"]) for p in body["pois"]}
        near = (haversine_m(lat, lng, *snap.degrees(slice(None))) <= snap.grid.reach_m) & active
        want = {(int(p), snap.tasks[int(t)]["task_id"]) for p, t in zip(snap.poi_ids[near], snap.task_index[near])}
        assert want <= got, f"missed {sorted(want - got)[:3]} at ({lat}, {lng})"
        window = set(body["cells"])
        assert 25 <= len(window) <= 35 and body["center_cell"] in window
        assert all(snap.grid.cell_of(p["lat"], p["lng"]) in window for p in body["pois"])
        assert {t["task_id"] for t in body["tasks"]} == {p["task_id"] for p in body["pois"]}
        assert body["seq"] == snap.seq and not body["truncated"]
        found += len(want)
    assert found > 500


async def test_poi_cap_cuts_dense_answers_and_says_so(make_client: MakeClient, sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots, max_pois=5)
    body = await (await client.get("/v1/nearby?lat=22.5329&lng=113.9305")).json()
    assert len(body["pois"]) == 5 and body["truncated"] is True


async def test_etag_revalidates_with_304_and_changes_with_the_window(make_client: MakeClient, sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots)
    first = await client.get("/v1/nearby?lat=22.5329&lng=113.9305")
    etag = first.headers["ETag"]
    again = await client.get("/v1/nearby?lat=22.53291&lng=113.93051", headers={"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag and await again.read() == b""
    moved = await client.get("/v1/nearby?lat=22.5429&lng=113.9305", headers={"If-None-Match": etag})
    assert moved.status == 200 and moved.headers["ETag"] != etag


async def test_status_filter_follows_task_windows(make_client: MakeClient, sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots, max_pois=100_000)
    snap = open_current(sample_snapshots)
    now = time.time()
    body = await (await client.get("/v1/nearby?lat=22.5329&lng=113.9305")).json()
    shown = {t["task_id"] for t in body["tasks"]}
    by_id = {t["task_id"]: t for t in snap.tasks}
    assert shown and all(by_id[t]["enabled"] and by_id[t]["starts_at"] <= now < by_id[t]["ends_at"] for t in shown)
    hidden = {t["task_id"] for t in snap.tasks if not t["enabled"] or t["starts_at"] > now}
    assert hidden and not shown & hidden


async def test_no_snapshot_gives_503_until_one_is_published(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(tmp_path, poll_interval_s=0.05)
    resp = await client.get("/v1/nearby?lat=22.5&lng=114.0")
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "snapshot_unavailable"
    assert "Retry-After" in resp.headers
    health = await client.get("/healthz")
    assert health.status == 503 and (await health.json())["error"]["details"]["snapshot"] is None
    await asyncio.to_thread(build_into, SAMPLE, tmp_path)
    for _ in range(100):  # bounded: the watcher polls every 50 ms
        if (await client.get("/healthz")).status == 200:
            break
        await asyncio.sleep(0.05)
    assert (await client.get("/v1/nearby?lat=22.5329&lng=113.9305")).status == 200


async def test_healthz_reports_seq_age_and_worker(make_client: MakeClient, sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots)
    body = await (await client.get("/healthz")).json()
    assert body["snapshot"]["seq"] == 1 and body["snapshot"]["age_s"] >= 0
    assert body["worker_id"] == 0 and body["status"]["source"] == "snapshot"


async def test_metrics_count_requests_by_route_and_status(make_client: MakeClient, sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots)
    for _ in range(3):
        await client.get("/v1/nearby?lat=22.5329&lng=113.9305")
    await client.get("/v1/nearby?lat=x&lng=1")
    text = await (await client.get("/metrics")).text()
    assert 'geodrop_http_requests_total{worker="0",route="/v1/nearby",status="200"} 3' in text
    assert 'geodrop_http_requests_total{worker="0",route="/v1/nearby",status="400"} 1' in text
    assert 'geodrop_http_request_seconds_count{worker="0",route="/v1/nearby"} 4' in text
    assert 'geodrop_snapshot_seq{worker="0"} 1' in text


async def test_openapi_describes_every_route(make_client: MakeClient, sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots)
    spec = await (await client.get("/openapi.json")).json()
    for method, path, _ in ROUTES:
        assert method.lower() in spec["paths"][path.replace("{name:.+}", "{name}")], path
    params = {p["name"] for p in spec["paths"]["/v1/nearby"]["get"]["parameters"]}
    assert {"lat", "lng", "If-None-Match"} <= params
    # The cell route's example is the cell of the sample POI the other examples use.
    cell = spec["paths"]["/v1/cells/{cell}"]["get"]["parameters"][0]["example"]
    assert cell == open_current(sample_snapshots).grid.cell_of(EXAMPLE["lat"], EXAMPLE["lng"])
    answer = await (await client.get(f"/v1/cells/{cell}")).json()
    assert EXAMPLE["poi_id"] in {p["poi_id"] for p in answer["pois"]}


async def test_next_poll_rises_with_real_loop_lag_and_sheds_past_the_limit(
    make_client: MakeClient, sample_snapshots: Path
) -> None:
    client = await make_client(sample_snapshots, busy_lag_ms=5.0, shed_lag_ms=10_000.0)
    idle = await (await client.get("/v1/nearby?lat=22.5329&lng=113.9305")).json()
    assert idle["next_poll_ms"] == 5000
    for _ in range(8):  # block the server's loop for real: the lag probe sees it
        time.sleep(0.1)
        await asyncio.sleep(0.06)
    busy = await (await client.get("/v1/nearby?lat=22.5329&lng=113.9305")).json()
    assert busy["next_poll_ms"] > idle["next_poll_ms"]
    load = client.app[load_key]
    load.lag_ms = 20_000.0  # past shed_lag_ms: as if the loop had stalled for 20 s
    shed = await client.get("/v1/nearby?lat=22.5329&lng=113.9305")
    assert shed.status == 503 and (await shed.json())["error"]["code"] == "overloaded"
    assert int(shed.headers["Retry-After"]) >= 1
    assert (await client.get("/healthz")).status == 200  # operators still see in
    assert load.shed == 1


async def test_admin_reload_needs_the_token_and_refuses_a_corrupt_snapshot(
    make_client: MakeClient, sample_snapshots: Path, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "snaps"
    shutil.copytree(sample_snapshots, root)
    disabled = await make_client(root)
    assert (await disabled.post("/v1/admin/reload")).status == 401  # admin routes off: still the 401 the contract promises
    client = await make_client(root, admin_token="s3cret", poll_interval_s=3600)
    assert (await client.post("/v1/admin/reload")).status == 401
    assert (await client.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"})).status == 401
    shutil.copytree(root / "1", root / "2")
    cells = root / "2" / "cells.npy"
    cells.write_bytes(cells.read_bytes()[:-1] + b"\x01")
    (root / "CURRENT").write_text("2\n")
    refused = await client.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert refused.status == 409 and (await refused.json())["error"]["code"] == "snapshot_refused"
    live = client.app[snapshot_key].live
    assert live is not None and live.lookup.seq == 1
    assert (await (await client.get("/v1/nearby?lat=22.5329&lng=113.9305")).json())["seq"] == 1


async def test_a_task_window_edge_is_crossed_with_a_status_prepared_ahead(make_client: MakeClient, tmp_path: Path) -> None:
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 5}, pois=3)
    edge = int(time.time()) + 6  # time enough to build and start first
    at_edge = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(edge))
    set_csv_field(data / "tasks.csv", 2, "ends_at", at_edge)  # task 1 ends at the edge
    set_csv_field(data / "tasks.csv", 3, "starts_at", at_edge)  # the other task starts there
    await asyncio.to_thread(build_into, data, snaps)
    client = await make_client(snaps)
    _, lat, lng = claim_poi(1, 0)
    seen = []
    for _ in range(400):  # bounded: ~16 s of polling
        body = await (await client.get(f"/v1/nearby?lat={lat}&lng={lng}")).json()
        seen.append((time.time(), sorted(t["task_id"] for t in body["tasks"])))
        if time.time() > edge + 1:
            break
        await asyncio.sleep(0.04)
    assert seen[0][0] < edge - 1, "the service came up too late to see the edge"
    assert all(tasks == ([1] if at < edge else [2]) for at, tasks in seen if abs(at - edge) > 0.1)
    assert seen[0][1] == [1] and seen[-1][1] == [2]
    assert client.app[snapshot_key].edges_inline == 0
