"""The OpenAPI 3.1 description of every route, parameter, response, header and error: the contract a
client (and Schemathesis, in tests/test_fuzz.py) holds the service to. Examples come from data/sample."""

from __future__ import annotations

from typing import Any

from geo_service import __version__
from geo_service.snapshot.grid import MAX_ABS_LAT
from geo_service.web.openapi import (
    COORDINATE_LAT,
    COORDINATE_LNG,
    ERROR,
    EXAMPLE,
    SPEC_MAX_ABS_LNG,
    error_spec,
    json_ok,
    text_ok,
)

EXAMPLE_CELL = 50094482270  # the cell of EXAMPLE on the sample's grid (100 m squares)


def _coordinate(name: str, bound: float, example: float) -> dict[str, Any]:
    schema = {"type": "number", "minimum": -bound, "maximum": bound}
    return {"name": name, "in": "query", "required": True, "schema": schema, "example": example,
            "description": f"WGS84 degrees in [{-bound:g}, {bound:g}], given once."}


INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
NEARBY = {
    "type": "object",
    "required": ["answer_version", "seq", "center_cell", "cells", "pois", "tasks", "truncated", "next_poll_ms"],
    "properties": {
        "answer_version": {"type": "integer", "enum": [2], "description": "This shape: 2, prize levels (1 had counts)."},
        "seq": {"type": "integer", "description": "The snapshot this answer comes from."},
        "center_cell": {"type": "integer"},
        "cells": {"type": "array", "items": {"type": "integer"},
                  "description": "The window's cells: 5 rows of 5 (or of up to 7 in a band whose column count differs "
                                 "from the centre's) on a square grid, 19 hexagons on H3 at radius 2."},
        "pois": {"type": "array", "items": {
            "type": "object", "required": ["poi_id", "task_id", "lat", "lng"], "properties": {
                "poi_id": {"type": "integer"}, "task_id": {"type": "integer"},
                "lat": COORDINATE_LAT, "lng": COORDINATE_LNG}}},
        "tasks": {"type": "array", "items": {"type": "object", "required": ["task_id", "name", "status", "prizes"],
                                             "properties": {
            "task_id": {"type": "integer"}, "name": {"type": "string"}, "district_code": {"type": "integer"},
            "status": {"type": "string", "enum": ["active"]}, "ends_at": {"type": "string", "format": "date-time"},
            "stagger": {"type": "object", "required": ["groups", "step_s", "starts_at"],
                        "description": "Staggered openings: the player's group g = FNV-1a 32-bit of the UTF-8 player id "
                                       "mod groups opens at starts_at + g * step_s (README: staggered openings).",
                        "properties": {"groups": {"type": "integer", "minimum": 2}, "step_s": {"type": "integer"},
                                       "starts_at": {"type": "string", "format": "date-time"}}},
            "prizes": {"type": "array", "items": {"type": "object", "required": ["prize_type", "level"], "properties": {
                "prize_type": {"type": "string"},
                "level": {"enum": ["plenty", "few", "last", "none", None],
                          "description": "How much is left, coarsely (thresholds: level_few_below, level_last_below); "
                                         "null without a collector. Exact counts: the collector's feed."}}}}}}},
        "truncated": {"type": "boolean", "description": "True when the POI cap cut the list."},
        "next_poll_ms": {"type": "integer", "minimum": 1,
                         "description": "Wait this long before polling again (rises under load)."},
        "status_age_s": {"type": ["number", "null"],
                         "description": "Age of the collector's task status in use; null without a collector."},
    },
}
GRID = {
    "type": "object",
    "required": ["seq", "key", "kind", "radius"],
    "description": "What a client computes cell ids from (README: the client code); fields by kind.",
    "properties": {
        "seq": {"type": "integer"}, "key": {"type": "string", "description": "The grid's key, the same while the grid "
                                                                              "is: name it in ?grid= of cell polls."},
        "kind": {"enum": ["square", "h3"]}, "radius": {"type": "integer", "minimum": 1},
        "cell_m": {"type": "number"}, "band_rows": {"type": "integer", "minimum": 1},
        "row_height_deg": {"type": "number"}, "n_rows": {"type": "integer"}, "max_cols": {"type": "integer"},
        "band_cols": {"type": "array", "items": {"type": "integer", "minimum": 1}, "description": "Columns of each band."},
        "h3_res": {"type": "integer", "minimum": 0, "maximum": 15},
    },
}
CACHE_CONTROL = {"Cache-Control": {"schema": {"type": "string"}, "description": "public, max-age=<the poll interval, s>."}}
NOT_MODIFIED = {"description": "Unchanged since the ETag given in If-None-Match.",
                "headers": {"ETag": {"schema": {"type": "string"}}, **CACHE_CONTROL}}
IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "An ETag from an earlier answer: 304 if what it shows is unchanged."}
CLAIM = {
    "type": "object",
    "required": ["claim_id", "task_id", "poi_id", "lat", "lng"],
    "properties": {
        "claim_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$", "description": "Client-chosen idempotency key."},
        "task_id": INT64, "poi_id": INT64, "lat": COORDINATE_LAT, "lng": COORDINATE_LNG,
    },
    "example": {"claim_id": "c-1", **EXAMPLE},
}
OUTCOME = {
    "type": "object",
    "required": ["claim_id", "outcome"],
    "properties": {"claim_id": {"type": "string"},
                   "outcome": {"type": "string", "enum": ["won", "no_prize_left", "cap_reached", "player_cap_reached",
                                                          "too_far", "task_inactive", "not_yet", "implausible_movement"]},
                   "prize_type": {"type": "string"}, "reason": {"type": "string"},
                   "wins_left": {"type": "integer", "minimum": 0,
                                 "description": "Wins the event still allows the player (with player_win_cap set; not on a "
                                                "retried claim's replay): at 0 a client stops claiming."},
                   "opens_at": {"type": "string", "format": "date-time",
                                "description": "not_yet: when the task opens for the player's group."}},
}
PRIZE = {
    "type": "object",
    "required": ["claim_id", "task_id", "prize_type", "won_at", "state", "attempts", "eta", "channel"],
    "properties": {
        "claim_id": {"type": "string"}, "task_id": {"type": "integer"}, "prize_type": {"type": "string"},
        "won_at": {"type": "string", "format": "date-time"},
        "state": {"enum": ["pending", "sending", "delivered", "parked", "failed"],
                  "description": "parked: the partner needs the player's account first; ask again once it exists."},
        "attempts": {"type": "integer", "minimum": 0},
        "eta": {"type": ["string", "null"], "description": "When it arrives, as the channel tells players."},
        "channel": {"type": ["string", "null"]},
        "reference": {"type": "string", "description": "The partner's reference, once delivered."},
        "delivered_at": {"type": "string", "format": "date-time"},
    },
}
# The partner contract (delivery/contract.py): what a dispatcher sends to a channel's URL, and what it understands back.
DELIVERY = {
    "type": "object",
    "required": ["delivery_id", "claim_id", "user_id", "task_id", "prize_type", "won_at", "channel", "attempt"],
    "properties": {
        "delivery_id": {"type": "string", "description": "The idempotency key: the same on every attempt of one prize."},
        "claim_id": {"type": "string"}, "user_id": {"type": "string"}, "task_id": {"type": "integer"},
        "prize_type": {"type": "string"}, "won_at": {"type": "number", "description": "Epoch seconds."},
        "channel": {"type": "string"}, "attempt": {"type": "integer", "minimum": 1},
    },
}
PARTNER_ANSWER = {"type": "object", "required": ["status"], "properties": {
    "status": {"enum": ["delivered", "already_delivered", "no_account"]},
    "reference": {"type": "string", "minLength": 1, "maxLength": 128}}}
WEBHOOKS = {"delivery": {"post": {
    "summary": "A won prize, sent to a partner (a channel's URL). Signed: Geodrop-Signature: t=<unix s>,v1=<hex "
               "HMAC-SHA256 of '<t>.<body>' under the channel's secret>; refuse a t more than 300 s away.",
    "parameters": [{"name": "Geodrop-Signature", "in": "header", "required": True, "schema": {"type": "string"}},
                   {"name": "Idempotency-Key", "in": "header", "required": True, "schema": {"type": "string"},
                    "description": "The delivery_id again."}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": DELIVERY}}},
    "responses": {
        "200": json_ok("Delivered (status delivered, with your reference), or seen before (already_delivered).",
                       PARTNER_ANSWER),
        "409": json_ok("already_delivered (with the reference), or no_account: parked until the player asks again.",
                       PARTNER_ANSWER),
        "429": {"description": "Slow down: the channel's pace drops; Retry-After (seconds) is honoured."},
        "503": {"description": "As 429."},
        "401": {"description": "As 429, without the hold: a refused signature is the channel's trouble (a clock, a "
                               "secret), never one delivery's; so are 403, 404 and 408."},
        "4XX": {"description": "Refused for good: the delivery goes to the dead-letter list for an operator."},
        "5XX": {"description": "Sent again with the same delivery_id after a capped, jittered backoff (also after a "
                               "timeout, a reset, or any answer that is not one of the above)."}}}}}
BAD_BODY = error_spec("Body not a JSON object (invalid_json); a field missing (missing_param) or of the wrong type or "
                  "range (invalid_param).")


def _answer(description: str) -> dict[str, Any]:
    """Return the 200 response of /v1/nearby and /v1/cells: the answer, its headers, and the link to a claim."""
    headers = {"ETag": {"schema": {"type": "string"}, "description": "Of what the answer shows; revalidate with "
                                                                        "If-None-Match."},
               "X-Next-Poll-Ms": {"schema": {"type": "string", "pattern": "^[0-9]+$"}, "description": "As next_poll_ms."},
               **CACHE_CONTROL}
    return {**json_ok(description, NEARBY, headers), "links": {"ClaimAPoi": {
        "operationId": "claim",
        "description": "Catch the first POI of the answer, standing on it.",
        "requestBody": {"claim_id": "link-claim", "task_id": "$response.body#/pois/0/task_id",
                        "poi_id": "$response.body#/pois/0/poi_id",
                        "lat": "$response.body#/pois/0/lat", "lng": "$response.body#/pois/0/lng"}}}}


ME = {"type": "object", "required": ["user_id", "catch_radius_m", "win_cap", "player_win_cap"], "properties": {
    "user_id": {"type": "string"}, "catch_radius_m": {"type": "number"},
    "win_cap": {"type": "integer", "description": "Most wins from one task."},
    "player_win_cap": {"type": ["integer", "null"], "description": "Most wins in the whole event (null: no limit)."}}}


def openapi_spec() -> dict[str, Any]:
    """Return the service's OpenAPI document."""
    busy = error_spec("Overloaded (overloaded) or no snapshot loaded yet (snapshot_unavailable).", retry=True)
    live_snapshot = {"type": ["object", "null"], "required": ["seq", "age_s", "loaded_s_ago", "source_problem"], "properties": {
        "seq": {"type": "integer"}, "age_s": {"type": "number"}, "loaded_s_ago": {"type": "number"},
        "source_problem": {"type": ["string", "null"], "description": "What is wrong with the live snapshot's folder "
                           "(a file missing or cut); the private copy the workers map keeps serving."}}}
    health_body = {"type": "object", "required": ["worker_id", "snapshot", "status", "load"],
                   "properties": {"snapshot": live_snapshot, "snapshot_error": {"type": ["string", "null"]}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "geodrop geo_service", "version": __version__},
        "paths": {
            "/v1/nearby": {"get": {
                "operationId": "nearby",
                "summary": "Active tasks' POIs in the window around a position (the map-polling endpoint).",
                "parameters": [
                    {**_coordinate("lat", MAX_ABS_LAT, EXAMPLE["lat"]), "description":
                        f"WGS84 degrees in [{-MAX_ABS_LAT:g}, {MAX_ABS_LAT:g}] (square cells stop being squares "
                        "beyond: the served band), given once."},
                    _coordinate("lng", SPEC_MAX_ABS_LNG, EXAMPLE["lng"]), IF_NONE_MATCH],
                "responses": {
                    "200": _answer("The answer."),
                    "304": NOT_MODIFIED,
                    "400": error_spec("A parameter is missing (missing_param), or repeated, not a number or out of range "
                                  "(invalid_param)."),
                    "414": error_spec("Query string too long (query_too_long)."),
                    "503": busy}}},
            "/v1/cells/{cell}": {"get": {
                "operationId": "cell",
                "summary": "The /v1/nearby answer of every point of a cell, by cell id (one cache entry for the cell).",
                "parameters": [
                    {"name": "cell", "in": "path", "required": True, "example": EXAMPLE_CELL,
                     "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                     "description": "A cell id of the grid (GET /v1/grid; README: computing it)."},
                    {"name": "grid", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 64},
                     "description": "The key of the grid the cell id was computed on (GET /v1/grid's `key`): an edge "
                                    "cache keys on it, and a key that is not the live grid's is a 409."}, IF_NONE_MATCH],
                "responses": {
                    "200": _answer("The answer, as /v1/nearby gives it at any point of the cell."),
                    "304": NOT_MODIFIED,
                    "400": error_spec("Not a decimal cell id (invalid_param)."),
                    "404": error_spec("A number that is no cell of the grid, or one beyond the served band (not_found)."),
                    "409": error_spec("`grid` names a grid the live snapshot does not have (grid_changed): get the grid "
                                      "again and compute the cell anew."),
                    "503": busy}}},
            "/v1/grid": {"get": {
                "operationId": "grid",
                "summary": "The live snapshot's grid: what a client computes its cell id from.",
                "parameters": [IF_NONE_MATCH],
                "responses": {
                    "200": json_ok("The grid (gzip when accepted).", GRID, {
                        "ETag": {"schema": {"type": "string"}, "description": "Revalidate with If-None-Match."}}),
                    "304": {"description": "Unchanged since the ETag given in If-None-Match.",
                            "headers": {"ETag": {"schema": {"type": "string"}}}},
                    "503": busy}}},
            "/v1/claims": {"post": {
                "operationId": "claim",
                "summary": "Catch an envelope at a POI: checks, weighted draw with fallback, exact quotas.",
                "security": [{"player": []}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": CLAIM}}},
                "responses": {
                    "200": json_ok("The outcome: won (with prize_type), no_prize_left, cap_reached, player_cap_reached, "
                                   "too_far, task_inactive, not_yet (with opens_at) or implausible_movement (with reason); "
                                   "wins_left with player_win_cap. The same claim retried (same player, "
                                   "claim_id, task and POI) returns its first outcome.", OUTCOME),
                    "400": BAD_BODY,
                    "401": error_spec("No, forged or expired player token (invalid_token)."),
                    "404": error_spec("Unknown task or POI in the live snapshot (not_found), or the POI is not one of the "
                                  "task's (poi_not_in_task)."),
                    "408": error_spec("The body did not arrive within keepalive_timeout_s (request_timeout); the "
                                  "connection is closed."),
                    "409": error_spec("The claim_id was first used by another player, or for another task or POI "
                                      "(claim_id_conflict): nothing changed; send each claim with a fresh random id."),
                    "503": error_spec("Claims off: no token_secret, jwt_secret or jwt_jwks_url (claims_disabled); a JWT's "
                                      "key set unreachable (jwks_unavailable); the ledger unreachable or silent for "
                                  "claim_timeout_s, or its server short of the ledger's requirements (ledger_unavailable, "
                                  "retry with the same claim_id); no snapshot; "
                                  "overloaded.",
                                  retry=True)}}},
            "/v1/me": {"get": {
                "operationId": "me",
                "summary": "Who the token names and the rules a client obeys for them (no ledger call).",
                "security": [{"player": []}],
                "responses": {
                    "200": json_ok("The player and the rules.", ME),
                    "401": error_spec("No, forged or expired player token (invalid_token)."),
                    "503": error_spec("Player routes off (claims_disabled).", retry=True)}}},
            "/v1/me/prizes": {"get": {
                "operationId": "myPrizes",
                "summary": "The player's won prizes, newest first (up to 200), each with its delivery state and ETA.",
                "security": [{"player": []}],
                "responses": {
                    "200": json_ok("The prizes.", {"type": "object", "required": ["user_id", "prizes"], "properties": {
                        "user_id": {"type": "string"}, "prizes": {"type": "array", "items": PRIZE}}}),
                    "401": error_spec("No, forged or expired player token (invalid_token)."),
                    "503": error_spec("Player routes off (claims_disabled); no record database (deliveries_unavailable); "
                                      "the record database unreachable (ledger_unavailable).", retry=True)}}},
            "/v1/me/prizes/{claim_id}/deliver": {"post": {
                "operationId": "askAgain",
                "summary": "Ask for a prize again: a parked or waiting one is sent now; a delivered one is never sent twice.",
                "security": [{"player": []}],
                "parameters": [{"name": "claim_id", "in": "path", "required": True,
                                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}}],
                "responses": {
                    "200": json_ok("Nothing to send (delivered, or being sent): the prize as it stands.", PRIZE),
                    "202": json_ok("Due now: the prize as it stands.", PRIZE),
                    "400": error_spec("Not a claim id (invalid_param)."),
                    "401": error_spec("No, forged or expired player token (invalid_token)."),
                    "404": error_spec("The player has no such prize (not_found)."),
                    "429": error_spec("Asked for this prize less than ask_again_every_s ago (too_many_requests).",
                                      retry=True),
                    "503": error_spec("As GET /v1/me/prizes.", retry=True)}}},
            "/healthz": {"get": {"summary": "Live snapshot seq and age, status age, origin, ledger, load, worker id.",
                                 "responses": {
                                     "200": json_ok("Serving.", health_body),
                                     "503": error_spec("No snapshot loaded (snapshot_unavailable); details holds the report.")}}},
            "/metrics": {"get": {"summary": "Prometheus text metrics of this worker.",
                                 "responses": {"200": text_ok("Text exposition format 0.0.4.")}}},
            "/openapi.json": {"get": {"summary": "This document.", "responses": {"200": json_ok("OpenAPI 3.1.")}}},
            "/v1/admin/reload": {"post": {
                "summary": "Load CURRENT now, verify it and swap it in.",
                "security": [{"admin": []}],
                "responses": {
                    "200": json_ok("{seq, swapped, error: null}."),
                    "401": error_spec("Missing or wrong bearer token, or admin routes off: no admin_token (invalid_token)."),
                    "409": error_spec("The snapshot failed verification and was refused (snapshot_refused).")}}},
            "/play": {"get": {
                "summary": "The player page (no-cache; its files at content-hashed, immutable /static/ URLs).",
                "responses": {"200": text_ok("The page.", "text/html")}}},
            "/static/{name}": {"get": {
                "summary": "The player page's files, the reference client (geodrop-client.js, .d.ts) and vendored "
                           "libraries: at a content-hashed name (name.<12 hex>.ext) immutable for a year, at the plain "
                           "name no-cache (ETag).",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                                "example": "geodrop-client.js"}],
                "responses": {"200": {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}},
                              "404": error_spec("No such file (not_found).")}}},
        },
        "webhooks": WEBHOOKS,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer", "description": "the admin_token setting"},
                                "player": {"type": "http", "scheme": "bearer", "description":
                                           "A player token of either kind: the service's own (`geo-service token`, "
                                           "HMAC with token_secret; two dot-separated parts), or a JWT from the app's "
                                           "own login (three parts): HS256 with jwt_secret, or RS256 / EdDSA (Ed25519) "
                                           "with a key of the jwt_jwks_url key set by its kid; checked for iss, aud, "
                                           "exp, iat, nbf and lifetime, the player id in the jwt_player_claim claim. "
                                           "A bad token is a 401 invalid_token; a JWT whose key set cannot be fetched "
                                           "now is a 503 jwks_unavailable with Retry-After."}},
        },
    }
