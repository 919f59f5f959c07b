"""POIs stay columnar: chunks of arrow columns are validated into numpy arrays, never row objects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from geo_service.snapshot.grid import MAX_ABS_LAT, position_mask
from loaders.errors import ErrorLog, RowError

POI_FIELDS = ("poi_id", "poi_set_id", "lat", "lng")
_INT_PATTERN = r"^[-+]?\d{1,18}$"
_FLOAT_PATTERN = r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$"
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class PoiChunk:
    """A slice of the POI stream: arrow columns (strings from files, numbers from MySQL)."""

    source: str
    first_row: int
    columns: dict[str, pa.Array]

    def __len__(self) -> int:
        return len(self.columns["poi_id"])


@dataclass(frozen=True, slots=True)
class PoiColumns:
    """Validated POIs: one numpy array per field plus each POI's row in its source."""

    poi_id: npt.NDArray[np.int64]
    poi_set_id: npt.NDArray[np.int64]
    lat: npt.NDArray[np.float64]
    lng: npt.NDArray[np.float64]
    row: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.poi_id)

    def take(self, keep: Mask | npt.NDArray[np.int64]) -> PoiColumns:
        return PoiColumns(self.poi_id[keep], self.poi_set_id[keep], self.lat[keep], self.lng[keep], self.row[keep])

    @classmethod
    def concat(cls, parts: list[PoiColumns]) -> PoiColumns:
        if not parts:
            empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float64)
            return cls(empty_i, empty_i, empty_f, empty_f, empty_i)
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__slots__))


def _numeric(arr: pa.Array, integer: bool) -> tuple[np.ndarray, Mask]:
    target = pa.int64() if integer else pa.float64()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        trimmed = pc.utf8_trim_whitespace(arr)
        valid = pc.fill_null(pc.match_substring_regex(trimmed, _INT_PATTERN if integer else _FLOAT_PATTERN), False)
        cells = pc.if_else(valid, trimmed, "0")
        try:
            values = pc.cast(cells, target)
        except pa.ArrowInvalid:  # "+2" passes the pattern but not arrow's integer cast: only then a second pass
            values = pc.cast(pc.utf8_ltrim(cells, "+"), target)
    else:
        valid = arr.is_valid()
        values = pc.cast(pc.fill_null(arr, 0), target)
    return values.to_numpy(zero_copy_only=False), valid.to_numpy(zero_copy_only=False)


def _reason(template: str, value: object) -> str:
    return "missing" if value is None else template.format(value=value)


def _report(chunk: PoiChunk, bad: Mask, field: str, reason: str, errors: ErrorLog) -> None:
    column = chunk.columns[field]
    where = np.flatnonzero(bad)
    first = [
        RowError(chunk.source, chunk.first_row + i, field, _reason(reason, column[i].as_py()))
        for i in where[: max(errors.room, 0)].tolist()
    ]
    errors.add_many(first, len(where))


def parse_poi_chunk(chunk: PoiChunk, errors: ErrorLog) -> PoiColumns:
    """Return the chunk's valid POIs; every invalid field goes to `errors` with its row."""
    missing = [f for f in POI_FIELDS if f not in chunk.columns]
    if missing:
        raise KeyError(missing)
    poi_id, id_ok = _numeric(chunk.columns["poi_id"], integer=True)
    set_id, set_ok = _numeric(chunk.columns["poi_set_id"], integer=True)
    lat, lat_num = _numeric(chunk.columns["lat"], integer=False)
    lng, lng_num = _numeric(chunk.columns["lng"], integer=False)
    lat_ok, lng_ok = position_mask(lat, lng)
    checks = [
        (~id_ok, "poi_id", "not an integer ({value!r})"),
        (~set_ok, "poi_set_id", "not an integer ({value!r})"),
        (~lat_num, "lat", "not a number ({value!r})"),
        (lat_num & ~lat_ok, "lat", f"{{value}} is outside the served band [-{MAX_ABS_LAT}, {MAX_ABS_LAT}]"),
        (~lng_num, "lng", "not a number ({value!r})"),
        (lng_num & ~lng_ok, "lng", "{value} is outside [-180, 180]"),
    ]
    good = id_ok & set_ok & lat_num & lat_ok & lng_num & lng_ok
    for bad, field, reason in checks:
        if bad.any():
            _report(chunk, bad, field, reason, errors)
    rows = np.arange(chunk.first_row, chunk.first_row + len(chunk), dtype=np.int64)
    return PoiColumns(poi_id, set_id, lat, lng, rows).take(good)
