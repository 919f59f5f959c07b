"""The console's draft routes: read the draft, check a task as the build would, upload points, save and delete
tasks and exclusion zones (optimistic versions, audited), and the audit list. A route reads its path and query
before asking who calls: a malformed id is a 400 for anyone, and tells nothing about the draft."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from geo_service.web.errors import ApiError, InvalidParam, MissingParam, NotFound
from geo_service.web.params import id_param, integer_of, json_object, one_value
from geo_service.web.responses import etag_matches, json_response, not_modified
from geo_service.web.routing import Route
from loaders.pois import PoiColumns
from placement import points as point_sets
from placement import store
from placement.auth import operator
from placement.checks import Problems, check_points, check_prizes, check_task, check_zone, points_of_body, screen, upload_rows
from placement.db import Cursor
from placement.keys import book_key, db_key, state_key

MAX_POINTS = 200_000  # points in one save or upload: bigger sets are the import's (geo-snapshot import) business


class Invalid(ApiError):
    status, code = 422, "invalid_draft"  # the draft would not build: details list every problem by row and field


class VersionConflict(ApiError):
    status, code = 409, "version_conflict"  # saved by someone else since; details say who changed what


def _invalid(problems: Problems, screening: dict[str, Any] | None = None) -> Invalid:
    first = problems.listed[0]
    return Invalid(f"{problems.count} problem(s); nothing was kept. First: {first['row']}: {first['field']}: "
                   f"{first['reason']}", field=first["field"],
                   details={"problems": problems.listed, "count": problems.count, "screening": screening})


def _conflict(exc: store.Conflict) -> VersionConflict:
    return VersionConflict(str(exc), field="version",
                           details={"target": exc.target, "based_on": exc.based_on, "now": exc.now, "changes": exc.changes})


def _checked(request: web.Request, body: Mapping[str, Any], zones: list[Any]) -> tuple[store.TaskSave | None, Problems,
                                                                                        dict[str, Any] | None]:
    """The save a body asks for, checked by the build's validators; the screening of its points."""
    state = request.app[state_key]
    problems = Problems()
    fields = body.get("task")
    if not isinstance(fields, Mapping):
        problems.add("task", "task", "must be an object of the task's fields")
        fields = {}
    task = check_task(fields, state.districts, problems)
    items = body.get("prizes")
    prizes = check_prizes(items if isinstance(items, list) else [], state.channels, problems)
    if not isinstance(items, list) or not items:
        problems.add("prizes", "prizes", "give at least one prize")
    points: PoiColumns | None = None
    if body.get("points") is not None:
        rows = points_of_body(body["points"], problems)
        if len(rows) > MAX_POINTS:
            problems.add("points", "points", f"{len(rows):,} points; at most {MAX_POINTS:,} in one save")
        elif not rows:
            problems.add("points", "points", "a POI set needs at least one point")
        else:
            points = check_points("points", 0, rows, problems)
    set_id = body.get("poi_set_id")
    if set_id is not None and (isinstance(set_id, bool) or not isinstance(set_id, int) or not 0 < set_id < 2**63):
        problems.add("task", "poi_set_id", "must be a positive integer (an existing POI set) or absent")
        set_id = None
    if set_id is not None and body.get("points") is not None:  # points would replace that set's, another task's maybe
        problems.add("task", "poi_set_id", "give points (this task's own set) or poi_set_id (an existing set), not both")
    screening = None
    if points is not None and task is not None:
        screening = screen(points, zones, state.districts.get(task.district_code))
    if task is None or problems.count:
        return None, problems, screening
    return store.TaskSave(task, prizes, points, set_id), problems, screening


def _based_on(body: Mapping[str, Any]) -> int:
    based_on = integer_of(dict(body), "version")
    if based_on < 0:
        raise InvalidParam("version must be 0 (new) or the version you loaded", field="version")
    return based_on


async def draft(request: web.Request) -> web.Response:
    operator(request, request.app[book_key])
    return json_response(await request.app[db_key].read(store.overview), headers={"Cache-Control": "no-store"})


async def outlines(request: web.Request) -> web.Response:
    operator(request, request.app[book_key])
    state = request.app[state_key]
    headers = {"ETag": state.outlines_etag, "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"}
    if etag_matches(request, state.outlines_etag):
        return not_modified(state.outlines_etag, headers)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        return web.Response(body=state.outlines, content_type="application/geo+json",
                            headers={**headers, "Content-Encoding": "gzip"})
    plain = await asyncio.to_thread(gzip.decompress, state.outlines)
    return web.Response(body=plain, content_type="application/geo+json", headers=headers)


async def task_detail(request: web.Request) -> web.Response:
    task_id = id_param(request.match_info["task_id"], "task_id")
    operator(request, request.app[book_key])
    try:  # a set past MAX_POINTS is shown in part: its points are edited by import, not on the map
        detail = await request.app[db_key].read(lambda cur: store.task_detail(cur, task_id, MAX_POINTS))
    except store.Missing as exc:
        raise NotFound(str(exc), field="task_id") from None
    zones = await request.app[db_key].read(store.zones)
    ids, lats, lngs = zip(*detail["points"]) if detail["points"] else ((), (), ())
    rows = [{"poi_id": i, "lat": a, "lng": b} for i, a, b in zip(ids, lats, lngs)]
    district = request.app[state_key].districts.get(detail["district_code"])
    detail["screening"] = await asyncio.to_thread(lambda: screen(check_points("points", 0, rows, Problems()), zones, district))
    return json_response(detail, headers={"Cache-Control": "no-store"})


async def check(request: web.Request) -> web.Response:
    """A save's dry run: 200 with the screening of its points if the task would build, else 422 with every problem
    by row and field (and the screening), exactly as the save would answer; nothing is written. An admin's, as
    saves are (bodies of 200,000 points are not for anyone who can read)."""
    operator(request, request.app[book_key], "admin")
    body = json_object(await request.read())
    _based_on(body)
    zones = await request.app[db_key].read(store.zones)
    _, problems, screening = await asyncio.to_thread(_checked, request, body, zones)
    if problems.count:
        raise _invalid(problems, screening)
    return json_response({"problems": [], "count": 0, "screening": screening})


async def upload(request: web.Request) -> web.Response:
    """Parse an uploaded CSV or GeoJSON of points: the good ones, and every bad line; nothing is stored."""
    operator(request, request.app[book_key], "admin")
    kind = one_value(request.query, "format") if "format" in request.query else "csv"
    if kind not in ("csv", "geojson"):
        raise InvalidParam("format must be csv or geojson", field="format")
    raw = await request.read()
    if not raw:
        raise MissingParam("the body must hold the file", field="file")
    # Counted before anything is parsed: records end in \n or \r (both CSV's), a GeoJSON point names its coordinates.
    records = raw.count(b"coordinates") if kind == "geojson" else max(raw.count(b"\n"), raw.count(b"\r"))
    if records > MAX_POINTS + 1:
        raise InvalidParam(f"more than {MAX_POINTS:,} records; at most {MAX_POINTS:,} points in one upload", field="file")
    problems = Problems()

    def parse() -> tuple[int, PoiColumns]:
        label, first, rows = upload_rows(raw, kind, problems)
        return len(rows), check_points(label, first, rows, problems)

    count, columns = await asyncio.to_thread(parse)
    if problems.count:  # a file is taken whole or not at all: the operator fixes those lines and uploads it again
        raise _invalid(problems)
    points = [{"poi_id": int(i) or None, "lat": a, "lng": b}
              for i, a, b in zip(columns.poi_id.tolist(), columns.lat.tolist(), columns.lng.tolist())]
    return json_response({"points": points, "rows": count})


async def _save(request: web.Request, task_id: int | None) -> web.Response:
    who = operator(request, request.app[book_key], "admin").name
    body = json_object(await request.read())
    based_on = _based_on(body)
    db = request.app[db_key]
    zones = await db.read(store.zones)
    save, problems, screening = await asyncio.to_thread(_checked, request, body, zones)
    if save is None:
        raise _invalid(problems, screening)

    def work(cur: Cursor) -> dict[str, Any]:
        return store.save_task(cur, who, task_id, based_on, save, MAX_POINTS)

    try:
        detail = await db.write(work)
    except store.Conflict as exc:
        raise _conflict(exc) from None
    except store.Missing as exc:
        raise NotFound(str(exc), field="task_id") from None
    except point_sets.Refused as exc:  # a poi_id of another set, a live field changed: nothing was written
        problems.add(exc.row, exc.field, str(exc))
        raise _invalid(problems, screening) from None
    return json_response({**detail, "screening": screening}, status=201 if task_id is None else 200)


async def create_task(request: web.Request) -> web.Response:
    return await _save(request, None)


async def update_task(request: web.Request) -> web.Response:
    return await _save(request, id_param(request.match_info["task_id"], "task_id"))


def _query_version(request: web.Request) -> int:
    text = one_value(request.query, "version")
    return id_param(text, "version") if text != "0" else 0


async def delete_task(request: web.Request) -> web.Response:
    task_id, based_on = id_param(request.match_info["task_id"], "task_id"), _query_version(request)
    who = operator(request, request.app[book_key], "admin").name
    try:
        await request.app[db_key].write(lambda cur: store.delete_task(cur, who, task_id, based_on))
    except store.Conflict as exc:
        raise _conflict(exc) from None
    except store.Missing as exc:
        raise NotFound(str(exc), field="task_id") from None
    return json_response({"deleted": task_id})


def _zone_id(request: web.Request) -> str:
    """A zone id as exclusions.geojson holds it: 1-64 printable characters, no space at either end (the build
    strips them, so the id saved would not be the one asked for)."""
    zone_id = request.match_info["zone_id"]
    if not (0 < len(zone_id) <= 64 and zone_id.isprintable() and zone_id == zone_id.strip()):
        problems = Problems()
        problems.add("zone", "id", "1-64 printable characters, no space at either end")
        raise _invalid(problems)
    return zone_id


async def put_zone(request: web.Request) -> web.Response:
    who = operator(request, request.app[book_key], "admin").name
    zone_id, body = _zone_id(request), json_object(await request.read())
    based_on, problems = _based_on(body), Problems()
    zone = check_zone(zone_id, body, problems)
    if zone is None:
        raise _invalid(problems)
    try:
        saved = await request.app[db_key].write(lambda cur: store.save_zone(cur, who, zone, zone_id, based_on))
    except store.Conflict as exc:
        raise _conflict(exc) from None
    except store.Missing as exc:
        raise NotFound(str(exc), field="zone_id") from None
    return json_response({"id": zone_id, "version": saved})


async def delete_zone(request: web.Request) -> web.Response:
    zone_id, based_on = _zone_id(request), _query_version(request)
    who = operator(request, request.app[book_key], "admin").name
    try:
        await request.app[db_key].write(lambda cur: store.save_zone(cur, who, None, zone_id, based_on))
    except store.Conflict as exc:
        raise _conflict(exc) from None
    except store.Missing as exc:
        raise NotFound(str(exc), field="zone_id") from None
    return json_response({"deleted": zone_id})


async def zone_drops(request: web.Request) -> web.Response:
    """How many POIs of which tasks each exclusion zone drops (the first zone listed that holds a point)."""
    operator(request, request.app[book_key])
    db = request.app[db_key]
    zones = await db.read(store.zones)
    return json_response({"zones": await db.read(lambda cur: point_sets.zone_drops(cur, zones), stream=True)})


async def audit(request: web.Request) -> web.Response:
    target = one_value(request.query, "target") if "target" in request.query else None
    limit = id_param(request.query.get("limit", "200"), "limit", 4)
    operator(request, request.app[book_key])
    entries = await request.app[db_key].read(lambda cur: store.audit(cur, target=target, limit=max(1, min(limit, 1000))))
    return json_response({"entries": entries}, headers={"Cache-Control": "no-store"})


ROUTES: list[Route] = [
    ("GET", "/v1/draft", draft),
    ("GET", "/v1/districts.geojson", outlines),
    ("GET", "/v1/tasks/{task_id}", task_detail),
    ("POST", "/v1/check", check),
    ("POST", "/v1/uploads/points", upload),
    ("POST", "/v1/tasks", create_task),
    ("PUT", "/v1/tasks/{task_id}", update_task),
    ("DELETE", "/v1/tasks/{task_id}", delete_task),
    ("GET", "/v1/zone-drops", zone_drops),
    ("PUT", "/v1/zones/{zone_id}", put_zone),
    ("DELETE", "/v1/zones/{zone_id}", delete_zone),
    ("GET", "/v1/audit", audit),
]
