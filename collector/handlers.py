"""The collector's routes: the dashboard feed, task status for the services, health and metrics."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import web

from collector.aggregate import UPCOMING
from collector.keys import (
    feed_key,
    ledger_check_key,
    metrics_key,
    puller_key,
    settings_key,
    shipper_key,
    ticker_key,
    views_key,
)
from collector.openapi import openapi_spec
from collector.security import admin_check
from collector.views import View, change_json
from geo_service.ledger import LedgerError, PrizeChangeRefused
from geo_service.ledger.rates import UNLIMITED, rate_milli
from geo_service.snapshot.format import MAX_RATE_PER_S
from geo_service.snapshot.pull import pull_metrics
from geo_service.web.errors import (
    InvalidParam,
    LedgerUnavailable,
    NotFound,
    Overloaded,
    QuotaBelowIssued,
    SnapshotUnavailable,
    ViewUnavailable,
)
from geo_service.web.params import field_of, id_param, integer_of, json_object, one_value
from geo_service.web.responses import etag_matches, json_response, not_modified
from geo_service.web.routing import Route

log = logging.getLogger("geodrop.collector")
STREAM_RETRY_AFTER_S = 30  # a refused dashboard tries again this much later (its page does, past EventSource's give-up)


def current_view(request: web.Request) -> View:
    """Return the live view; 503 before the first tick has made one."""
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
    view = current_view(request)
    return _bytes(request, view, view.districts_body)


async def task_status(request: web.Request) -> web.Response:
    view = current_view(request)
    return _bytes(request, view, view.status_body)


def _district_code(text: str) -> int:
    code = id_param(text, "district", 6)
    if len(text) != 6:
        raise InvalidParam(f"district code must be 6 digits; got {text[:20]!r}", field="district")
    return code


async def district(request: web.Request) -> web.Response:
    view = current_view(request)
    code = _district_code(request.match_info["code"])
    totals = next((d for d in view.districts if d["code"] == code), None)
    if totals is None:
        raise NotFound(f"no district {code}", field="code")
    tasks = [view.task(i) for i in view.tasks_of(code)]
    return json_response({"version": view.version, **totals, "task_list": tasks})


async def previews(request: web.Request) -> web.Response:
    view = current_view(request)
    code = _district_code(one_value(request.query, "district"))
    horizon = time.time() + request.app[settings_key].preview_horizon_s
    soon = [view.task(i) for i in view.tasks_of(code)
            if view.status[i] == UPCOMING and view.index.starts_at[i] <= horizon]
    return json_response({"version": view.version, "district": code, "tasks": sorted(soon, key=lambda t: t["starts_at"])})


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every district (or one, with ?district=) now, then each change."""
    view = current_view(request)
    code = _district_code(one_value(request.query, "district")) if "district" in request.query else None
    feed, settings = request.app[feed_key], request.app[settings_key]
    if feed.subscribers >= settings.stream_max_subscribers:
        feed.refused += 1
        raise Overloaded(f"{feed.subscribers} streams are open, the most this collector keeps; retry after the time given",
                         headers={"Retry-After": str(STREAM_RETRY_AFTER_S)})
    queue = feed.subscribe()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

    stalled = False

    async def send(data: bytes) -> None:
        nonlocal stalled
        try:  # a subscriber that does not read fills its socket and would hold this write, and its place, for ever
            async with asyncio.timeout(settings.stream_heartbeat_s):
                await response.write(data)
        except TimeoutError:
            stalled = True
            raise

    try:
        async with asyncio.timeout(settings.stream_max_s):  # the whole stream, a stuck first write included
            await response.prepare(request)
            for d in view.districts:
                if code is None or d["code"] == code:
                    await send(b"event: district\ndata: " + orjson.dumps(d) + b"\n\n")
            while True:  # bounded by the timeout above
                try:
                    async with asyncio.timeout(settings.stream_heartbeat_s):
                        item = await queue.get()
                except TimeoutError:
                    await send(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                if code is None or item["code"] == code:
                    await send(b"event: district\ndata: " + orjson.dumps(item) + b"\n\n")
    except (ConnectionResetError, TimeoutError):
        pass  # the subscriber went away or stopped reading, or the stream reached stream_max_s: it reconnects
    finally:
        feed.unsubscribe(queue)
        if stalled and request.transport is not None:
            # Closed gently, the socket would live on until its unsent bytes were read: never, for this client.
            request.transport.abort()
    return response


def _shipping(app: web.Application) -> dict[str, object] | None:
    """The flow log's shipping into MySQL (a Redis ledger), or None where there is none."""
    if shipper_key not in app:
        return None
    s = app[shipper_key].health
    return {"shipped": s.shipped, "backlog": s.backlog, "lag_s": s.lag_s, "failures": s.failures,
            "last_error": s.last_error, "last_round_s_ago": round(time.time() - s.last_round_at, 1) if s.last_round_at else None,
            "groups_recreated": s.groups_recreated, "last_gap": s.last_gap, "buckets_fenced": s.buckets_fenced,
            "last_fence": s.last_fence}


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
        "ledger": app[ledger_check_key].health(app[ticker_key].ledger.kind),
        "shipping": _shipping(app),
        "origin": app[puller_key].view() if puller_key in app else None,
        "stream_subscribers": app[feed_key].subscribers,
    }


async def healthz(request: web.Request) -> web.Response:
    health = _health(request.app)
    if health["view"] is None:
        raise ViewUnavailable("no view yet", details=health)
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
        "collector_streams_refused_total": ("counter", "Streams refused because stream_max_subscribers were open.",
                                            app[feed_key].refused),
        "ledger_config_problems": ("gauge", "Requirements of the ledger its server does not meet (see /healthz).",
                                   len(app[ledger_check_key].problems)),
    }
    if puller_key in app:
        values |= pull_metrics(app[puller_key])
    if shipper_key in app:
        ship = app[shipper_key].health
        values |= {"flow_shipped_total": ("counter", "Claim records shipped into MySQL.", ship.shipped),
                   "flow_backlog": ("gauge", "Claim records in the flow streams, not yet shipped or trimmed.", ship.backlog),
                   "flow_lag_seconds": ("gauge", "Age of the oldest record in the flow streams.", ship.lag_s),
                   "flow_ship_failures_total": ("counter", "Shipping rounds that failed.", ship.failures),
                   "flow_groups_recreated_total": ("counter", "Flow-log consumer groups found gone and made again (what "
                                                              "they held may be lost: see /healthz shipping.last_gap).",
                                                   ship.groups_recreated),
                   "flow_buckets_fenced_total": ("counter", "Buckets whose flow stream went back behind what was shipped "
                                                            "from it, made to refuse claims until repaired.",
                                                 ship.buckets_fenced)}
    text = app[metrics_key].render({"process": "collector"}, values)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


def prize_change(raw: bytes) -> tuple[int | None, int | None]:
    """Return (quota, rate_milli) from a live change's body: {"quota": N, "rate_per_s": R or null (no limit)};
    an absent key keeps the value in force."""
    body = json_object(raw)
    unknown = set(body) - {"quota", "rate_per_s"}
    if unknown or not body:
        raise InvalidParam("give quota and/or rate_per_s, nothing else", field=sorted(unknown)[0] if unknown else "quota")
    quota = integer_of(body, "quota") if "quota" in body else None
    if quota is not None and quota < 0:
        raise InvalidParam("quota must be 0 or more", field="quota")
    if "rate_per_s" not in body:
        return quota, None
    if body["rate_per_s"] is None:
        return quota, UNLIMITED
    rate = field_of(body, "rate_per_s", (int, float), "a number or null")
    if not 0 <= rate <= MAX_RATE_PER_S:
        raise InvalidParam("rate_per_s must be in [0, 1e9], or null for no limit", field="rate_per_s")
    return quota, rate_milli(float(rate))


async def set_prize(request: web.Request) -> web.Response:
    app = request.app
    admin_check(request, "live prize changes")
    task_id, prize_type = id_param(request.match_info["task_id"], "task_id"), request.match_info["prize_type"]
    quota, rate = prize_change(await request.read())
    try:
        change = await app[ticker_key].ledger.set_prize(task_id, prize_type, quota, rate)
    except PrizeChangeRefused as exc:
        raise (NotFound if exc.code == "no_such_prize" else QuotaBelowIssued)(str(exc), field="quota") from None
    except LedgerError as exc:
        raise LedgerUnavailable(f"the ledger is unreachable; nothing changed: {exc}") from exc
    log.info("live prize change", extra={"audit": "prize_change", **change_json(change)})
    return json_response(change_json(change))


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
    ("POST", "/v1/admin/prizes/{task_id}/{prize_type}", set_prize),
]
