"""The collector's routes: the dashboard feed, task status for the services, health and metrics."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from collector.aggregate import UPCOMING
from collector.keys import feed_key, metrics_key, settings_key, ticker_key, views_key
from collector.openapi import openapi_spec
from collector.views import View
from geo_service.errors import InvalidParam, NotFound, SnapshotUnavailable, error_response
from geo_service.params import one_value
from geo_service.responses import etag_matches, json_response, not_modified
from geo_service.routing import Route


def _view(request: web.Request) -> View:
    view = request.app[views_key].current
    if view is None:
        raise SnapshotUnavailable("no view yet: the first tick has not completed")
    return view


def _bytes(request: web.Request, view: View, body: bytes) -> web.Response:
    etag = f'"{view.version}"'
    if etag_matches(request, etag):
        return not_modified(etag, {})
    return web.Response(body=body, content_type="application/json", headers={"ETag": etag})


async def districts(request: web.Request) -> web.Response:
    view = _view(request)
    return _bytes(request, view, view.districts_body)


async def task_status(request: web.Request) -> web.Response:
    view = _view(request)
    return _bytes(request, view, view.status_body)


def _district_code(text: str) -> int:
    if not (text.isdigit() and len(text) == 6):
        raise InvalidParam(f"district code must be 6 digits; got {text[:20]!r}", field="district")
    return int(text)


async def district(request: web.Request) -> web.Response:
    view = _view(request)
    code = _district_code(request.match_info["code"])
    totals = next((d for d in view.districts if d["code"] == code), None)
    if totals is None:
        raise NotFound(f"no district {code}", field="code")
    tasks = [view.task(i) for i in view.tasks_of(code)]
    return json_response({"version": view.version, **totals, "task_list": tasks})


async def previews(request: web.Request) -> web.Response:
    view = _view(request)
    code = _district_code(one_value(request.query, "district"))
    horizon = time.time() + request.app[settings_key].preview_horizon_s
    soon = [view.task(i) for i in view.tasks_of(code)
            if view.status[i] == UPCOMING and view.index.starts_at[i] <= horizon]
    return json_response({"version": view.version, "district": code, "tasks": sorted(soon, key=lambda t: t["starts_at"])})


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every district (or one, with ?district=) now, then each change."""
    view = _view(request)
    code = _district_code(request.query["district"]) if "district" in request.query else None
    feed = request.app[feed_key]
    queue = feed.subscribe()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        for d in view.districts:
            if code is None or d["code"] == code:
                await response.write(b"event: district\ndata: " + orjson.dumps(d) + b"\n\n")
        heartbeat = request.app[settings_key].stream_heartbeat_s
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=heartbeat)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            if code is None or item["code"] == code:
                await response.write(b"event: district\ndata: " + orjson.dumps(item) + b"\n\n")
    finally:
        feed.unsubscribe(queue)
    return response


def _health(app: web.Application) -> dict[str, object]:
    h = app[ticker_key].health
    view = app[views_key].current
    return {
        "view": None if view is None else {
            "version": view.version, "seq": view.seq, "age_s": round(time.time() - view.built_at, 2)},
        "tick": {"interval_s": h.interval_s, "last_read_s": round(h.last_read_s, 4), "last_tick_s": round(h.last_tick_s, 4),
                 "ticks": h.ticks, "failures": h.failures, "last_error": h.last_error},
        "sweep": {"complete_reads": h.sweeps, "last_started_s_ago": round(time.time() - h.swept_at, 1) if h.sweeps else None,
                  "rows_read": h.sweep_rows},
        "refused_snapshot": h.refused_seq,
        "stream_subscribers": app[feed_key].subscribers,
    }


async def healthz(request: web.Request) -> web.Response:
    health = _health(request.app)
    if health["view"] is None:
        return error_response(503, "view_unavailable", "no view yet", details=health)
    return json_response({"ok": True, **health})


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    h, holder = app[ticker_key].health, app[views_key]
    values = {
        "collector_tick_interval_seconds": ("gauge", "Current tick interval.", h.interval_s),
        "collector_last_read_seconds": ("gauge", "Duration of the last ledger read.", h.last_read_s),
        "collector_last_tick_seconds": ("gauge", "Duration of the last whole tick.", h.last_tick_s),
        "collector_ticks_total": ("counter", "Ticks that swapped in a view.", h.ticks),
        "collector_tick_failures_total": ("counter", "Ticks that kept the last view.", h.failures),
        "collector_sweeps_total": ("counter", "Complete reads of the counters finished.", h.sweeps),
        "collector_view_swaps_total": ("counter", "Views swapped in.", holder.swaps),
        "collector_stream_subscribers": ("gauge", "Open /v1/stream connections.", app[feed_key].subscribers),
    }
    text = app[metrics_key].render({"process": "collector"}, values)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_spec())


ROUTES: list[Route] = [
    ("GET", "/v1/districts", districts),
    ("GET", "/v1/districts/{code}", district),
    ("GET", "/v1/previews", previews),
    ("GET", "/v1/tasks/status", task_status),
    ("GET", "/v1/stream", stream),
    ("GET", "/healthz", healthz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
]
