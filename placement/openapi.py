"""The OpenAPI 3.1 description of the console's routes: the contract tests/test_fuzz.py holds it to.

Saves are tagged `draft-rules`: a body the schema allows may still break the build's rules (a window that ends
before it starts, a district the draft lacks), and 422 with every problem by row and field is their answer."""

from __future__ import annotations

from typing import Any

from geo_service import __version__
from geo_service.web.openapi import ERROR, EXAMPLE, error_spec, json_ok, text_ok
from geo_service.web.routing import QUERY_LIMIT_BYTES

ID = {"type": "string", "pattern": "^[0-9]{1,18}$"}
_TASK_P = {"name": "task_id", "in": "path", "required": True, "schema": ID, "example": str(EXAMPLE["task_id"])}
_ZONE_P = {"name": "zone_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 64},
           "example": "sz-reservoir"}
_VERSION_Q = {"name": "version", "in": "query", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
              "example": "0"}
_READ = {"401": "Not signed in: no operator's bearer token, and no session with its header (invalid_token).",
         "503": "The draft's database is unreachable (draft_unavailable)."}
_WRITE = {**_READ, "400": "Body not a JSON object (invalid_json), or a field of the wrong type (invalid_param, "
                          "missing_param).",
          "403": "A viewer asked for an admin's action (forbidden).", "413": "Body larger than max_upload_bytes."}
_SAVE = {**_WRITE, "404": "No such task in the draft (not_found).",
         "409": "Saved by someone else since the version given (version_conflict): details.changes lists who changed "
                "what.",
         "422": "The task would not build (invalid_draft): details.problems lists every problem by row and field; "
                "nothing was saved."}
VALUE = {"type": ["string", "number", "boolean", "null"]}
TASK_FIELDS = {"type": "object", "properties": {k: VALUE for k in ("name", "district_code", "starts_at", "ends_at", "enabled",
                                                                   "stagger_s", "stagger_groups")},
               "description": "As tasks.csv's columns: times ISO-8601 with a zone or epoch seconds."}
PRIZE = {"type": "object", "properties": {k: VALUE for k in ("prize_type", "quota", "weight", "rate_per_s")}}
POINT = {"type": "object", "properties": {"lat": VALUE, "lng": VALUE, "poi_id": VALUE}}
SAVE = {"type": "object", "required": ["version", "task", "prizes"],
        "properties": {"version": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                                   "description": "The version loaded (0: a new task)."},
                       "task": TASK_FIELDS, "prizes": {"type": "array", "items": PRIZE, "maxItems": 50},
                       "points": {"type": ["array", "null"], "items": POINT, "maxItems": 2000,
                                  "description": "Every point of the task's set (replaces them); new points without poi_id."},
                       "poi_set_id": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**63 - 1,
                                      "description": "Use this existing set instead of points."}},
        "example": {"version": 0, "task": {"name": "walk", "district_code": 440305, "starts_at": "2026-01-01T00:00:00+08:00",
                                           "ends_at": "2027-01-01T00:00:00+08:00", "enabled": True},
                    "prizes": [{"prize_type": "cash", "quota": 10, "weight": 1}], "points": [{"lat": 22.53, "lng": 113.93}]}}
ZONE = {"type": "object", "required": ["version", "geometry"],
        "properties": {"version": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}, "reason": {"type": "string"},
                       "geometry": {"type": "object", "description": "A GeoJSON Polygon or MultiPolygon (WGS84)."}}}


def _op(summary: str, errors: dict[str, str], params: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
        ok: dict[str, Any] | None = None, status: str = "200", tags: list[str] | None = None,
        secured: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "parameters": params or [],
                          "responses": {status: ok or json_ok(summary),
                                        **{code: error_spec(text) for code, text in errors.items()}}}
    if secured:
        op["security"] = [{"admin": []}, {"session": [], "sameOrigin": []}]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if tags:
        op["tags"] = tags
    op["responses"].setdefault("414", error_spec(f"Query string longer than {QUERY_LIMIT_BYTES} bytes (query_too_long)."))
    return op


def openapi_spec() -> dict[str, Any]:
    """Return the console's OpenAPI document."""
    upload = _op("Parse a CSV (lat,lng[,poi_id]) or GeoJSON FeatureCollection of Points into points; nothing is stored.",
                 {**_WRITE, "400": "No body (missing_param), format not csv or geojson, or over a million points.",
                  "422": "Bad lines (invalid_draft): details.problems names each line (or feature) and field; a file is "
                         "taken whole or not at all."},
                 [{"name": "format", "in": "query", "required": False, "schema": {"type": "string", "enum": ["csv", "geojson"]}}])
    upload["tags"] = ["draft-rules"]
    upload["requestBody"] = {"required": True, "content": {"text/csv": {"schema": {"type": "string", "minLength": 1}},
                                                           "application/geo+json": {"schema": {"type": "object"}}}}
    job = {"type": "object", "required": ["id", "state", "phase"], "properties": {
        "id": {"type": "integer"}, "state": {"type": "string", "enum": ["running", "served", "published", "failed"]},
        "phase": {"type": "string"}, "seq": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]}}}
    job_ok = json_ok("The job, which the page follows at /v1/jobs/{id}.", job)
    busy = {"409": "A build is running (build_running), or the draft changed since the preview (draft_changed)."}
    return {
        "openapi": "3.1.0",
        "info": {"title": "geodrop placement console", "version": __version__},
        "paths": {
            "/v1/draft": {"get": _op("Every task (with prizes, set size, version), zone and district of the draft.", _READ)},
            "/v1/districts.geojson": {"get": _op("The draft's districts, simplified for the map.", _READ,
                                                 ok={"description": "GeoJSON.", "content": {
                                                     "application/geo+json": {"schema": {"type": "object"}}}})},
            "/v1/tasks/{task_id}": {
                "get": _op("A task with its prizes, version, points and their screening.",
                           {**_READ, "400": "Bad task_id.", "404": "No such task (not_found)."}, [_TASK_P]),
                "put": _op("Replace a task, its prizes and (given points) its set's points.", _SAVE, [_TASK_P], SAVE,
                           tags=["draft-rules"]),
                "delete": _op("Delete a task (and its set's points if no other task uses them).",
                              {**_WRITE, "404": "No such task.", "409": "Saved since the version given (version_conflict)."},
                              [_TASK_P, _VERSION_Q])},
            "/v1/tasks": {"post": _op("Create a task.", _SAVE, body=SAVE, status="201", tags=["draft-rules"])},
            "/v1/check": {"post": _op("A save's dry run: which points screening drops or finds outside the district; "
                                      "nothing is written.",
                                      {**_WRITE, "422": "The task would not build (invalid_draft): every problem by "
                                                        "row and field, and the screening."}, body=SAVE,
                                      tags=["draft-rules"])},
            "/v1/uploads/points": {"post": upload},
            "/v1/zone-drops": {"get": _op("How many POIs of which tasks each exclusion zone drops.", _READ)},
            "/v1/zones/{zone_id}": {
                "put": _op("Create or replace an exclusion zone.",
                           {**_SAVE, "422": "A zone id the build would not keep as given, or not a valid polygon "
                                            "(invalid_draft); nothing was saved."}, [_ZONE_P], ZONE,
                           tags=["draft-rules"]),
                "delete": _op("Delete an exclusion zone.", {**_WRITE, "404": "No such zone.", "409": "version_conflict",
                                                            "422": "Not a zone id (invalid_draft)."},
                              [_ZONE_P, _VERSION_Q], tags=["draft-rules"])},
            "/v1/audit": {"get": _op("The audit, newest first: who, when, what, before and after.",
                                     {**_READ, "400": "Bad limit."},
                                     [{"name": "target", "in": "query", "required": False, "schema": {"type": "string"}},
                                      {"name": "limit", "in": "query", "required": False,
                                       "schema": {"type": "string", "pattern": "^[0-9]{1,4}$"}}])},
            "/v1/session": {
                "get": _op("Who this browser is signed in as (name null: nobody).", {}, secured=False),
                "post": {**_op("Trade an operator's bearer token for an HttpOnly session cookie.",
                               {"401": "Unknown token."}, secured=False), "security": [{"admin": []}]},
                "delete": _op("Drop the session cookie.", {}, secured=False)},
            "/v1/preview": {"post": _op("A dry-run build of the draft and what it changes against the live snapshot.",
                                        {**_READ, **busy, "422": "The build refuses the draft (build_refused)."})},
            "/v1/publish": {"post": _op("Build the draft, publish it and wait until the services serve it (a job).",
                                        {**_WRITE, **busy}, body={"type": "object", "required": ["revision"], "properties": {
                                            "revision": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1,
                                                         "description": "The preview's revision."}}},
                                        ok=job_ok, status="202")},
            "/v1/rollback": {"post": _op("Point CURRENT (and the origin's) back at an older snapshot (a job).",
                                         {**_WRITE, **busy, "404": "No snapshot of that seq (not_found).",
                                          "409": "A build is running (build_running), or there is no older snapshot "
                                                 "(nothing_to_roll_back)."},
                                         body={"type": "object", "properties": {
                                             "to": {"type": ["integer", "null"], "minimum": 1, "maximum": 2**63 - 1,
                                                    "description": "The seq (default: the one "
                                                                                               "before CURRENT)."}}},
                                         ok=job_ok, status="202")},
            "/v1/jobs/{job_id}": {"get": _op("A publish or rollback: state, phase, phases with their times, seq.",
                                             {**_READ, "400": "Bad job id.", "404": "No such job."},
                                             [{"name": "job_id", "in": "path", "required": True, "schema": ID,
                                               "example": "1"}], ok=json_ok("The job.", job))},
            "/v1/live": {"get": _op("The live snapshot and those a rollback can go back to.", _READ)},
            "/v1/live/prizes/{task_id}/{prize_type}": {"post": _op(
                "Change a prize's quota and/or rate now through the collector (no rebuild); the draft follows.",
                {**_WRITE, "409": "Quota below issued.",
                 "404": "No such prize in the ledger, or live changes are off: no collector configured (live_off).",
                 "503": "The collector did not answer (live_unavailable)."},
                [_TASK_P, {"name": "prize_type", "in": "path", "required": True, "schema": {"type": "string"},
                           "example": "cash"}],
                {"type": "object", "minProperties": 1, "additionalProperties": False,
                 "properties": {"quota": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                                "rate_per_s": {"type": ["number", "null"], "minimum": 0, "maximum": 1e9}}})},
            "/v1/live/tasks/{task_id}": {"post": _op(
                "The kill switch now, through the collector (no rebuild); the draft follows.",
                {**_WRITE,
                 "404": "No such task in the live snapshot, or live changes are off: no collector configured (live_off).",
                 "503": "The collector did not answer (live_unavailable)."},
                [_TASK_P], {"type": "object", "required": ["enabled"], "properties": {"enabled": {"type": "boolean"}}})},
            "/healthz": {"get": _op("The draft's kind and revision, the live seq, whether a build runs.", _READ,
                                    secured=False)},
            "/openapi.json": {"get": _op("This document.", {}, ok=json_ok("OpenAPI 3.1."), secured=False)},
            "/": {"get": _op("The console page.", {}, ok=text_ok("The page.", "text/html"), secured=False)},
            "/static/{name}": {"get": _op("The console's files and the vendored libraries.", {"404": "No such file."},
                                          [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                                            "example": "console.js"}], secured=False,
                                          ok={"description": "A file.", "content": {"*/*": {"schema": {"type": "string"}}}})},
        },
        "components": {"schemas": {"Error": ERROR}, "securitySchemes": {
            "admin": {"type": "http", "scheme": "bearer", "description": "An operator's token (geo-console operator add)."},
            "session": {"type": "apiKey", "in": "cookie", "name": "geodrop_console",
                        "description": "The page's session, from POST /v1/session."},
            "sameOrigin": {"type": "apiKey", "in": "header", "name": "X-Geodrop-Session",
                           "description": "Any value: sent with the session cookie by the page itself."}}},
    }
