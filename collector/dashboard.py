"""The operators' dashboard: the page and its static files, and the routes only it uses (district
outlines, a task's POIs, the probe of what a phone would get, the issue-rate series, the health strip,
the kill switch)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from collector.handlers import current_view
from collector.keys import files_key, service_key, settings_key, ticker_key
from collector.security import admin_check
from collector.service import ServiceUnavailable
from geo_service.ledger import LedgerError
from geo_service.snapshot.grid import MAX_ABS_LNG
from geo_service.web.errors import InvalidParam, LedgerUnavailable, NotFound
from geo_service.web.params import coordinate, id_param, json_object
from geo_service.web.responses import etag_matches, json_response, not_modified
from geo_service.web.routing import Route
from geo_service.web.static import SHARED, StaticFiles

log = logging.getLogger("geodrop.collector")
STATIC = Path(str(resources.files("collector").joinpath("static")))
# The dashboard's files beside the vendored libraries geo-service serves too, at content-hashed immutable names.
FILES = StaticFiles(STATIC, SHARED)
MAX_POIS = 20_000


async def outlines(request: web.Request) -> web.Response:
    view = current_view(request)
    etag = f'"outlines-{view.seq}"'
    if etag_matches(request, etag):
        return not_modified(etag, {})
    body = await request.app[files_key].outline(view.seq)
    headers = {"ETag": etag, "Content-Encoding": "gzip", "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if "gzip" not in request.headers.get("Accept-Encoding", ""):
        plain = await asyncio.to_thread(gzip.decompress, body)  # megabytes on China's counties: off the loop
        return web.Response(body=plain, content_type="application/geo+json", headers={"ETag": etag})
    return web.Response(body=body, content_type="application/geo+json", headers=headers)


async def task_pois(request: web.Request) -> web.Response:
    view, task_id = current_view(request), id_param(request.match_info["task_id"], "task_id")
    limit_text = request.query.get("limit", "2000")
    limit = id_param(limit_text, "limit", 6)
    if not 1 <= limit <= MAX_POIS:
        raise InvalidParam(f"limit must be a whole number in [1, {MAX_POIS}]; got {limit_text[:20]!r}", field="limit")
    position = view.index.positions(np.array([task_id], dtype=np.int64))[0]
    if position < 0:
        raise NotFound(f"no task {task_id} in snapshot {view.seq}", field="task_id")
    files = request.app[files_key]
    rows = await files.task_rows(view.seq, int(position))
    snap = await files.snapshot(view.seq)
    shown = rows[:limit]
    lats, lngs = snap.degrees(shown)
    pois = [[lng, lat, poi_id] for lng, lat, poi_id in zip(lngs.tolist(), lats.tolist(), snap.poi_ids[shown].tolist())]
    return json_response({"task_id": task_id, "seq": view.seq, "total": int(len(rows)), "pois": pois})


async def probe(request: web.Request) -> web.Response:
    """What a phone at (lat, lng) gets from the service, and its window's cells as polygons."""
    lat, lng = coordinate(request.query, "lat", -90.0, 90.0), coordinate(request.query, "lng", -MAX_ABS_LNG, MAX_ABS_LNG)
    answer = await request.app[service_key].get(f"/v1/nearby?lat={lat}&lng={lng}")
    if "cells" not in answer:  # the service's own error answer, in the one error shape: passed on as it is
        return json_response(answer, status=int(answer.get("error", {}).get("status", 502)))
    grid = (await request.app[files_key].snapshot(int(answer["seq"]))).grid
    cells = [{"type": "Feature", "properties": {"cell": c, "center": c == answer["center_cell"]},
              "geometry": {"type": "Polygon", "coordinates": [grid.cell_outline(c)]}} for c in answer["cells"]]
    return json_response({"nearby": answer, "cells": {"type": "FeatureCollection", "features": cells}})


async def series(request: web.Request) -> web.Response:
    view = current_view(request)
    return json_response(request.app[ticker_key].history.series(view.index.prize_types))


async def overview(request: web.Request) -> web.Response:
    """The health strip and what the page may offer: admin actions, the probe."""
    app = request.app
    view, settings, h = current_view(request), app[settings_key], app[ticker_key].health
    built_at = (await app[files_key].snapshot(view.seq)).manifest.get("built_at", 0)
    try:
        service: Any = await app[service_key].get("/healthz") if settings.service else None
    except ServiceUnavailable as exc:
        service = {"error": exc.message}
    return json_response({
        "admin": bool(settings.admin_token), "probe": bool(settings.service), "deliveries": bool(settings.channels),
        "snapshot": {"seq": view.seq, "age_s": round(time.time() - built_at, 1)},
        "tick": {"last_tick_s": round(h.last_tick_s, 4), "interval_s": h.interval_s, "last_read_s": round(h.last_read_s, 4),
                 "view_age_s": round(time.time() - view.built_at, 2), "failures": h.failures, "last_error": h.last_error},
        "service": service,
    })


async def set_task(request: web.Request) -> web.Response:
    """The kill switch: POST {"enabled": false} (or true) with the admin bearer token."""
    app = request.app
    admin_check(request, "the kill switch")
    task_id = id_param(request.match_info["task_id"], "task_id")
    body = json_object(await request.read())
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise InvalidParam("enabled must be true or false", field="enabled")
    if current_view(request).index.positions(np.array([task_id], dtype=np.int64))[0] < 0:
        raise NotFound(f"no task {task_id} in the live snapshot", field="task_id")
    try:
        won_at = await app[ticker_key].ledger.set_enabled(task_id, enabled)
    except LedgerError as exc:
        raise LedgerUnavailable(f"the ledger is unreachable; nothing changed: {exc}") from exc
    log.info("kill switch", extra={"audit": "task_enabled", "task_id": task_id, "enabled": enabled, "at": time.time(),
                                   "last_win_at": won_at, "client": request.remote})
    return json_response({"task_id": task_id, "enabled": enabled, "last_win_at": won_at})


ROUTES: list[Route] = [
    ("GET", "/", FILES.page("index.html")),
    ("GET", "/static/{name:.+}", FILES.serve),
    ("GET", "/v1/districts.geojson", outlines),
    ("GET", "/v1/tasks/{task_id}/pois", task_pois),
    ("GET", "/v1/probe", probe),
    ("GET", "/v1/series", series),
    ("GET", "/v1/dashboard", overview),
    ("POST", "/v1/admin/tasks/{task_id}", set_task),
]
