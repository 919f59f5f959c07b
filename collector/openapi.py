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


_NO_VIEW = {"503": "No view yet: the first tick has not completed (snapshot_unavailable)."}
_DISTRICT_Q = {"name": "district", "in": "query", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{6}$"}}
_CODE_P = {"name": "code", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{6}$"}}
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
        },
        "components": {"schemas": {"Error": ERROR}},
    }
