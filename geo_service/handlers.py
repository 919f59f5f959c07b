"""Thin handlers: parse, call the core, encode; and the route table."""

from __future__ import annotations

import asyncio
import os
import time

from aiohttp import web

from geo_service import __version__
from geo_service.auth import player
from geo_service.claims import claim_body, process_claim
from geo_service.keys import (
    capped_key,
    jwt_key,
    ledger_check_key,
    ledger_key,
    load_key,
    metrics_key,
    puller_key,
    rng_key,
    rules_key,
    settings_key,
    snapshot_key,
    status_key,
    watcher_key,
)
from geo_service.ledger import ClaimIdTaken, LedgerError, LedgerRefusal
from geo_service.nearby import encode_answer
from geo_service.nearby.live import Live
from geo_service.nearby.task_status import iso_utc
from geo_service.openapi import openapi_spec
from geo_service.play import play_page, static_file
from geo_service.prizes import ask_again, me, my_prizes
from geo_service.snapshot.grid import GridError, Window
from geo_service.snapshot.pull import pull_metrics
from geo_service.web.errors import (
    ClaimIdConflict,
    GridChanged,
    LedgerUnavailable,
    NotFound,
    RequestTimeout,
    SnapshotRefused,
    SnapshotUnavailable,
)
from geo_service.web.params import cell_param, request_position, require_admin
from geo_service.web.responses import etag_matches, json_response, not_modified
from geo_service.web.routing import Route


async def nearby(request: web.Request) -> web.Response:
    lat, lng = request_position(request.query_string, lambda: request.query)
    return _answer(request, _live(request), lat, lng, None)


async def cell(request: web.Request) -> web.Response:
    """/v1/nearby by cell: the answer every point of the cell gets, one cache entry for all of them."""
    cell_id = cell_param(request.match_info["cell"])
    live = _live(request)
    named = request.query.get("grid") if request.query_string else None  # most polls carry none: no parse
    if named is not None and named != live.lookup.grid_key:
        raise GridChanged(f"the grid is now {live.lookup.grid_key}, not {named[:16]!r}: GET /v1/grid, then the cell again",
                          field="grid", headers={"Cache-Control": "no-store"})
    try:
        window = live.lookup.grid.cell_window(cell_id)
    except GridError as exc:
        raise NotFound(f"{exc.field} {exc.reason} (GET /v1/grid gives the grid)", field="cell") from None
    return _answer(request, live, 0.0, 0.0, window)


async def grid(request: web.Request) -> web.Response:
    live = _live(request)
    etag = f'W/"grid-{live.lookup.grid_tag:x}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=300", "Vary": "Accept-Encoding"}
    if etag_matches(request, etag):
        return not_modified(etag, headers)
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        return web.Response(body=live.lookup.grid_gzip, content_type="application/json",
                            headers={**headers, "Content-Encoding": "gzip"})
    return web.Response(body=live.lookup.grid_json, content_type="application/json", headers=headers)


def _live(request: web.Request) -> Live:
    live = request.app[snapshot_key].current(int(time.time()))
    if live is None:
        raise SnapshotUnavailable("no snapshot is loaded yet; try again shortly",
                                  headers={"Retry-After": str(request.app[load_key].retry_after_s())})
    return live


def _answer(request: web.Request, live: Live, lat: float, lng: float, window: Window | None) -> web.Response:
    app = request.app
    next_poll_ms = app[load_key].next_poll_ms()
    body, tag = encode_answer(live.lookup, live.status, lat, lng, app[settings_key].max_pois,
                              {"next_poll_ms": next_poll_ms, "status_age_s": app[status_key].age_s()}, window)
    # The tag is of what the answer shows, so a claim or a count that moves no level leaves it as it was,
    # and every worker and host gives the same one; a phone or a shared cache may keep the answer a poll.
    etag = f'W/"{tag:x}"'
    headers = {"ETag": etag, "X-Next-Poll-Ms": str(next_poll_ms),
               "Cache-Control": f"public, max-age={max(1, next_poll_ms // 1000)}"}
    # The tag comes out of the encoder, so a 304 is decided after it: the answer is cheaper to write
    # than to tell apart from the last one any other way.
    if etag_matches(request, etag):
        return not_modified(etag, headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


async def claim(request: web.Request) -> web.Response:
    app = request.app
    settings = app[settings_key]
    user_id = await player(request)
    try:
        async with asyncio.timeout(settings.keepalive_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {settings.keepalive_timeout_s:g} s",
                             headers={"Connection": "close"}) from None
    body = claim_body(raw)
    refusal = app[ledger_check_key].refusal()
    if refusal is not None:
        raise LedgerUnavailable(f"claims are refused: {refusal}", headers={"Retry-After": "5"})
    now = time.time()
    live = app[snapshot_key].current(int(now))
    if live is None:
        raise SnapshotUnavailable("no snapshot is loaded yet; try again shortly")
    try:
        async with asyncio.timeout(settings.claim_timeout_s):
            outcome = await process_claim(live.lookup, live.status, app[ledger_key], app[rng_key],
                                          user_id, body, app[rules_key], now, app[capped_key])
    except ClaimIdTaken as exc:
        raise ClaimIdConflict(str(exc), field="claim_id") from None
    except LedgerRefusal as exc:
        app[ledger_check_key].refused(str(exc))
        raise LedgerUnavailable(f"claims of this task are refused for now: {exc}; retry later with the same claim_id",
                                headers={"Retry-After": "5"}) from None
    except (LedgerError, TimeoutError) as exc:
        app[ledger_check_key].failed(str(exc) or f"no answer within claim_timeout_s ({settings.claim_timeout_s:g} s)", now)
        raise LedgerUnavailable("the ledger is unreachable; retry with the same claim_id, which settles a claim once",
                                headers={"Retry-After": "1"}) from exc
    answer_body: dict[str, object] = {"claim_id": outcome.claim_id, "outcome": outcome.outcome}
    answer_body |= {k: v for k, v in (("prize_type", outcome.prize_type), ("reason", outcome.reason),
                                      ("wins_left", outcome.wins_left)) if v is not None}
    if outcome.opens_at is not None:
        answer_body["opens_at"] = iso_utc(outcome.opens_at)
    return json_response(answer_body)


def _status_health(app: web.Application) -> dict[str, object]:
    poller = app[status_key]
    if not poller.url:
        return {"source": "snapshot", "age_s": 0.0}
    return {"source": "collector", "age_s": poller.age_s(), "failures": poller.failures, "last_error": poller.last_error}


def _health(app: web.Application) -> dict[str, object]:
    holder, load, settings = app[snapshot_key], app[load_key], app[settings_key]
    live = holder.live
    now = time.time()
    snapshot = None if live is None else {
        "seq": live.lookup.seq,
        "age_s": round(now - live.lookup.snapshot.manifest["built_at"], 1),
        "loaded_s_ago": round(now - live.loaded_at, 1),
        "source_problem": holder.source_problem,
    }
    return {
        "worker_id": settings.worker_id,
        "pid": os.getpid(),
        "version": __version__,
        "snapshot": snapshot,
        "status": _status_health(app),
        "snapshot_error": holder.last_error,
        "ledger": {**app[ledger_check_key].health(app[ledger_key].kind), "claims": app[ledger_check_key].claims()},
        "origin": app[puller_key].view() if puller_key in app else None,
        "player_jwt": app[jwt_key].view() if jwt_key in app else None,
        "load": {"inflight": load.inflight, "lag_ms": round(load.lag_ms, 2), "next_poll_ms": load.next_poll_ms()},
    }


async def healthz(request: web.Request) -> web.Response:
    health = _health(request.app)
    if health["snapshot"] is None:
        raise SnapshotUnavailable("no snapshot is loaded", details=health)
    return json_response({"ok": True, **health})


def _or_minus_one(value: float | None) -> float:
    return -1 if value is None else value


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    holder, load, check = app[snapshot_key], app[load_key], app[ledger_check_key]
    values = {
        "snapshot_seq": ("gauge", "Seq of the live snapshot (0: none).", holder.live.lookup.seq if holder.live else 0),
        "snapshot_swaps_total": ("counter", "Snapshots swapped in.", holder.swaps),
        "snapshot_refused_total": ("counter", "Snapshots refused by verification.", holder.refused),
        "snapshot_source_damaged": ("gauge", "1 while the live snapshot's folder is missing files or has files of the "
                                             "wrong size (its private copy keeps serving; see /healthz).",
                                    int(holder.source_problem is not None)),
        "status_edges_inline_total": ("counter", "Task-window edges whose status was computed in a request "
                                                  "(not ahead, in a thread).", holder.edges_inline),
        "status_age_seconds": ("gauge", "Age of the task status taken from the collector (-1: none yet, or no "
                                        "collector).", _or_minus_one(app[status_key].age_s())),
        "status_poll_failures_total": ("counter", "Polls of the collector's task status that failed.",
                                       app[status_key].failures),
        "shed_requests_total": ("counter", "Requests answered 503 because of load.", load.shed),
        "inflight_requests": ("gauge", "Requests in flight.", load.inflight),
        "event_loop_lag_ms": ("gauge", "Smoothed event-loop lag.", load.lag_ms),
        "next_poll_ms": ("gauge", "Poll interval currently told to clients.", load.next_poll_ms()),
        "claims_capped_locally_total": ("counter", "Claims of players known here to be at the event's win cap, "
                                                   "answered without a ledger call.", app[capped_key].answered),
        "ledger_claim_failures_total": ("counter", "Claims answered 503 because the ledger failed or stalled.",
                                        app[ledger_check_key].failures),
        "ledger_config_problems": ("gauge", "Requirements of the ledger its server does not meet (see /healthz).",
                                   len(app[ledger_check_key].problems)),
        "ledger_claims_refused_total": ("counter", "Claims answered 503 because the ledger refused them for now (a "
                                                    "bucket's state lost, the flow log full).", app[ledger_check_key].refusals),
        "ledger_flow_backlog": ("gauge", "Flow-log records not yet shipped into the record database (Redis; -1: none).",
                                _or_minus_one(check.flow_backlog)),
        "ledger_flow_fill_ratio": ("gauge", "The fullest flow stream's share of its ceiling, at which its claims are "
                                            "refused (Redis; -1: none).",
                                   -1 if check.flow_fill_milli is None else check.flow_fill_milli / 1000),
    } | (pull_metrics(app[puller_key]) if puller_key in app else {})
    text = app[metrics_key].render({"worker": str(app[settings_key].worker_id)}, values)
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={"X-Version": "0.0.4"})


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_spec())


async def admin_reload(request: web.Request) -> web.Response:
    require_admin(request.headers.get("Authorization", ""), request.app[settings_key].admin_token, "admin reload")
    outcome = await request.app[watcher_key].refresh(force=True)
    if outcome["error"]:
        raise SnapshotRefused(f"snapshot refused; the live one stays: {outcome['error']}")
    return json_response(outcome)


ROUTES: list[Route] = [
    ("GET", "/v1/nearby", nearby),
    ("GET", "/v1/cells/{cell}", cell),
    ("GET", "/v1/grid", grid),
    ("GET", "/healthz", healthz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
    ("POST", "/v1/claims", claim),
    ("GET", "/v1/me", me),
    ("GET", "/v1/me/prizes", my_prizes),
    ("POST", "/v1/me/prizes/{claim_id}/deliver", ask_again),
    ("POST", "/v1/admin/reload", admin_reload),
    ("GET", "/play", play_page),
    ("GET", "/static/{name:.+}", static_file),
]
