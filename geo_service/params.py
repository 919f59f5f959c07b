"""Query parameters to typed values, or InvalidParam/MissingParam naming the field."""

from __future__ import annotations

import math

from multidict import MultiMapping

from geo_service.errors import InvalidParam, MissingParam
from geo_service.grid import GridError, check_position


def one_value(query: MultiMapping[str], name: str) -> str:
    """Return the single value of a parameter; absent or repeated is an error."""
    values = query.getall(name, [])
    if not values:
        raise MissingParam(f"{name} is required", field=name)
    if len(values) > 1:
        raise InvalidParam(f"{name} is given {len(values)} times; give it once", field=name)
    return values[0]


def coordinate(query: MultiMapping[str], name: str, lo: float, hi: float) -> float:
    text = one_value(query, name).strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidParam(f"{name} must be a number in [{lo:g}, {hi:g}]; got {text[:40]!r}", field=name)
    return value


def position(query: MultiMapping[str]) -> tuple[float, float]:
    """Return (lat, lng) from the query, checked against the grid's served band."""
    lat = coordinate(query, "lat", -90.0, 90.0)
    lng = coordinate(query, "lng", -180.0, 180.0)
    try:
        check_position(lat, lng)
    except GridError as exc:
        raise InvalidParam(f"{exc.field} {exc.reason}", field=exc.field) from None
    return lat, lng
