"""The OpenAPI 3.1 description of every route, parameter, response and error."""

from __future__ import annotations

from typing import Any

from geo_service import __version__

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["status", "code", "message"],
        "properties": {
            "status": {"type": "integer", "description": "Equals the HTTP status."},
            "code": {"type": "string", "description": "Stable snake_case code, e.g. invalid_param."},
            "message": {"type": "string", "description": "Human-readable, safe to show."},
            "field": {"type": "string", "description": "The input at fault, when there is one."},
            "details": {"description": "More context, for some codes."},
        },
    }},
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _coordinate(name: str, lo: int, hi: int, note: str) -> dict[str, Any]:
    schema = {"type": "number", "minimum": lo, "maximum": hi}
    description = f"WGS84 degrees in [{lo}, {hi}]{note}; given once."
    return {"name": name, "in": "query", "required": True, "schema": schema, "description": description}


NEARBY = {
    "type": "object",
    "required": ["seq", "center_cell", "cells", "pois", "tasks", "truncated", "next_poll_ms"],
    "properties": {
        "seq": {"type": "integer", "description": "The snapshot this answer comes from."},
        "center_cell": {"type": "integer"},
        "cells": {"type": "array", "items": {"type": "integer"}, "description": "The window's cells (25 for 5x5)."},
        "pois": {"type": "array", "items": {
            "type": "object", "required": ["poi_id", "task_id", "lat", "lng"], "properties": {
                "poi_id": {"type": "integer"}, "task_id": {"type": "integer"},
                "lat": {"type": "number"}, "lng": {"type": "number"}}}},
        "tasks": {"type": "array", "items": {"type": "object", "properties": {
            "task_id": {"type": "integer"}, "name": {"type": "string"}, "district_code": {"type": "integer"},
            "status": {"type": "string", "enum": ["active"]}, "ends_at": {"type": "string", "format": "date-time"},
            "prizes": {"type": "array", "items": {"type": "object", "properties": {
                "prize_type": {"type": "string"}, "quota": {"type": "integer"},
                "remaining": {"type": ["integer", "null"], "description": "Null until a collector reports it."}}}}}}},
        "truncated": {"type": "boolean", "description": "True when the POI cap cut the list."},
        "next_poll_ms": {"type": "integer", "description": "Wait this long before polling again (rises under load)."},
        "status_age_s": {"type": ["number", "null"],
                         "description": "Age of the collector's task status in use; null without a collector."},
    },
}


CLAIM = {
    "type": "object",
    "required": ["claim_id", "task_id", "poi_id", "lat", "lng"],
    "properties": {
        "claim_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$", "description": "Client-chosen idempotency key."},
        "task_id": {"type": "integer"}, "poi_id": {"type": "integer"},
        "lat": {"type": "number", "minimum": -85, "maximum": 85}, "lng": {"type": "number", "minimum": -180, "maximum": 180},
    },
}
OUTCOME = {
    "type": "object",
    "required": ["claim_id", "outcome"],
    "properties": {"claim_id": {"type": "string"}, "outcome": {"type": "string"}, "prize_type": {"type": "string"},
                   "reason": {"type": "string"}},
}


def openapi_spec() -> dict[str, Any]:
    """Return the service's OpenAPI document."""
    busy = _error("Overloaded (code overloaded) or no snapshot loaded (code snapshot_unavailable); see Retry-After.")
    return {
        "openapi": "3.1.0",
        "info": {"title": "geodrop geo_service", "version": __version__},
        "paths": {
            "/v1/nearby": {"get": {
                "summary": "Active tasks' POIs in the window around a position (the map-polling endpoint).",
                "parameters": [
                    _coordinate("lat", -90, 90, "; beyond ±85 is outside the served band"),
                    _coordinate("lng", -180, 180, ""),
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
                     "description": "An ETag from an earlier answer: 304 if nothing changed."}],
                "responses": {
                    "200": {"description": "The answer; ETag and X-Next-Poll-Ms headers.",
                            "content": {"application/json": {"schema": NEARBY}}},
                    "304": {"description": "Unchanged since the ETag given in If-None-Match."},
                    "400": _error("A parameter is missing (missing_param), or repeated, not a number or out of range "
                                  "(invalid_param)."),
                    "405": _error("Wrong method (method_not_allowed)."),
                    "414": _error("Query string too long (query_too_long)."),
                    "503": busy}}},
            "/v1/claims": {"post": {
                "summary": "Catch an envelope at a POI: checks, weighted draw with fallback, exact quotas.",
                "security": [{"player": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": CLAIM}}},
                "responses": {
                    "200": {"description": "The outcome: won (with prize_type), no_prize_left, cap_reached, too_far, "
                                           "task_inactive or implausible_movement (with reason). A retried claim_id "
                                           "returns its first outcome.",
                            "content": {"application/json": {"schema": OUTCOME}}},
                    "400": _error("Body not a JSON object (invalid_json); a field missing (missing_param) or of the "
                                  "wrong type or range (invalid_param)."),
                    "401": _error("No, forged or expired player token (invalid_token)."),
                    "404": _error("Unknown task or POI in the live snapshot (not_found)."),
                    "422": _error("The POI does not belong to the task (poi_not_in_task)."),
                    "503": _error("Claims off (claims_disabled), ledger down (ledger_unavailable) or no snapshot.")}}},
            "/healthz": {"get": {"summary": "Live snapshot seq and age, status age, load, worker id.", "responses": {
                "200": {"description": "Serving.", "content": {"application/json": {"schema": {"type": "object"}}}},
                "503": _error("No snapshot loaded (snapshot_unavailable); details holds the health report.")}}},
            "/metrics": {"get": {"summary": "Prometheus text metrics of this worker.",
                                 "responses": {"200": {"description": "text/plain exposition format 0.0.4."}}}},
            "/openapi.json": {"get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3.1."}}}},
            "/v1/admin/reload": {"post": {
                "summary": "Load CURRENT now, verify it and swap it in.",
                "security": [{"admin": []}],
                "responses": {
                    "200": {"description": "{seq, swapped, error: null}.",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    "401": _error("Missing or wrong bearer token (invalid_token)."),
                    "404": _error("Admin reload disabled: no admin_token configured (not_found)."),
                    "409": _error("The snapshot failed verification and was refused (snapshot_refused).")}}},
        },
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"},
                                "player": {"type": "http", "scheme": "bearer", "description": "geo-service token"}},
        },
    }
