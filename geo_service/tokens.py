"""Signed player tokens: "<payload>.<signature>", HMAC-SHA256 over "v1:<user_id>:<expires_at>"."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_USER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The one spelling of a token: unpadded base64url payload, a dot, the 43 characters of an HMAC-SHA256. Loose
# decoding would take many strings for one token (junk characters dropped, other trailing bits), and a limit keyed
# on the token (deploy/nginx.conf's claims_per_player, which matches this too) would count each apart.
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,200}\.[A-Za-z0-9_-]{43}")


class TokenError(ValueError):
    """A token that is malformed, badly signed or expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(payload: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()


def mint(user_id: str, secret: str, expires_at: int) -> str:
    """Return a token for user_id valid until expires_at (epoch seconds)."""
    if not _USER_RE.fullmatch(user_id):
        raise ValueError("user id must be 1-64 characters of A-Z a-z 0-9 _ -")
    if not secret:
        raise ValueError("no token secret configured")
    payload = f"v1:{user_id}:{expires_at}".encode()
    return f"{_b64(payload)}.{_b64(_sign(payload, secret))}"


def verify(token: str, secret: str, now_s: float) -> str:
    """Return the token's user id; raise TokenError if it is malformed, forged or expired."""
    if not TOKEN_RE.fullmatch(token):
        raise TokenError("malformed token")
    try:
        payload_b64, sig_b64 = token.split(".")
        payload, sig = _unb64(payload_b64), _unb64(sig_b64)
        version, user_id, expires = payload.decode().split(":")
        expires_at = int(expires)
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed token") from None
    if _b64(payload) != payload_b64 or _b64(sig) != sig_b64 or str(expires_at) != expires:
        raise TokenError("malformed token")  # decodes, but is not the one spelling mint() writes
    if not secret or not hmac.compare_digest(sig, _sign(payload, secret)):
        raise TokenError("bad token signature")
    if version != "v1" or not _USER_RE.fullmatch(user_id):
        raise TokenError("malformed token")
    if now_s >= expires_at:
        raise TokenError("token expired")
    return user_id
