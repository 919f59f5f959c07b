"""The partner contract, as geodrop publishes it (README "Writing a partner endpoint", OpenAPI `webhooks`).

A delivery is a POST of a JSON body to the channel's URL, signed in the header

    Geodrop-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the channel's secret>

(as Stripe and Svix sign webhooks: the timestamp inside the signature bounds a replay to the tolerance). The
body carries delivery_id, the idempotency key: the same for every attempt of one prize. The partner answers

    2xx {"status": "delivered", "reference": R}            delivered (R: the partner's own reference)
    2xx or 409 {"status": "already_delivered", "reference": R}   delivered (it had seen this delivery_id)
    409 {"status": "no_account"}                            parked until the player opens an account and asks again
    429 or 503, optionally with Retry-After: <seconds>     the channel slows down; the delivery is sent again
    401, 403, 404, 408                                      the same: a refused signature, a wrong route or a timeout
                                                            is the channel's trouble (a clock, a secret, a proxy), not
                                                            this delivery's, and must not dead-letter a whole backlog
    any other 4xx                                           failed: to the dead-letter list, for an operator
    5xx, a timeout, a reset, or anything else              sent again, with the same delivery_id, after a backoff
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
from dataclasses import dataclass

import orjson

SIGNATURE_HEADER = "Geodrop-Signature"
TOLERANCE_S = 300
MAX_ANSWER_BYTES = 65_536  # more than this is not an answer: the call is retried
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 60.0
RETRY_AFTER_CAP_S = 300.0
CHANNEL_TROUBLE = frozenset({401, 403, 404, 408})  # the channel's fault, not the delivery's: retried and slowed


class SignatureError(ValueError):
    """A request whose signature is missing, malformed, wrong or outside the tolerance."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the Geodrop-Signature header's value for a body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: float = TOLERANCE_S) -> None:
    """Check a request's signature as a partner does; raise SignatureError if it does not hold."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (ValueError, KeyError):
        raise SignatureError("malformed Geodrop-Signature") from None
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError("Geodrop-Signature timestamp outside the tolerance")
    # surrogateescape: a stray byte in the header (aiohttp decodes it so) is a mismatch, not an exception.
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(),
                               f"t={timestamp},v1={given}".encode(errors="surrogateescape")):
        raise SignatureError("Geodrop-Signature does not match")


def payload(delivery_id: str, user_id: str, task_id: int, prize_type: str, won_at: float, channel: str, attempt: int) -> bytes:
    """Return a delivery's JSON body. delivery_id is the won claim's id: one delivery per win."""
    return orjson.dumps({"delivery_id": delivery_id, "claim_id": delivery_id, "user_id": user_id, "task_id": task_id,
                         "prize_type": prize_type, "won_at": won_at, "channel": channel, "attempt": attempt})


@dataclass(frozen=True, slots=True)
class Answer:
    """What a partner's answer means. kind: delivered, parked, failed, retry, or slow (retry and slow down)."""

    kind: str
    detail: str  # the partner's reference for delivered; what went wrong otherwise
    retry_after_s: float | None = None


def _status_of(raw: bytes) -> tuple[str | None, str | None]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    status, reference = body.get("status"), body.get("reference")
    good_reference = isinstance(reference, str) and 0 < len(reference) <= 128
    return (status if isinstance(status, str) else None), (reference if good_reference else None)


def retry_after(value: str | None) -> float | None:
    """Return a Retry-After header's seconds (capped), or None for none, an HTTP date or no number (the backoff then)."""
    try:
        seconds = float(value) if value else math.nan
    except ValueError:
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S) if math.isfinite(seconds) else None


def classify(status: int, raw: bytes | None, retry_after_header: str | None = None) -> Answer:
    """Return what an answer means. raw None: the body was larger than MAX_ANSWER_BYTES. Only a well-formed
    delivered or already_delivered with a reference marks a delivery delivered."""
    said, reference = _status_of(raw) if raw is not None else (None, None)
    if 200 <= status < 300:
        if said in ("delivered", "already_delivered") and reference:
            return Answer("delivered", reference)
        return Answer("retry", f"HTTP {status} without a delivered status and reference")
    if status == 409 and said == "already_delivered" and reference:
        return Answer("delivered", reference)
    if status == 409 and said == "no_account":
        return Answer("parked", "no_account: the player has no account with the partner yet")
    if status in (429, 503):
        return Answer("slow", f"HTTP {status}: the partner asks to slow down", retry_after(retry_after_header))
    if status in CHANNEL_TROUBLE:
        return Answer("slow", f"HTTP {status}: the channel's signature, secret or route is refused", None)
    if 400 <= status < 500:
        return Answer("failed", f"HTTP {status} {(said or '')[:60]}".strip())
    return Answer("retry", f"HTTP {status}")


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Return the wait before attempt `attempt + 1`: exponential from BACKOFF_BASE_S, capped, with full jitter above
    half (no lockstep retries)."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(attempt - 1, 20))
    return float(ceiling * rng.uniform(0.5, 1.0))
