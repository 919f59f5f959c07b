"""Query parameters and JSON bodies to typed values, or InvalidParam/MissingParam naming the field."""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Callable
from typing import Any

import orjson
from multidict import MultiMapping

from geo_service.snapshot.grid import MAX_ABS_LNG, GridError, check_position, in_band
from geo_service.web.errors import InvalidJson, InvalidParam, MissingParam, Unauthorized

# The query every map client sends. Matching it whole is a third of the cost of parsing a query
# into a multidict; any other form, valid or not, goes to the general parser and its errors.
_PLAIN_POSITION = re.compile(r"lat=(-?[0-9]{1,3}(?:\.[0-9]{1,15})?)&lng=(-?[0-9]{1,3}(?:\.[0-9]{1,15})?)")


def one_value(query: MultiMapping[str], name: str) -> str:
    """Return the single value of a parameter; absent or repeated is an error."""
    values = query.getall(name, [])
    if not values:
        raise MissingParam(f"{name} is required", field=name)
    if len(values) > 1:
        raise InvalidParam(f"{name} is given {len(values)} times; give it once", field=name)
    return values[0]


def number_in_range(name: str, value: float, shown: object, lo: float, hi: float) -> float:
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidParam(f"{name} must be a number in [{lo:g}, {hi:g}]; got {str(shown)[:40]!r}", field=name)
    return value


def coordinate(query: MultiMapping[str], name: str, lo: float, hi: float) -> float:
    text = one_value(query, name).strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    return number_in_range(name, value, text, lo, hi)


def served_position(lat: float, lng: float) -> tuple[float, float]:
    """Return (lat, lng) if it lies in the grid's served band, else InvalidParam naming the field."""
    try:
        check_position(lat, lng)
    except GridError as exc:
        raise InvalidParam(f"{exc.field} {exc.reason}", field=exc.field) from None
    return lat, lng


def position(query: MultiMapping[str]) -> tuple[float, float]:
    """Return (lat, lng) from the query, checked against the grid's served band."""
    return served_position(coordinate(query, "lat", -90.0, 90.0), coordinate(query, "lng", -MAX_ABS_LNG, MAX_ABS_LNG))


def request_position(query_string: str, query: Callable[[], MultiMapping[str]]) -> tuple[float, float]:
    """Return (lat, lng) of a request: `lat=..&lng=..` of plain decimals in the served band directly,
    any other query through position() on the parsed query."""
    plain = _PLAIN_POSITION.fullmatch(query_string)
    if plain is not None:
        lat, lng = float(plain[1]), float(plain[2])
        if in_band(lat, lng):
            return lat, lng
    return position(query())


def id_param(text: str, field: str, max_digits: int = 18) -> int:
    """Return a whole number given in a path or a query (an id, a code, a limit): ASCII decimal digits, at most
    max_digits of them. The one parser of both services: str.isdigit() alone also takes "²" and other Unicode
    digits, which int() then refuses (a 500), and an unbounded one takes numbers past int64."""
    if not (0 < len(text) <= max_digits and text.isascii() and text.isdigit()):
        raise InvalidParam(f"{field} must be a whole number of at most {max_digits} ASCII digits; got {text[:40]!r}",
                           field=field)
    return int(text)


CLAIM_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def claim_id_param(text: str) -> str:
    """Return a claim id (the client's idempotency key, also a delivery's id) or raise InvalidParam."""
    if not CLAIM_ID_RE.fullmatch(text):
        raise InvalidParam("claim_id must be 1-64 characters of A-Z a-z 0-9 _ . : -", field="claim_id")
    return text


def cell_param(text: str) -> int:
    """Return a cell id given in a path: a decimal integer of at most 19 digits."""
    return id_param(text, "cell", 19)


def require_admin(authorization: str, token: str, what: str) -> None:
    """Check an admin route's Authorization header against the configured token. With none configured the
    route is off: no token can pass, and the answer says so (401 all the same, as the contract promises)."""
    if not token:
        raise Unauthorized(f"{what} is off: no admin_token is configured")
    # surrogateescape: a header's stray byte (aiohttp decodes it so) compares unequal instead of raising.
    if not hmac.compare_digest(authorization.encode(errors="surrogateescape"), f"Bearer {token}".encode()):
        raise Unauthorized(f"{what} needs Authorization: Bearer <admin_token>")


def json_object(raw: bytes) -> dict[str, Any]:
    """Return a request body that must be one JSON object."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidJson("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidJson("the body must be a JSON object")
    return body


def field_of(body: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    if name not in body:
        raise MissingParam(f"{name} is required", field=name)
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise InvalidParam(f"{name} must be {what}; got {type(value).__name__}", field=name)
    return value


def integer_of(body: dict[str, Any], name: str) -> int:
    """Return a field that must be a whole number: 5 and 5.0 alike (JSON Schema's integer), within int64."""
    value = field_of(body, name, (int, float), "an integer")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidParam(f"{name} must be an integer; got {value!r}", field=name)
    if not -(2**63) <= value < 2**63:
        raise InvalidParam(f"{name} must fit in 64 bits", field=name)
    return int(value)
