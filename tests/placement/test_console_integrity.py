"""What a save must never do to the draft or the ledger: change a published task's live fields behind the ledger's
back, undo a live change, reuse an id, move another task's points, collide ids, drop columns it does not know, or
publish a revision nobody previewed."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from geo_service.app import seeds_of
from geo_service.config import load_settings
from geo_service.ledger import open_ledger
from geo_service.snapshot.folder import open_current
from placement import store
from placement.app import create_app
from placement.keys import db_key, settings_key
from placement.publish import DraftMoved, _build
from placement.settings import ConsoleSettings
from tests.conftest import SAMPLE, MakeClient, _close, _serve
from tests.placement.conftest import auth, operators_file, points, task_body

Client = TestClient[Any, Any]
ADMIN = "collector-admin-token"


async def _json(resp: Any, status: int) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def _task(console: Client, task_id: int) -> dict[str, Any]:
    return dict(await _json(await console.get(f"/v1/tasks/{task_id}", headers=auth("vic")), 200))


def _save_body(detail: dict[str, Any], **task: Any) -> dict[str, Any]:
    fields = {k: detail[k] for k in ("name", "district_code", "starts_at", "ends_at", "enabled", "stagger_s",
                                      "stagger_groups")}
    return {"version": detail["version"], "task": {**fields, **task}, "prizes": detail["prizes"]}


async def test_a_published_tasks_kill_switch_is_live_and_a_new_tasks_quota_is_not(console: Client) -> None:
    published = await _task(console, 44030300)
    error = (await _json(await console.put("/v1/tasks/44030300", json=_save_body(published, enabled=False),
                                           headers=auth("alice")), 422))["error"]
    assert error["field"] == "enabled" and "live" in error["message"]
    assert (await _task(console, 44030300))["enabled"] is True
    new = await _json(await console.post("/v1/tasks", json=task_body(pts=points(3)), headers=auth("alice")), 201)
    body = _save_body(new)
    body["prizes"] = [{**p, "quota": 1} for p in new["prizes"]]
    saved = await _json(await console.put(f"/v1/tasks/{new['task_id']}", json=body, headers=auth("alice")), 200)
    assert {p["quota"] for p in saved["prizes"]} == {1}


async def test_ids_of_deleted_tasks_are_never_given_again(console: Client) -> None:
    first = await _json(await console.post("/v1/tasks", json=task_body(pts=points(3)), headers=auth("alice")), 201)
    assert first["task_id"] > max(t["task_id"] for t in open_current(console.app[settings_key].snapshots).tasks)
    resp = await console.delete(f"/v1/tasks/{first['task_id']}?version=1", headers=auth("alice"))
    assert resp.status == 200
    second = await _json(await console.post("/v1/tasks", json=task_body(pts=points(3)), headers=auth("alice")), 201)
    assert second["task_id"] > first["task_id"] and second["version"] == 1


async def test_a_deleted_zone_can_be_made_again(console: Client) -> None:
    box = {"type": "Polygon", "coordinates": [[[113.9, 22.5], [113.91, 22.5], [113.91, 22.51], [113.9, 22.5]]]}
    await _json(await console.put("/v1/zones/pond", json={"version": 0, "geometry": box}, headers=auth("alice")), 200)
    assert (await console.delete("/v1/zones/pond?version=1", headers=auth("alice"))).status == 200
    await _json(await console.put("/v1/zones/pond", json={"version": 0, "geometry": box}, headers=auth("bob")), 200)


async def test_editing_a_shared_sets_points_splits_it_off_and_leaves_the_other_task_alone(console: Client) -> None:
    draft = await _json(await console.get("/v1/draft", headers=auth("vic")), 200)
    by_set: dict[int, list[int]] = {}
    for t in draft["tasks"]:
        by_set.setdefault(t["poi_set_id"], []).append(t["task_id"])
    mine, other = next(ids for ids in by_set.values() if len(ids) > 1)[:2]
    detail, before = await _task(console, mine), (await _task(console, other))["points"]
    moved = [{"poi_id": i, "lat": a, "lng": b} for i, a, b in detail["points"]]
    moved[0] = {**moved[0], "lat": round(moved[0]["lat"] + 0.0005, 6)}
    saved = await _json(await console.put(f"/v1/tasks/{mine}", json={**_save_body(detail), "points": moved},
                                          headers=auth("alice")), 200)
    assert saved["poi_set_id"] != detail["poi_set_id"] and len(saved["points"]) == len(moved)
    assert sorted((a, b) for _, a, b in saved["points"]) == sorted((p["lat"], p["lng"]) for p in moved)
    assert (await _task(console, other))["points"] == before  # the other task's set, ids and places, as it was


async def test_new_ids_never_collide_with_ids_given_in_the_same_save(console: Client) -> None:
    top = await console.app[db_key].read(lambda cur: cur.execute("SELECT MAX(poi_id) FROM pois").one()[0])
    pts = [{"poi_id": top + 1, "lat": 22.53, "lng": 113.93}, {"lat": 22.531, "lng": 113.931}]
    saved = await _json(await console.post("/v1/tasks", json=task_body(pts=pts), headers=auth("alice")), 201)
    assert sorted(p[0] for p in saved["points"]) == [top + 1, top + 2]


async def test_a_points_edit_keeps_the_columns_the_console_does_not_know(console: Client) -> None:
    created = await _json(await console.post("/v1/tasks", json=task_body(pts=points(3)), headers=auth("alice")), 201)
    poi_id = created["points"][0][0]
    db = console.app[db_key]
    await db.write(lambda cur: cur.execute("UPDATE pois SET name = %s WHERE poi_id = %s", ("East gate", poi_id)))
    moved = [{"poi_id": i, "lat": round(a + 0.0001, 6), "lng": b} for i, a, b in created["points"]]
    await _json(await console.put(f"/v1/tasks/{created['task_id']}", json={**_save_body(created), "points": moved},
                                  headers=auth("alice")), 200)
    row = await db.read(lambda cur: cur.execute("SELECT name, lat FROM pois WHERE poi_id = %s", (poi_id,)).one())
    assert row == ("East gate", moved[0]["lat"])


async def test_a_publish_builds_only_the_revision_it_was_asked_for(console: Client, tmp_path: Path) -> None:
    settings, db = console.app[settings_key], console.app[db_key]
    await _json(await console.post("/v1/tasks", json=task_body(pts=points(3)), headers=auth("alice")), 201)
    revision = await db.read(store.revision)
    out = tmp_path / "built"
    with pytest.raises(DraftMoved):
        await _build(settings, db, out, tmp_path, lambda stage, done: None, revision - 1)
    assert not out.exists()
    manifest, built = await _build(settings, db, out, tmp_path, lambda stage, done: None, revision)
    assert built == revision and manifest["counts"]["tasks"] == 91


async def test_a_live_change_moves_the_tasks_version_on_so_an_older_editor_cannot_undo_it(
        tmp_path: Path, sample_snapshots: Path, make_collector: MakeClient) -> None:
    snaps = tmp_path / "snaps"
    shutil.copytree(sample_snapshots, snaps)
    ledger_dsn = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = open_ledger(ledger_dsn)
    await ledger.seed(seeds_of(open_current(snaps).tasks))  # as the service does when it opens the snapshot
    await ledger.close()
    collector = await make_collector(snaps, ledger_dsn, admin_token=ADMIN, data_dir=tmp_path / "var")
    settings = load_settings(ConsoleSettings, "GEODROP_CONSOLE_", None, {}, {
        "draft": f"sqlite:///{tmp_path / 'draft.sqlite3'}", "seed": str(SAMPLE), "snapshots": snaps,
        "operators": operators_file(tmp_path), "work_dir": tmp_path / "work",
        "collector": str(collector.make_url("")).rstrip("/"), "collector_admin_token": ADMIN})
    console = await _serve(create_app(settings), [])
    try:
        opened = await _task(console, 44030300)  # bob opens the editor
        answer = await _json(await console.post("/v1/live/prizes/44030300/cash", json={"quota": 100},
                                                headers=auth("alice")), 200)
        assert answer["applied"] == "live, no rebuild"
        now = await _task(console, 44030300)
        assert now["version"] == opened["version"] + 1
        assert {p["prize_type"]: p["quota"] for p in now["prizes"]}["cash"] == 100
        stale = await console.put("/v1/tasks/44030300", json=_save_body(opened, name="bob's"), headers=auth("bob"))
        assert stale.status == 409
        entry = (await _json(await console.get("/v1/audit?target=task:44030300", headers=auth("vic")), 200))["entries"][0]
        assert entry["action"] == "live_prize" and entry["changed"] == ["prizes"]
        assert {p["prize_type"]: p["quota"] for p in entry["before"]["prizes"]}["cash"] == 288
    finally:
        await _close(console)



async def test_a_published_prize_stays_and_an_unpublished_one_is_free(console: Client) -> None:
    published = await _task(console, 44030300)
    assert published["published"] == ["cash", "coupon"]
    dropped = {**_save_body(published), "prizes": published["prizes"][1:]}  # without cash
    error = (await _json(await console.put("/v1/tasks/44030300", json=dropped, headers=auth("alice")), 422))["error"]
    assert error["field"] == "prize_type" and "'cash' was published" in error["message"]
    renamed = {**_save_body(published), "prizes": [{**published["prizes"][0], "prize_type": "CASH"}, *published["prizes"][1:]]}
    assert (await console.put("/v1/tasks/44030300", json=renamed, headers=auth("alice"))).status == 422
    added = {**_save_body(published), "prizes": [*published["prizes"], {"prize_type": "voucher", "quota": 5, "weight": 1}]}
    saved = await _json(await console.put("/v1/tasks/44030300", json=added, headers=auth("alice")), 200)
    changed = {**_save_body(saved), "prizes": [{**p, "quota": 9} if p["prize_type"] == "voucher" else p
                                               for p in saved["prizes"]]}
    saved = await _json(await console.put("/v1/tasks/44030300", json=changed, headers=auth("alice")), 200)
    assert {p["prize_type"]: p["quota"] for p in saved["prizes"]}["voucher"] == 9  # never published: still the draft's
    assert (await console.put("/v1/tasks/999999", json=task_body(1, pts=points(2)), headers=auth("alice"))).status == 404


async def test_no_new_poi_id_goes_past_what_the_build_reads(console: Client) -> None:
    pts = [{"poi_id": 10**18 - 1, "lat": 22.53, "lng": 113.93}, {"lat": 22.531, "lng": 113.931}]
    error = (await _json(await console.post("/v1/tasks", json=task_body(pts=pts), headers=auth("alice")), 422))["error"]
    assert error["field"] == "poi_id" and "18" in error["message"]


async def test_a_rollback_overtakes_a_publish_waiting_for_a_service_that_never_answers(
        tmp_path: Path, sample_snapshots: Path) -> None:
    snaps = tmp_path / "snaps"
    shutil.copytree(sample_snapshots, snaps)
    settings = load_settings(ConsoleSettings, "GEODROP_CONSOLE_", None, {}, {
        "draft": f"sqlite:///{tmp_path / 'draft.sqlite3'}", "seed": str(SAMPLE), "snapshots": snaps,
        "operators": operators_file(tmp_path), "work_dir": tmp_path / "work", "service": "http://127.0.0.1:9"})
    console = await _serve(create_app(settings), [])
    try:
        await _json(await console.post("/v1/tasks", json=task_body(pts=points(3)), headers=auth("alice")), 201)
        preview = await _json(await console.post("/v1/preview", headers=auth("alice")), 200)
        job = await _json(await console.post("/v1/publish", json={"revision": preview["revision"]},
                                             headers=auth("alice")), 202)
        for _ in range(200):  # bounded: 20 s
            job = await _json(await console.get(f"/v1/jobs/{job['id']}", headers=auth("vic")), 200)
            if job["phase"] == "waiting for the services":
                break
            await asyncio.sleep(0.1)
        assert job["phase"] == "waiting for the services" and job["seq"] == 2
        rolled = await _json(await console.post("/v1/rollback", json={}, headers=auth("bob")), 202)
        published = await _json(await console.get(f"/v1/jobs/{job['id']}", headers=auth("vic")), 200)
        assert published["state"] == "published" and "not confirmed" in published["error"]
        for _ in range(200):  # bounded: 20 s; the rollback then waits for the service too, and is overtaken by nothing
            rolled = await _json(await console.get(f"/v1/jobs/{rolled['id']}", headers=auth("vic")), 200)
            if rolled["phase"] == "waiting for the services":
                break
            await asyncio.sleep(0.1)
        assert rolled["seq"] == 1 and open_current(snaps).seq == 1
        entries = (await _json(await console.get("/v1/audit", headers=auth("vic")), 200))["entries"]
        assert [(e["action"], e["state"]) for e in entries if e["action"] == "publish"] == [("publish", "published")]
    finally:
        await _close(console)
