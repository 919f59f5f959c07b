"""Who a request is from: the player its bearer token names."""

from __future__ import annotations

import time

from aiohttp import web

from geo_service.keys import settings_key
from geo_service.tokens import TokenError, verify
from geo_service.web.errors import ClaimsDisabled, Unauthorized


def player(request: web.Request) -> str:
    """Return the user id of the request's player token; raise 401 for none or a bad one, 503 with no secret set."""
    secret = request.app[settings_key].token_secret
    if not secret:
        raise ClaimsDisabled("player routes are off: no token_secret is configured")
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise Unauthorized("this needs Authorization: Bearer <player token>")
    try:
        return verify(header.removeprefix("Bearer "), secret, time.time())  # exactly one space: one spelling
    except TokenError as exc:
        raise Unauthorized(str(exc)) from None
