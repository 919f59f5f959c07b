"""The HTTP error contract: ApiError classes carry status and code; from_exception makes every error body.

Body: {"error": {"status": 400, "code": "invalid_param", "message": "...", "field": "lat"}}.
status, code and message are always present; field is present when one input is at fault.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("geodrop.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, field: str | None = None, headers: dict[str, str] | None = None,
                 details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.details = details


class InvalidParam(ApiError):
    status, code = 400, "invalid_param"


class MissingParam(ApiError):
    status, code = 400, "missing_param"


class RequestTimeout(ApiError):
    status, code = 408, "request_timeout"


class QueryTooLong(ApiError):
    status, code = 414, "query_too_long"


class Unauthorized(ApiError):
    status, code = 401, "invalid_token"


class NotFound(ApiError):
    status, code = 404, "not_found"


class InvalidJson(ApiError):
    status, code = 400, "invalid_json"


class PoiNotInTask(ApiError):
    status, code = 404, "poi_not_in_task"  # the task has no such POI: a not-found, as the contract's clients expect


class ClaimIdConflict(ApiError):
    status, code = 409, "claim_id_conflict"  # the claim_id was first used by another player, task or POI


class GridChanged(ApiError):
    status, code = 409, "grid_changed"  # a cell id computed on a grid the live snapshot no longer has


class QuotaBelowIssued(ApiError):
    status, code = 409, "quota_below_issued"


class ClaimsDisabled(ApiError):
    status, code = 503, "claims_disabled"


class JwksUnavailable(ApiError):
    status, code = 503, "jwks_unavailable"  # the key set could not be fetched: the token may be good, so not a 401


class LedgerUnavailable(ApiError):
    status, code = 503, "ledger_unavailable"


class SnapshotUnavailable(ApiError):
    status, code = 503, "snapshot_unavailable"


class SnapshotRefused(ApiError):
    status, code = 409, "snapshot_refused"  # a snapshot failed verification; the live one stays


class ViewUnavailable(ApiError):
    status, code = 503, "view_unavailable"  # the collector has no view yet (its first tick has not completed)


class Overloaded(ApiError):
    status, code = 503, "overloaded"


class TooManyRequests(ApiError):
    status, code = 429, "too_many_requests"  # this client's own limit; Retry-After says when


class DeliveriesUnavailable(ApiError):
    status, code = 503, "deliveries_unavailable"  # no record database to read deliveries from


# Router and protocol errors keep their status; these give them a stable code.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 414: "query_too_long",
               400: "bad_request", 401: "invalid_token", 403: "forbidden", 503: "unavailable"}


def error_body(status: int, code: str, message: str, field: str | None = None, details: Any = None) -> bytes:
    """Return the one error body shape as JSON bytes."""
    error: dict[str, Any] = {"status": status, "code": code, "message": message}
    if field is not None:
        error["field"] = field
    if details is not None:
        error["details"] = details
    return orjson.dumps({"error": error})


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, details: Any = None) -> web.Response:
    return web.Response(status=status, body=error_body(status, code, message, field, details),
                        content_type="application/json", headers=headers)


def from_exception(request: web.Request, exc: BaseException) -> web.Response:
    """Translate any exception into the error shape; unexpected ones are logged, never shown."""
    if isinstance(exc, ApiError):
        response = error_response(exc.status, exc.code, exc.message, exc.field, exc.headers, exc.details)
        if exc.headers.get("Connection") == "close":  # aiohttp closes on force_close(), not on the header alone
            response.force_close()
        return response
    if isinstance(exc, web.HTTPException):
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        phrase = HTTPStatus(exc.status).phrase if exc.status in HTTPStatus._value2member_map_ else exc.reason
        message = f"{request.method} {request.path}: {phrase}"
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message, headers=headers)
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc,
              extra={"request_id": request.headers.get("X-Request-Id")})
    return error_response(500, "internal_error", "internal error; it has been logged")
