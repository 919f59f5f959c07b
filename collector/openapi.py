"""The OpenAPI 3.1 description of the collector's routes: the contract tests/test_fuzz.py holds it to."""

from __future__ import annotations

from typing import Any

from delivery.channels import MAX_RATE_PER_S, MIN_RATE_PER_S
from geo_service import __version__
from geo_service.web.openapi import COORDINATE_LAT, COORDINATE_LNG, ERROR, EXAMPLE, error_spec, json_ok, text_ok
from geo_service.web.routing import QUERY_LIMIT_BYTES

DISTRICT = {"type": "string", "pattern": "^[0-9]{6}$", "example": "440303"}
_NO_VIEW = {"503": "No view yet: the first tick has not completed (snapshot_unavailable)."}
_BAD_DISTRICT = {"400": "Not a 6-digit district code (invalid_param), or given twice."}
_DISTRICT_Q = {"name": "district", "in": "query", "required": True, "schema": DISTRICT}
_CODE_P = {"name": "code", "in": "path", "required": True, "schema": DISTRICT}
_TASK_P = {"name": "task_id", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^[0-9]{1,18}$", "example": str(EXAMPLE["task_id"])}}
_ETAG_H = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}
_ETAG = {"ETag": {"schema": {"type": "string"}, "description": "Revalidate with If-None-Match."}}
_ADMIN_401 = {"401": "Missing or wrong bearer token and no live admin session, or admin routes off: no admin_token "
                     "(invalid_token)."}
PRIZE_CHANGE = {
    "type": "object", "minProperties": 1, "additionalProperties": False,
    "properties": {"quota": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                             "description": "New quota; at least what is issued."},
                   "rate_per_s": {"type": ["number", "null"], "minimum": 0, "maximum": 1e9,
                                  "description": "New issue rate per second; null for no limit."}},
    "example": {"quota": 500, "rate_per_s": 20},
}


def _get(summary: str, params: list[dict[str, Any]], errors: dict[str, str], conditional: bool = False,
         ok: dict[str, Any] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok or json_ok(summary, headers=_ETAG if conditional else None)}
    if conditional:
        responses["304"] = {"description": "Unchanged since the ETag given in If-None-Match.", "headers": _ETAG}
    responses |= {code: error_spec(text) for code, text in errors.items()}
    return {"get": {"summary": summary, "parameters": params, "responses": responses}}


def _post(summary: str, params: list[dict[str, Any]], body: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    return {"post": {"summary": summary, "security": [{"admin": []}, {"adminSession": [], "sameOrigin": []}],
                     "parameters": params,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                     "responses": {"200": json_ok(summary), **{code: error_spec(text) for code, text in errors.items()}}}}


def _session() -> dict[str, Any]:
    until = {"type": "object", "required": ["expires_at"], "properties": {"expires_at": {"type": ["integer", "null"]}}}
    ok = {"200": {"description": "When the session ends (Unix seconds; null: none).",
                  "content": {"application/json": {"schema": until}}}}
    return {
        "get": {"summary": "Whether this browser holds a live admin session, and until when.", "parameters": [],
                "responses": ok},
        "post": {"summary": "Trade the admin bearer token for a session cookie (HttpOnly, SameSite=Strict, path "
                            "/v1/admin) lasting admin_session_s.", "security": [{"admin": []}], "parameters": [],
                 "responses": {**ok, **{c: error_spec(t) for c, t in _ADMIN_401.items()}}},
        "delete": {"summary": "Drop the session cookie.", "parameters": [],
                   "responses": {"200": json_ok("The cookie is dropped.")}},
    }


def openapi_spec() -> dict[str, Any]:
    """Return the collector's OpenAPI document; every operation may answer 414 (the guard's query limit)."""
    spec = _spec()
    for operations in spec["paths"].values():
        for operation in operations.values():
            operation["responses"].setdefault("414", error_spec(f"Query string longer than {QUERY_LIMIT_BYTES} bytes "
                                                                "(query_too_long)."))
    return spec


def _spec() -> dict[str, Any]:
    latlng = [{"name": "lat", "in": "query", "required": True, "schema": COORDINATE_LAT, "example": EXAMPLE["lat"]},
              {"name": "lng", "in": "query", "required": True, "schema": COORDINATE_LNG, "example": EXAMPLE["lng"]}]
    limit = {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 20000}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "geodrop collector", "version": __version__},
        "paths": {
            "/v1/districts": _get("Every district: remaining and quota per prize type (active and upcoming tasks), "
                                  "tasks by status, live changes.", [_ETAG_H], _NO_VIEW, conditional=True),
            "/v1/districts/{code}": _get("One district's totals and its tasks with status and each prize's remaining, "
                                         "quota, rate and latest live change.", [_CODE_P],
                                         {**_NO_VIEW, "400": "Not a 6-digit code (invalid_param).",
                                          "404": "No such district (not_found)."}),
            "/v1/previews": _get("Tasks of a district starting within the preview horizon.", [_DISTRICT_Q],
                                 {**_NO_VIEW, **_BAD_DISTRICT, "400": "District missing (missing_param), not 6 digits "
                                                                      "or given twice (invalid_param)."}),
            "/v1/tasks/status": _get("Every task, columnar: prize_types; tasks.task_id, .enabled, .status, .remaining, "
                                     ".quota (tasks x prize types, -1 where a task lacks the prize), .rate_per_s; changes.",
                                     [_ETAG_H], _NO_VIEW, conditional=True),
            "/v1/stream": _get("Server-sent events: each district's totals now, then whenever they change; the stream ends "
                               "after stream_max_s and the client reconnects.",
                               [{**_DISTRICT_Q, "required": False}],
                               {**_NO_VIEW, **_BAD_DISTRICT, "503": "stream_max_subscribers streams are open (overloaded, "
                                                                    "with Retry-After), or no view yet."},
                               ok={"description": "`district` events, each a district's totals as in /v1/districts.",
                                   "content": {"text/event-stream": {"schema": {"type": "object"}}}}),
            "/healthz": _get("View version and age, tick interval and timings, ledger, shipping, origin.", [],
                             {"503": "No view yet (view_unavailable); details holds the report."}),
            "/metrics": _get("Prometheus text metrics.", [], {}, ok=text_ok("Text exposition format 0.0.4.")),
            "/openapi.json": _get("This document.", [], {}, ok=json_ok("OpenAPI 3.1.")),
            "/": _get("The operators' dashboard.", [], {}, ok=text_ok("The page.", "text/html")),
            "/static/{name}": _get("The dashboard's files and vendored libraries.",
                                   [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                                     "example": "dashboard.js"}], {"404": "No such file (not_found)."},
                                   ok={"description": "A file.", "content": {"*/*": {"schema": {"type": "string"}}}}),
            "/v1/districts.geojson": _get("Every district's outline, simplified for maps (gzipped when asked; ETag by seq).",
                                          [_ETAG_H], {**_NO_VIEW, "404": "The snapshot carries no outlines (not_found)."},
                                          conditional=True,
                                          ok={"description": "GeoJSON.", "headers": _ETAG, "content": {
                                              "application/geo+json": {"schema": {"type": "object"}}}}),
            "/v1/tasks/{task_id}/pois": _get("A task's POIs as [lng, lat, poi_id] rows, the first `limit` (2,000), and "
                                             "their total.", [_TASK_P, limit],
                                             {**_NO_VIEW, "400": "Bad task_id or limit (invalid_param).",
                                              "404": "No such task in the live snapshot (not_found)."}),
            "/v1/probe": _get("What a phone at lat, lng gets from the service, and its window's cells as polygons.",
                              latlng, {"400": "Bad lat or lng (invalid_param, missing_param).",
                                       "404": "The collector is not told the service's URL (not_found).",
                                       "503": "The service did not answer (service_unavailable), no view yet, or the "
                                              "service answers from a snapshot the collector lacks."}),
            "/v1/series": _get("Issues per second by prize type over the last 15 minutes (tick by tick).", [], _NO_VIEW),
            "/v1/dashboard": _get("The health strip: snapshot, ticks, the service's health; whether admin and probe are on.",
                                  [], _NO_VIEW),
            "/v1/admin/tasks/{task_id}": _post(
                "The kill switch: enable or disable a task (audited). Claims obey it at once, the services' maps "
                "within a tick; the answer gives the task's last win (last_win_at, epoch s; null: none yet).", [_TASK_P],
                {"type": "object", "required": ["enabled"], "properties": {"enabled": {"type": "boolean"}},
                 "example": {"enabled": False}},
                {"400": "Body not a JSON object (invalid_json), or enabled missing or not a boolean (invalid_param).",
                 **_ADMIN_401, "404": "No such task in the live snapshot (not_found).", **_NO_VIEW,
                 "503": "The ledger is unreachable; nothing changed (ledger_unavailable), or no view yet."}),
            "/v1/admin/session": _session(),
            "/v1/deliveries": _get(
                "Per delivery channel: backlog, age of the oldest pending, rate now, pace and configured rate, paused, "
                "counts by state, the newest dead letters.", [], {
                    "404": "No deliveries panel: the collector has no channels file (not_found).",
                    "503": "The record database is unreachable (ledger_unavailable)."}),
            "/v1/admin/deliveries/{claim_id}/retry": _post(
                "Send a dead letter (a failed delivery) or a parked one again now (audited).",
                [{"name": "claim_id", "in": "path", "required": True, "example": "c-1",
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}}],
                {"type": "object"},
                {"400": "Not a claim id (invalid_param).", **_ADMIN_401,
                 "404": "No failed or parked delivery of that id, or no deliveries panel (not_found).",
                 "503": "The record database is unreachable; nothing changed (ledger_unavailable)."}),
            "/v1/admin/channels/{name}": _post(
                "A channel's live rate and pause switch (audited): every dispatcher obeys within 100 ms.",
                [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "example": "wallet"}],
                {"type": "object", "properties": {"rate_per_s": {"type": ["number", "null"], "minimum": MIN_RATE_PER_S,
                                                                 "maximum": MAX_RATE_PER_S,
                                                                 "description": "null: the channels file's rate"},
                                                  "paused": {"type": "boolean"}}, "example": {"paused": True}},
                {"400": "Body not a JSON object (invalid_json), or a field missing, unknown or out of range "
                        "(invalid_param).",
                 **_ADMIN_401, "404": "No such channel, or no deliveries panel (not_found).",
                 "503": "The record database is unreachable; nothing changed (ledger_unavailable)."}),
            "/v1/admin/prizes/{task_id}/{prize_type}": _post(
                "Change a prize's quota and/or issue rate now (live quota and rate control).",
                [_TASK_P, {"name": "prize_type", "in": "path", "required": True, "schema": {"type": "string"},
                           "example": "cash"}], PRIZE_CHANGE,
                {"400": "Body not a JSON object (invalid_json), or a field of the wrong type or range (invalid_param).",
                 **_ADMIN_401, "404": "No such prize in the ledger (not_found).",
                 "409": "The quota would be below what is already issued (quota_below_issued).",
                 "503": "The ledger is unreachable; nothing changed (ledger_unavailable)."}),
        },
        "components": {"schemas": {"Error": ERROR},
                       "securitySchemes": {
                           "admin": {"type": "http", "scheme": "bearer", "description": "the admin_token setting"},
                           "adminSession": {"type": "apiKey", "in": "cookie", "name": "geodrop_admin",
                                            "description": "The dashboard's session, from POST /v1/admin/session."},
                           "sameOrigin": {"type": "apiKey", "in": "header", "name": "X-Geodrop-Session",
                                          "description": "Any value: sent with the session cookie by the page itself."}}},
    }
