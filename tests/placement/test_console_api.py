"""The console's API on SQLite and MariaDB drafts: saves checked by the build's rules and all-or-nothing, optimistic
versions with the diff of what came between, the audit, uploads naming their bad lines, screening flags checked
against plain bounding boxes, roles and sessions, and preview, publish and rollback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import shapely
from aiohttp.test_utils import TestClient

from geo_service.snapshot.folder import open_current
from placement.auth import OperatorBook, add_operator, demo_problems, read_operators
from placement.cli import main
from placement.keys import settings_key
from tests.conftest import SAMPLE
from tests.placement.conftest import DISTRICT, TOKENS, auth, points, task_body

Client = TestClient[Any, Any]


async def _json(resp: Any, status: int) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def _draft(console: Client) -> dict[str, Any]:
    return dict(await _json(await console.get("/v1/draft", headers=auth("vic")), 200))


async def test_a_task_saved_from_points_and_prizes_is_in_the_draft_and_the_audit(console: Client) -> None:
    placed = points(1003)
    created = await _json(await console.post("/v1/tasks", json=task_body(pts=placed), headers=auth("alice")), 201)
    assert created["version"] == 1 and created["district_code"] == DISTRICT
    assert sorted((p[1], p[2]) for p in created["points"]) == sorted((p["lat"], p["lng"]) for p in placed)
    assert [(p["prize_type"], p["quota"]) for p in created["prizes"]] == [("cash", 100), ("coupon", 500)]
    assert len({p[0] for p in created["points"]}) == 1003  # each point got an id of its own
    assert created["screening"]["outside_count"] == 0 and not any(created["screening"]["zone"])
    draft = await _draft(console)
    assert any(t["task_id"] == created["task_id"] and t["pois"] == 1003 for t in draft["tasks"])
    entries = (await _json(await console.get("/v1/audit", headers=auth("vic")), 200))["entries"]
    assert entries[0]["who"] == "alice" and entries[0]["action"] == "create_task" and entries[0]["pois_added"] == 1003


async def test_a_stale_save_is_refused_with_what_changed_and_changes_nothing(console: Client) -> None:
    task = await _json(await console.post("/v1/tasks", json=task_body(pts=points(20)), headers=auth("alice")), 201)
    url = f"/v1/tasks/{task['task_id']}"
    # Both load version 1; alice saves first, bob's save on version 1 must not overwrite hers.
    await _json(await console.put(url, json=task_body(1, name="alice's name"), headers=auth("alice")), 200)
    refused = await _json(await console.put(url, json=task_body(1, name="bob's name", quota=7), headers=auth("bob")), 409)
    error = refused["error"]
    assert error["code"] == "version_conflict" and error["details"]["now"] == 2 and error["details"]["based_on"] == 1
    [change] = error["details"]["changes"]
    assert change["who"] == "alice" and change["changed"] == ["name"]
    assert change["before"]["name"] == "walk" and change["after"]["name"] == "alice's name"
    now = await _json(await console.get(url, headers=auth("vic")), 200)
    assert now["name"] == "alice's name" and now["version"] == 2


async def test_a_bad_save_lists_every_problem_by_row_and_field_and_writes_nothing(console: Client) -> None:
    before = await _draft(console)
    body = task_body(pts=[*points(3), {"lat": "north", "lng": 113.9}, {"lat": 22.5, "lng": 181}],
                     district_code=999999, ends_at="2025-01-01T00:00:00Z")
    body["prizes"][1]["quota"] = -5
    error = (await _json(await console.post("/v1/tasks", json=body, headers=auth("alice")), 422))["error"]
    found = {(p["row"], p["field"]) for p in error["details"]["problems"]}
    assert {("task", "ends_at"), ("prizes[1]", "quota"), ("points 3", "lat"), ("points 4", "lng")} <= found
    assert await _draft(console) == before
    # A point taking another set's poi_id fails inside the transaction: the task, its prizes and its other points too.
    sample_poi = int((SAMPLE / "pois.csv").read_text().splitlines()[1].split(",")[0])
    body = task_body(pts=[*points(5), {"lat": 22.53, "lng": 113.93, "poi_id": sample_poi}])
    error = (await _json(await console.post("/v1/tasks", json=body, headers=auth("alice")), 422))["error"]
    assert error["field"] == "poi_id" and str(sample_poi) in error["message"]
    assert await _draft(console) == before
    for raw in (b"", b"[1]", b"{", orjson.dumps({"version": -1}), orjson.dumps({"version": "x"})):
        resp = await console.post("/v1/tasks", data=raw, headers=auth("alice"))
        assert resp.status == 400, await resp.text()
    assert await _draft(console) == before


async def test_an_upload_names_its_bad_lines_and_keeps_nothing(console: Client) -> None:
    good = "".join(f"{p['lat']},{p['lng']}\n" for p in points(10))
    bad = {3: "abc,113.9", 5: "22.5,", 8: "95,113.9", 10: "22.5,200", 12: ","}
    lines = good.splitlines()
    for line_no, text in sorted(bad.items()):
        lines.insert(line_no - 2, text)
    body = ("lat,lng\n" + "\n".join(lines) + "\n").encode()
    error = (await _json(await console.post("/v1/uploads/points?format=csv", data=body, headers=auth("alice")), 422))["error"]
    assert sorted({int(p["row"].split()[1]) for p in error["details"]["problems"]}) == sorted(bad)
    good_only = ("lat,lng\n" + good).encode()
    answer = await _json(await console.post("/v1/uploads/points", data=good_only, headers=auth("alice")), 200)
    assert len(answer["points"]) == 10
    geo = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [113.93, 22.53]}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[1, 2], [3, 4]]}, "properties": {}}]}
    error = (await _json(await console.post("/v1/uploads/points?format=geojson", data=orjson.dumps(geo),
                                            headers=auth("alice")), 422))["error"]
    assert {p["row"] for p in error["details"]["problems"]} == {"feature 2"}
    huge_field = b"lat,lng\n22.5,\"" + b"1" * 200_000 + b"\"\n"  # past the csv module's field limit
    assert (await console.post("/v1/uploads/points", data=huge_field, headers=auth("alice"))).status == 422
    many = b"lat,lng\n" + b"1,1\n" * 200_002  # counted before parsing
    error = (await _json(await console.post("/v1/uploads/points", data=many, headers=auth("alice")), 400))["error"]
    assert error["field"] == "file"
    assert (await _draft(console))["revision"] == 0


async def test_screening_flags_match_plain_bounding_boxes(console: Client) -> None:
    """The sample's zones and the check here are rectangles: a point is in one exactly when it lies in its box."""
    draft = await _draft(console)
    zones = {z["id"]: shapely.geometry.shape(z["geometry"]) for z in draft["zones"]}
    boxes = {zid: g.bounds for zid, g in zones.items() if g.area == shapely.box(*g.bounds).area}
    assert boxes, "the sample should hold rectangular zones"
    probe = [{"lat": (b[1] + b[3]) / 2, "lng": (b[0] + b[2]) / 2} for b in boxes.values()] + points(5)
    answer = await _json(await console.post("/v1/check", json=task_body(pts=probe), headers=auth("alice")), 200)
    expected = [next((z for z, b in boxes.items() if b[0] <= p["lng"] <= b[2] and b[1] <= p["lat"] <= b[3]), None)
                for p in probe]
    assert answer["screening"]["zone"] == expected and expected.count(None) == 5
    # Outside the district: the zones' centres lie in other districts than 南山区, the random points inside it.
    assert answer["screening"]["outside"][-5:] == [False] * 5


async def test_roles_and_sessions(console: Client) -> None:
    assert (await console.get("/v1/draft")).status == 401
    assert (await console.get("/v1/draft", headers={"Authorization": "Bearer nope"})).status == 401
    for path in ("/v1/tasks", "/v1/check", "/v1/uploads/points", "/v1/preview"):  # a viewer reads; checks are a save's
        assert (await console.post(path, json=task_body(pts=points(2)), headers=auth("vic"))).status == 403
    session = await _json(await console.post("/v1/session", headers=auth("vic")), 200)
    assert session["name"] == "vic" and TOKENS["vic"] not in str(session)
    # The cookie alone is not enough: the page's header must come with it (no other origin can send that).
    assert (await console.get("/v1/draft")).status == 401
    assert (await console.get("/v1/draft", headers={"X-Geodrop-Session": "1"})).status == 200
    console.session.cookie_jar.clear()
    console.session.cookie_jar.update_cookies({"geodrop_console": "alice.99999999999.forged"})
    assert (await console.get("/v1/draft", headers={"X-Geodrop-Session": "1"})).status == 401
    health = await _json(await console.get("/healthz"), 200)
    assert not any(token in str(health) for token in TOKENS.values())


async def test_zones_are_audited_and_their_drops_counted(console: Client) -> None:
    task = await _json(await console.post("/v1/tasks", json=task_body(pts=points(200)), headers=auth("alice")), 201)
    box = (113.92, 22.52, 113.93, 22.53)
    geometry = orjson.loads(shapely.to_geojson(shapely.box(*box)))
    await _json(await console.put("/v1/zones/test-box", json={"version": 0, "reason": "works", "geometry": geometry},
                                  headers=auth("alice")), 200)
    inside = sum(box[0] <= p[2] <= box[2] and box[1] <= p[1] <= box[3] for p in task["points"])
    drops = await _json(await console.get("/v1/zone-drops", headers=auth("vic")), 200)
    mine = next(z for z in drops["zones"] if z["id"] == "test-box")
    assert {"task_id": task["task_id"], "pois": inside} in mine["tasks"] and inside > 0
    bad = {"version": 0, "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 1], [1, 0], [0, 0]]]}}
    error = (await _json(await console.put("/v1/zones/twisted", json=bad, headers=auth("alice")), 422))["error"]
    assert error["field"] == "geometry"
    assert (await console.put("/v1/zones/test-box", json={"version": 0, "geometry": geometry},
                              headers=auth("bob"))).status == 409


async def _wait_job(console: Client, job_id: int) -> dict[str, Any]:
    for _ in range(600):  # bounded: 60 s
        job = await _json(await console.get(f"/v1/jobs/{job_id}", headers=auth("vic")), 200)
        if job["state"] != "running":
            return dict(job)
        await asyncio.sleep(0.1)
    raise AssertionError("the job did not finish")


async def test_preview_then_publish_then_roll_back(console: Client) -> None:
    task = await _json(await console.post("/v1/tasks", json=task_body(pts=points(50)), headers=auth("alice")), 201)
    first = (await _draft(console))["tasks"][0]
    fields = {k: first[k] for k in ("name", "district_code", "starts_at", "ends_at", "enabled")}
    # A published task's quotas are the ledger's: an ordinary save may not change them (a publish would not).
    body = {"version": first["version"], "task": fields, "prizes": [{**p, "quota": p["quota"] + 1} for p in first["prizes"]]}
    error = (await _json(await console.put(f"/v1/tasks/{first['task_id']}", json=body, headers=auth("bob")), 422))["error"]
    assert (error["details"]["problems"][0]["row"], error["field"]) == ("prizes[0]", "quota")
    body = {"version": first["version"], "task": {**fields, "name": "renamed"},
            "prizes": [*first["prizes"], {"prize_type": "voucher", "quota": 7, "weight": 1}]}
    await _json(await console.put(f"/v1/tasks/{first['task_id']}", json=body, headers=auth("bob")), 200)
    assert (await console.post("/v1/preview", headers=auth("vic"))).status == 403  # a build is an admin's to ask for
    preview = await _json(await console.post("/v1/preview", headers=auth("alice")), 200)
    assert [t["task_id"] for t in preview["tasks_added"]] == [task["task_id"]] and preview["totals"]["pois_added"] == 50
    [changed] = preview["tasks_changed"]
    assert changed["task_id"] == first["task_id"] and changed["fields"] == {"name": [first["name"], "renamed"]}
    assert changed["quotas"] == {"voucher": [None, 7]}
    stale = await console.post("/v1/publish", json={"revision": preview["revision"] - 1}, headers=auth("alice"))
    assert stale.status == 409
    assert (await console.post("/v1/publish", json={"revision": preview["revision"]}, headers=auth("vic"))).status == 403
    job = await _json(await console.post("/v1/publish", json={"revision": preview["revision"]}, headers=auth("alice")), 202)
    job = await _wait_job(console, job["id"])
    assert job["state"] == "published" and job["seq"] == 2, job
    published = open_current(console.app[settings_key].snapshots)
    assert {t["task_id"]: t["pois"] for t in published.tasks}[task["task_id"]] == 50
    live = (await _json(await console.get("/v1/live", headers=auth("vic")), 200))
    assert live["current"] == 2 and live["snapshots"] == [1, 2]
    job = await _wait_job(console, (await _json(await console.post("/v1/rollback", json={}, headers=auth("alice")), 202))["id"])
    assert job["seq"] == 1 and (await _json(await console.get("/v1/live", headers=auth("vic")), 200))["current"] == 1
    actions = [e["action"] for e in (await _json(await console.get("/v1/audit", headers=auth("vic")), 200))["entries"]]
    assert actions[:4] == ["rollback", "publish", "update_task", "create_task"]


def test_an_operators_file_broken_after_start_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "ops.json"
    add_operator(path, "alice", "admin", TOKENS["alice"])
    book = OperatorBook(path)
    assert set(book.current().by_name) == {"alice"}
    path.write_text("{not json")
    assert set(book.current().by_name) == {"alice"}
    assert main(["serve", "--operators", str(path), "--draft", f"sqlite:///{tmp_path / 'd.sqlite3'}"]) == 2


def test_a_published_demo_token_is_refused_off_loopback(tmp_path: Path) -> None:
    add_operator(tmp_path / "ops.json", "demo", "admin", "geodrop-demo-console")
    args = ["serve", "--operators", str(tmp_path / "ops.json"), "--draft", f"sqlite:///{tmp_path / 'd.sqlite3'}"]
    assert main([*args, "--host", "0.0.0.0"]) == 2
    add_operator(tmp_path / "ops.json", "demo", "admin", "a-token-of-our-own-0123456789abcdef")
    assert demo_problems(read_operators(tmp_path / "ops.json"), "0.0.0.0") == []
