"""The pieces of OpenAPI both services' documents are made of: the error shape, responses, coordinates.

Examples come from data/sample, the embedded default, so a client can try them on `make run`.
"""

from __future__ import annotations

from typing import Any

from geo_service.snapshot.grid import MAX_ABS_LAT, MAX_ABS_LNG

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["status", "code", "message"],
        "properties": {
            "status": {"type": "integer", "description": "Equals the HTTP status."},
            "code": {"type": "string", "pattern": "^[a-z_]+$", "description": "Stable snake_case code, e.g. invalid_param."},
            "message": {"type": "string", "description": "Human-readable, safe to show."},
            "field": {"type": "string", "description": "The input at fault, when there is one."},
            "details": {"description": "More context, for some codes."},
        },
    }},
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
# A position on data/sample's ground: a POI of task 44030300 (罗湖区 red envelope #1).
EXAMPLE = {"task_id": 44030300, "poi_id": 10001857, "lat": 22.54331, "lng": 114.107695}


def error_spec(description: str, retry: bool = False) -> dict[str, Any]:
    """Return an error response: the one JSON shape (optionally with Retry-After)."""
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if retry:
        response["headers"] = RETRY_AFTER
    return response


def json_ok(description: str, schema: dict[str, Any] | None = None, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a 200 response with a JSON body (any object unless a schema is given)."""
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": schema or {"type": "object"}}}}
    if headers:
        response["headers"] = headers
    return response


def text_ok(description: str, media: str = "text/plain") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


COORDINATE_LAT = {"type": "number", "minimum": -MAX_ABS_LAT, "maximum": MAX_ABS_LAT}
# Published as a whole number, as the specs always said it (180, not 180.0).
SPEC_MAX_ABS_LNG = int(MAX_ABS_LNG)
COORDINATE_LNG = {"type": "number", "minimum": -SPEC_MAX_ABS_LNG, "maximum": SPEC_MAX_ABS_LNG}
