"""Who a request is from: the player its bearer token names, by the service's own HMAC token or a JWT of the app's login."""

from __future__ import annotations

import math
import time

from aiohttp import web

from geo_service.jwt_tokens import JwtError, KeysUnavailable, is_jwt
from geo_service.keys import http_key, jwt_key, settings_key
from geo_service.tokens import TokenError, verify
from geo_service.web.errors import ClaimsDisabled, JwksUnavailable, Unauthorized


async def player(request: web.Request) -> str:
    """Return the player id of the request's bearer token; raise 401 for none or a bad one, 503 with no way to check
    player tokens configured (or a JWT whose key set cannot be fetched right now)."""
    app = request.app
    secret, verifier = app[settings_key].token_secret, app.get(jwt_key)
    if not secret and verifier is None:
        raise ClaimsDisabled("player routes are off: no token_secret, jwt_secret or jwt_jwks_url is configured")
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise Unauthorized("this needs Authorization: Bearer <player token>")
    token = header.removeprefix("Bearer ")  # exactly one space: one spelling
    if is_jwt(token):
        if verifier is None:
            raise Unauthorized("JWT player tokens are not accepted here (no jwt_secret or jwt_jwks_url)")
        try:
            return await verifier.verify(token, app[http_key])
        except JwtError as exc:
            raise Unauthorized(str(exc)) from None
        except KeysUnavailable:
            retry = math.ceil(verifier.jwks.min_refresh_s) if verifier.jwks else 1
            # What failed (the key set's host, TLS, ...) is the operators' (/healthz, the log), not every client's.
            raise JwksUnavailable("player tokens cannot be checked now; retry shortly",
                                  headers={"Retry-After": str(retry)}) from None
    if not secret:
        raise Unauthorized("malformed token (this service takes JWT player tokens only)")
    try:
        return verify(token, secret, time.time())
    except TokenError as exc:
        raise Unauthorized(str(exc)) from None
