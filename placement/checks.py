"""A draft task, its prizes and its points checked by the build's own validators (loaders.records, loaders.pois,
loaders.screening): the console shows what the build would say, by field and row, before anything is saved."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from delivery.channels import Channels
from loaders.errors import ErrorLog
from loaders.mysql_import import WIDTHS
from loaders.pois import POI_FIELDS, PoiChunk, PoiColumns, parse_poi_chunk
from loaders.records import District, FieldError, Prize, Task, Zone, parse_prize, parse_task, parse_zone
from loaders.screening import inside, zone_index

MAX_PROBLEMS = 200  # problems listed (all are counted): enough to fix a file by, not a second copy of it
MAX_PRIZES = 50  # prize types of one task
TASK_FIELDS = ("name", "district_code", "starts_at", "ends_at", "enabled", "stagger_s", "stagger_groups")
PRIZE_FIELDS = ("prize_type", "quota", "weight", "rate_per_s")


@dataclass(slots=True)
class Problems:
    """What is wrong, as {row, field, reason}: the row names the part of the request or the file's line."""

    listed: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0

    def add(self, row: str, field_name: str, reason: str) -> None:
        self.count += 1
        if len(self.listed) < MAX_PROBLEMS:
            self.listed.append({"row": row, "field": field_name, "reason": reason})

    def add_rows(self, log: ErrorLog, label: str) -> None:
        for e in sorted(log.shown, key=lambda e: e.row):
            self.add(f"{label} {e.row}", e.field, e.reason)
        self.count += log.count - len(log.shown)


def _width(problems: Problems, row: str, values: Mapping[str, Any], kind: str) -> None:
    for name, width in WIDTHS[kind].items():  # type: ignore[index]
        text = str(values.get(name) or "").strip()
        if len(text) > width:
            problems.add(row, name, f"{len(text)} characters; the source column holds {width}")


def _scalars(where: str, values: Mapping[str, Any], names: tuple[str, ...], problems: Problems) -> bool:
    """Whether every field is what a CSV cell or a MySQL column can hold: text, a number, a boolean or nothing."""
    bad = [n for n in names if isinstance(values.get(n), dict | list)]
    for name in bad:
        problems.add(where, name, "must be text, a number or a boolean")
    return not bad


def check_task(fields: Mapping[str, Any], districts: Mapping[int, District], problems: Problems) -> Task | None:
    """Return the task the fields make (task_id and poi_set_id are the store's), or None with its problems."""
    if not _scalars("task", fields, TASK_FIELDS, problems):
        return None
    row = {**{k: _text(fields.get(k)) for k in TASK_FIELDS}, "task_id": 1, "poi_set_id": 1}
    _width(problems, "task", row, "tasks")
    try:
        task = parse_task(row)
    except FieldError as exc:
        problems.add("task", exc.field, exc.reason)
        return None
    if task.district_code not in districts:
        problems.add("task", "district_code", f"unknown district {task.district_code}")
        return None
    return task


def check_prizes(items: Sequence[Any], channels: Channels | None, problems: Problems) -> list[Prize]:
    """Return the prizes that parse; each bad one adds its problem (row: prizes[i])."""
    prizes, seen = [], set()
    if len(items) > MAX_PRIZES:
        problems.add("prizes", "prizes", f"{len(items)} prizes; a task has at most {MAX_PRIZES}")
        return []
    for i, item in enumerate(items):
        where = f"prizes[{i}]"
        if not isinstance(item, Mapping):
            problems.add(where, "prize_type", "each prize must be an object")
            continue
        if not _scalars(where, item, PRIZE_FIELDS, problems):
            continue
        row = {**{k: _text(item.get(k)) for k in PRIZE_FIELDS}, "task_id": 1}
        _width(problems, where, row, "prizes")
        try:
            prize = parse_prize(row)
        except FieldError as exc:
            problems.add(where, exc.field, exc.reason)
            continue
        if prize.prize_type in seen:
            problems.add(where, "prize_type", f"duplicate {prize.prize_type!r}")
        elif channels is not None and channels.of_prize(prize.prize_type) is None:
            problems.add(where, "prize_type", f"no delivery channel delivers prize type {prize.prize_type!r}")
        seen.add(prize.prize_type)
        prizes.append(prize)
    return prizes


def check_zone(zone_id: str, fields: Mapping[str, Any], problems: Problems) -> Zone | None:
    if not _scalars("zone", fields, ("reason",), problems):
        return None
    row = {"id": zone_id, "reason": _text(fields.get("reason"))}
    _width(problems, "zone", row, "zones")
    try:
        return parse_zone(row, fields.get("geometry"))
    except FieldError as exc:
        problems.add("zone", exc.field, exc.reason)
        return None


def _text(value: Any) -> Any:
    """A JSON value as the loaders' parsers take a CSV cell: booleans as 0/1, null as missing."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return value


def _chunk(label: str, first_row: int, rows: Sequence[Mapping[str, Any]]) -> PoiChunk:
    """A PoiChunk of string cells, as a data folder's file gives them; a set's id is the store's (1 here)."""
    def cells(name: str) -> pa.Array:
        if name == "poi_set_id":
            return pa.array(["1"] * len(rows), pa.string())
        values = [r.get(name) for r in rows]
        return pa.array([None if v is None or v == "" else str(v) for v in values], pa.string())
    return PoiChunk(label, first_row, {f: cells(f) for f in POI_FIELDS})


def check_points(label: str, first_row: int, rows: Sequence[Mapping[str, Any]], problems: Problems) -> PoiColumns:
    """Return the points that parse (poi_id 0 where none is given: the store allocates one); bad ones are problems
    at `label` + their row."""
    filled = [{**r, "poi_id": r.get("poi_id") if r.get("poi_id") not in (None, "") else "0"} for r in rows]
    log = ErrorLog(MAX_PROBLEMS)
    columns = parse_poi_chunk(_chunk(label, first_row, filled), log)
    problems.add_rows(log, label)
    ids = columns.poi_id[columns.poi_id != 0]
    unique, counts = np.unique(ids, return_counts=True)
    for poi_id in unique[counts > 1][:10].tolist():
        problems.add(label, "poi_id", f"duplicate poi_id {poi_id}")
    return columns


def points_of_body(value: Any, problems: Problems) -> list[dict[str, Any]]:
    """The `points` of a save: a list of {lat, lng, poi_id?} objects."""
    if not isinstance(value, list) or not all(isinstance(p, Mapping) for p in value):
        problems.add("points", "points", "must be a list of {lat, lng, poi_id} objects")
        return []
    return [dict(p) for p in value]


def upload_rows(body: bytes, kind: str, problems: Problems) -> tuple[str, int, list[dict[str, Any]]]:
    """Return (label, first row, rows of lat/lng/poi_id) from an uploaded CSV (header lat,lng[,poi_id]; rows are its
    lines) or GeoJSON FeatureCollection of Points (rows are its features, from 1)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.add("file", "file", f"not UTF-8 text (byte {exc.start})")
        return "line", 2, []
    if kind == "geojson":
        return "feature", 1, _geojson_points(text, problems)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = {"lat", "lng"} - set(reader.fieldnames or ())
        if missing:
            problems.add("line 1", "header", f"needs columns lat and lng (optional poi_id); missing {', '.join(sorted(missing))}")
            return "line", 2, []
        rows = [{"lat": r.get("lat"), "lng": r.get("lng"), "poi_id": r.get("poi_id")} for r in reader]
    except csv.Error as exc:  # a field past the csv module's limit, a NUL byte
        problems.add(f"line {reader.line_num}", "file", f"not readable as CSV: {exc}")
        return "line", 2, []
    return "line", 2, rows


def _geojson_points(text: str, problems: Problems) -> list[dict[str, Any]]:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        problems.add("file", "file", f"not JSON: {exc}")
        return []
    features = doc.get("features") if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else None
    if not isinstance(features, list):
        problems.add("file", "file", "not a GeoJSON FeatureCollection")
        return []
    rows: list[dict[str, Any]] = []
    for feature in features:
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        coords = geometry.get("coordinates") if isinstance(geometry, dict) and geometry.get("type") == "Point" else None
        props = feature.get("properties") if isinstance(feature, dict) else None
        poi_id = props.get("poi_id") if isinstance(props, dict) else None
        if isinstance(coords, list) and len(coords) >= 2:
            rows.append({"lat": coords[1], "lng": coords[0], "poi_id": poi_id})
        else:  # its lat and lng are then reported missing, at its feature number
            rows.append({"lat": None, "lng": None, "poi_id": poi_id})
    return rows


def screen(columns: PoiColumns, zones: list[Zone], district: District | None) -> dict[str, Any]:
    """What screening would do to the points: the zone that drops each (or null) and whether it lies outside the
    task's district (kept, and counted in the build's report)."""
    which = zone_index(zones, columns.lat, columns.lng)
    outside = ~inside(district.geometry, columns.lat, columns.lng) if district else np.zeros(len(columns), np.bool_)
    dropped = np.bincount(which + 1, minlength=len(zones) + 1)[1:]
    return {"zone": [zones[i].zone_id if i >= 0 else None for i in which.tolist()], "outside": outside.tolist(),
            "dropped_by_zone": {z.zone_id: n for z, n in zip(zones, dropped.tolist()) if n},
            "outside_count": int(outside.sum())}

