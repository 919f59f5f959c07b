"""The small record kinds (districts, exclusion zones, tasks, prizes): parsing and validation.

Every parser takes one source row as a mapping and returns a frozen record or raises FieldError;
the caller adds the source and row to make a RowError. Rows come from CSV (all strings) or from
MySQL (typed values), so each field parser accepts both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import shapely
from shapely.geometry.base import BaseGeometry

from geo_service.snapshot.format import MAX_RATE_PER_S, MAX_STAGGER_GROUPS, MAX_STAGGER_S

Row = Mapping[str, Any]
_INT_RE = re.compile(r"\s*[-+]?\d{1,18}\s*")


class FieldError(ValueError):
    """A field of a row that does not parse or breaks a rule."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class District:
    code: int
    name: str
    parent_code: int | None
    geometry: BaseGeometry


@dataclass(frozen=True, slots=True)
class Zone:
    zone_id: str
    reason: str
    geometry: BaseGeometry


DEFAULT_STAGGER_GROUPS = 5  # the published design's groups, their rounds opening minutes apart


@dataclass(frozen=True, slots=True)
class Task:
    task_id: int
    name: str
    district_code: int
    poi_set_id: int
    starts_at: int
    ends_at: int
    enabled: bool
    stagger_s: int = 0
    stagger_groups: int = 1


@dataclass(frozen=True, slots=True)
class Prize:
    task_id: int
    prize_type: str
    quota: int
    weight: float
    rate_per_s: float | None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_int(row: Row, field: str, lo: int = -(2**63), hi: int = 2**63 - 1) -> int:
    """Return an integer field within [lo, hi]."""
    value = row.get(field)
    if _missing(value):
        raise FieldError(field, "missing")
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, str) and _INT_RE.fullmatch(value)):
            raise FieldError(field, f"not an integer ({str(value)[:40]!r})")
        value = int(value)
    if not lo <= value <= hi:
        raise FieldError(field, f"{value} is outside [{lo}, {hi}]")
    return value


def parse_number(row: Row, field: str, lo: float, hi: float = math.inf) -> float:
    """Return a finite number field within [lo, hi]."""
    value = row.get(field)
    if _missing(value):
        raise FieldError(field, "missing")
    try:
        number = float(value)  # type: ignore[arg-type]  # whatever float() refuses is reported below
    except (TypeError, ValueError):
        raise FieldError(field, f"not a number ({str(value)[:40]!r})") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise FieldError(field, f"{value!r} is outside [{lo}, {hi}]")
    return number


def parse_text(row: Row, field: str) -> str:
    value = row.get(field)
    if _missing(value):
        raise FieldError(field, "missing")
    return str(value).strip()


def parse_time(row: Row, field: str) -> int:
    """Return epoch seconds from ISO-8601 with a zone, epoch seconds, or a MySQL DATETIME (UTC)."""
    value = row.get(field)
    if _missing(value):
        raise FieldError(field, "missing")
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp())
    if isinstance(value, int) or (isinstance(value, str) and _INT_RE.fullmatch(value)):
        return parse_int(row, field, 0, 2**40)
    try:
        moment = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise FieldError(field, f"not ISO-8601 or epoch seconds ({str(value)[:40]!r})") from None
    if moment.tzinfo is None:
        raise FieldError(field, f"ISO-8601 time without a zone ({value!r}); add Z or +08:00")
    return int(moment.timestamp())


def parse_geometry(value: Any, field: str = "geometry") -> BaseGeometry:
    """Return a valid WGS84 Polygon or MultiPolygon from a GeoJSON dict or text."""
    if _missing(value):
        raise FieldError(field, "missing")
    try:
        text = value if isinstance(value, str | bytes) else orjson.dumps(value)
        geom = shapely.from_geojson(text)
    except (shapely.errors.GEOSException, orjson.JSONEncodeError, ValueError, TypeError) as exc:
        raise FieldError(field, f"not a GeoJSON geometry ({str(exc)[:80]})") from None
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise FieldError(field, f"{geom.geom_type}, expected Polygon or MultiPolygon")
    if geom.is_empty:
        raise FieldError(field, "empty polygon")
    if not shapely.is_valid(geom):
        raise FieldError(field, f"invalid polygon: {shapely.is_valid_reason(geom)}")
    x0, y0, x1, y1 = geom.bounds
    if x0 < -180 or x1 > 180 or y0 < -90 or y1 > 90:
        raise FieldError(field, f"coordinates outside lng [-180, 180] / lat [-90, 90]: bounds {geom.bounds}")
    return geom


def parse_district(row: Row, geometry: Any) -> District:
    parent = None if _missing(row.get("parent_code")) else parse_int(row, "parent_code", 100000, 999999)
    return District(parse_int(row, "code", 100000, 999999), parse_text(row, "name"), parent, parse_geometry(geometry))


def parse_zone(row: Row, geometry: Any) -> Zone:
    reason = "" if _missing(row.get("reason")) else str(row["reason"]).strip()
    return Zone(parse_text(row, "id"), reason, parse_geometry(geometry))


def parse_enabled(row: Row) -> bool:
    value = row.get("enabled")
    if _missing(value):
        return True
    text = str(int(value)) if isinstance(value, int) else str(value).strip()
    if text not in ("0", "1"):
        raise FieldError("enabled", f"must be 0 or 1 ({text[:40]!r})")
    return text == "1"


def parse_task(row: Row) -> Task:
    task = Task(
        task_id=parse_int(row, "task_id", 1),
        name=parse_text(row, "name"),
        district_code=parse_int(row, "district_code", 100000, 999999),
        poi_set_id=parse_int(row, "poi_set_id"),
        starts_at=parse_time(row, "starts_at"),
        ends_at=parse_time(row, "ends_at"),
        enabled=parse_enabled(row),
        **parse_stagger(row),
    )
    if task.ends_at <= task.starts_at:
        raise FieldError("ends_at", f"ends at {task.ends_at}, not after it starts at {task.starts_at}")
    last_opens = task.starts_at + (task.stagger_groups - 1) * task.stagger_s
    if last_opens >= task.ends_at:
        raise FieldError("stagger_s", f"the last of {task.stagger_groups} groups would open at {last_opens}, not before "
                                      f"the task ends at {task.ends_at}")
    return task


def parse_stagger(row: Row) -> dict[str, int]:
    """Return a task's staggered openings: stagger_s between successive player groups (empty or 0: none), in
    stagger_groups groups (empty: DEFAULT_STAGGER_GROUPS when staggered)."""
    step = 0 if _missing(row.get("stagger_s")) else parse_int(row, "stagger_s", 0, MAX_STAGGER_S)
    if _missing(row.get("stagger_groups")):
        return {"stagger_s": step, "stagger_groups": DEFAULT_STAGGER_GROUPS if step else 1}
    return {"stagger_s": step, "stagger_groups": parse_int(row, "stagger_groups", 1, MAX_STAGGER_GROUPS)}


def parse_prize(row: Row) -> Prize:
    rate = None if _missing(row.get("rate_per_s")) else parse_number(row, "rate_per_s", 0.0, MAX_RATE_PER_S)
    prize_type = parse_text(row, "prize_type")
    if not prize_type.isprintable():  # a tab or newline would split the ledger's records of it (Redis keeps text)
        raise FieldError("prize_type", f"control characters in {prize_type[:40]!r}")
    return Prize(
        task_id=parse_int(row, "task_id", 1),
        prize_type=prize_type,
        quota=parse_int(row, "quota", 0),
        weight=parse_number(row, "weight", 0.0),
        rate_per_s=rate,
    )
