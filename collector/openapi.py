"""The OpenAPI 3.1 description of the collector's routes."""

from __future__ import annotations

from typing import Any

from geo_service import __version__
from geo_service.openapi import ERROR, _error

_JSON = {"application/json": {"schema": {"type": "object"}}}


def _get(summary: str, params: list[dict[str, Any]], errors: dict[str, str], conditional: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": summary, "content": _JSON}}
    if conditional:
        responses["304"] = {"description": "Unchanged since the ETag given in If-None-Match."}
    responses |= {code: _error(text) for code, text in errors.items()}
    return {"get": {"summary": summary, "parameters": params, "responses": responses}}


PRIZE_CHANGE = {
    "type": "object", "minProperties": 1, "additionalProperties": False,
    "properties": {"quota": {"type": "integer", "minimum": 0, "description": "New quota; at least what is issued."},
                   "rate_per_s": {"type": ["number", "null"], "minimum": 0, "maximum": 1e9,
                                  "description": "New issue rate per second; null for no limit."}},
}
_NO_VIEW = {"503": "No view yet: the first tick has not completed (snapshot_unavailable)."}
_DISTRICT_Q = {"name": "district", "in": "query", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{6}$"}}
_CODE_P = {"name": "code", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{6}$"}}
_TASK_P = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}
_LAT_Q = {"name": "lat", "in": "query", "required": True, "schema": {"type": "number", "minimum": -90, "maximum": 90}}
_LNG_Q = {"name": "lng", "in": "query", "required": True, "schema": {"type": "number", "minimum": -180, "maximum": 180}}
_ETAG_H = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}


def openapi_spec() -> dict[str, Any]:
    """Return the collector's OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "geodrop collector", "version": __version__},
        "paths": {
            "/v1/districts": _get("Every district: remaining per prize type (active and upcoming tasks), tasks by status.",
                                  [_ETAG_H], _NO_VIEW, conditional=True),
            "/v1/districts/{code}": _get("One district's totals and its tasks with status and remaining per prize.",
                                         [_CODE_P], {**_NO_VIEW, "400": "Not a 6-digit code.", "404": "No such district."}),
            "/v1/previews": _get("Tasks of a district starting within the preview horizon.", [_DISTRICT_Q],
                                 {**_NO_VIEW, "400": "Missing or malformed district."}),
            "/v1/tasks/status": _get("Every task, columnar: prize_types; tasks.task_id, .enabled, .status, .remaining "
                                     "(tasks x prize types, -1 where a task lacks the prize).",
                                     [_ETAG_H], _NO_VIEW, conditional=True),
            "/v1/stream": {"get": {"summary": "Server-sent events: each district's totals now, then whenever they change.",
                                   "parameters": [{**_DISTRICT_Q, "required": False}],
                                   "responses": {"200": {"description": "text/event-stream of `district` events."},
                                                 "503": _error(_NO_VIEW["503"])}}},
            "/healthz": _get("View version and age, tick interval and timings, failures.", [], {"503": "No view yet."}),
            "/metrics": {"get": {"summary": "Prometheus text metrics.", "responses": {"200": {"description": "text/plain"}}}},
            "/openapi.json": {"get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3.1."}}}},
            "/": {"get": {"summary": "The operators' dashboard (HTML).", "responses": {"200": {"description": "text/html"}}}},
            "/static/{name}": {"get": {"summary": "The dashboard's static files and vendored libraries.",
                                       "parameters": [{"name": "name", "in": "path", "required": True,
                                                       "schema": {"type": "string"}}],
                                       "responses": {"200": {"description": "A file."}, "404": _error("No such file.")}}},
            "/v1/districts.geojson": _get("Every district's outline, simplified for maps (GeoJSON, gzipped; ETag by seq).",
                                          [_ETAG_H], {**_NO_VIEW, "404": "The snapshot carries no outlines."},
                                          conditional=True),
            "/v1/tasks/{task_id}/pois": _get("A task's POIs as [lng, lat, poi_id] rows, the first `limit`, and their total.",
                                             [_TASK_P, {"name": "limit", "in": "query", "required": False,
                                                        "schema": {"type": "integer", "minimum": 1, "maximum": 20000}}],
                                             {**_NO_VIEW, "400": "Bad task_id or limit.", "404": "No such task."}),
            "/v1/probe": _get("What a phone at lat, lng gets from the service, and its window's cells as polygons.",
                              [_LAT_Q, _LNG_Q], {"400": "Bad lat or lng.", "404": "No service URL configured.",
                                                 "503": "The service did not answer, or no view yet."}),
            "/v1/series": _get("Issues per second by prize type over the last 15 minutes (tick by tick).", [], _NO_VIEW),
            "/v1/dashboard": _get("The health strip: snapshot, ticks, the service's health; whether admin and probe are on.",
                                  [], _NO_VIEW),
            "/v1/admin/tasks/{task_id}": {"post": {
                "summary": "The kill switch: enable or disable a task (audited); the services drop it within a tick.",
                "security": [{"admin": []}],
                "parameters": [_TASK_P],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["enabled"], "properties": {"enabled": {"type": "boolean"}}}}}},
                "responses": {
                    "200": {"description": "{task_id, enabled}.", "content": _JSON},
                    "400": _error("Body not a JSON object (invalid_json), or enabled missing or not a boolean."),
                    "401": _error("Missing or wrong bearer token (invalid_token)."),
                    "404": _error("No such task, or admin routes disabled: no admin_token (not_found)."),
                    "503": _error("The ledger is unreachable; nothing changed (ledger_unavailable).")}}},
            "/v1/admin/prizes/{task_id}/{prize_type}": {"post": {
                "summary": "Change a prize's quota and/or issue rate now (live quota and rate control).",
                "security": [{"admin": []}],
                "parameters": [{"name": "task_id", "in": "path", "required": True,
                                "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
                               {"name": "prize_type", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": PRIZE_CHANGE}}},
                "responses": {
                    "200": {"description": "The change as taken: seq, at, task_id, prize_type, quota, rate_per_s.",
                            "content": _JSON},
                    "400": _error("Body not a JSON object (invalid_json), or a field of the wrong type or range "
                                  "(invalid_param)."),
                    "401": _error("Missing or wrong bearer token (invalid_token)."),
                    "404": _error("No such prize in the ledger, or live changes disabled: no admin_token (not_found)."),
                    "409": _error("The quota would be below what is already issued (quota_below_issued)."),
                    "503": _error("The ledger is unreachable; nothing changed (ledger_unavailable).")}}},
        },
        "components": {"schemas": {"Error": ERROR},
                       "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
    }
