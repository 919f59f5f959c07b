"""JSON responses with orjson, and the ETag/304 helpers."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def etag_matches(request: web.Request, etag: str) -> bool:
    """Return whether If-None-Match names this ETag (or is *)."""
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    return header.strip() == "*" or etag in (tag.strip() for tag in header.split(","))


def not_modified(etag: str, headers: dict[str, str]) -> web.Response:
    return web.Response(status=304, headers={"ETag": etag, **headers})
