"""What keeps the dashboard's tab safe: a strict Content-Security-Policy and the usual headers on every answer,
and the admin session that keeps the admin token out of the page.

The page asks for the admin token once, trades it at POST /v1/admin/session for a short-lived session cookie
(HttpOnly, so no script reads it; SameSite=Strict and scoped to /v1/admin, so no other site's page sends it),
and forgets it. The cookie is `<expires>.<HMAC of it under a key derived from the admin token>`: nothing is
stored server-side, every collector of a deployment accepts it, and changing the token ends every session.
An admin request that rides on the cookie must also carry the X-Geodrop-Session header: a custom header
cannot be sent cross-origin without a CORS preflight, which the collector never grants.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from aiohttp import web

from collector.keys import settings_key
from geo_service.web.params import require_admin
from geo_service.web.responses import json_response
from geo_service.web.routing import Route
from geo_service.web.static import CSP as CSP  # the pages' policy, geo-service's player page's too
from geo_service.web.static import SECURE_HEADERS

COOKIE = "geodrop_admin"
SESSION_HEADER = "X-Geodrop-Session"


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer of the collector, pages, JSON and errors alike, carries SECURE_HEADERS."""
    response.headers.update(SECURE_HEADERS)


def _mac(token: str, expires: int) -> str:
    key = hmac.new(token.encode(), b"geodrop admin session", hashlib.sha256).digest()
    return hmac.new(key, str(expires).encode(), hashlib.sha256).hexdigest()


def session_value(token: str, expires: int) -> str:
    return f"{expires}.{_mac(token, expires)}"


def session_expiry(token: str, value: str, now: float) -> int | None:
    """Return when a session cookie's value ends, or None if it is not a live session made under `token`."""
    expires, _, mac = value.partition(".")
    if not (token and expires.isascii() and expires.isdigit() and len(expires) <= 12 and int(expires) > now):
        return None
    valid = hmac.compare_digest(mac.encode(errors="surrogateescape"), _mac(token, int(expires)).encode())
    return int(expires) if valid else None


def admin_check(request: web.Request, what: str) -> None:
    """Let an admin route pass with the bearer token (scripts, curl) or the page's session; 401 otherwise."""
    token = request.app[settings_key].admin_token
    if request.headers.get(SESSION_HEADER) and session_expiry(token, request.cookies.get(COOKIE, ""), time.time()):
        return
    require_admin(request.headers.get("Authorization", ""), token, what)


async def open_session(request: web.Request) -> web.Response:
    """Trade the admin bearer token for a session cookie the page's script cannot read."""
    settings = request.app[settings_key]
    require_admin(request.headers.get("Authorization", ""), settings.admin_token, "an admin session")
    expires = int(time.time()) + settings.admin_session_s
    response = json_response({"expires_at": expires}, headers={"Cache-Control": "no-store"})
    response.set_cookie(COOKIE, session_value(settings.admin_token, expires), max_age=settings.admin_session_s,
                        path="/v1/admin", httponly=True, samesite="Strict", secure=_https(request))
    return response


async def session_state(request: web.Request) -> web.Response:
    """Whether this browser holds a live session, and until when: the page asks before an admin action, so it
    prompts for the token only when it must (and the console shows no 401)."""
    expires = session_expiry(request.app[settings_key].admin_token, request.cookies.get(COOKIE, ""), time.time())
    return json_response({"expires_at": expires}, headers={"Cache-Control": "no-store"})


async def close_session(request: web.Request) -> web.Response:
    """End the page's session (the cookie is dropped; a copy of it lives until it expires)."""
    response = json_response({"closed": True})
    response.del_cookie(COOKIE, path="/v1/admin", secure=_https(request), httponly=True, samesite="Strict")
    return response


def _https(request: web.Request) -> bool:
    """Whether the browser reached us over TLS (directly, or through a proxy that says so)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"


ROUTES: list[Route] = [
    ("GET", "/v1/admin/session", session_state),
    ("POST", "/v1/admin/session", open_session),
    ("DELETE", "/v1/admin/session", close_session),
]
