"""The pure nearby lookup: snapshot + task status + position -> the window's active POIs and tasks.

Nothing here knows HTTP. The per-request path is the window arithmetic, one compiled pass that
binary-searches the window's id ranges and keeps the rows of the window whose task is active,
then three gathers for the payload. Task status is precomputed into a flag per task whenever it
changes, so the filter is one index per row.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
import orjson

from geo_service.nearby.encoder import Table, address, array_at, float_at, float_bits
from geo_service.snapshot import Snapshot
from geo_service.snapshot.grid import SquareGrid, Window, cells_in, span_cells, square_window

NEVER = 2**62
# One cell id in every COARSE_STRIDE (a 4 KiB page of them) is copied into a small index that stays
# in cache: a binary search then misses on one page of the large array, not on a dozen.
COARSE_STRIDE = 512
# Slots of a Lookup's address table (see native.py): grid numbers, then arrays.
_AT_BAND_ROWS, _AT_SEQ, _AT_RADIUS, _AT_ROW_HEIGHT, _AT_MAX_COLS = range(5)
_AT_BAND_COLS = 5  # address, size
_AT_ROWS = 7  # the length of every row array below
_AT_CELLS, _AT_TASK_INDEX, _AT_POI_IDS, _AT_LATS, _AT_LNGS = range(8, 13)  # addresses
_AT_COARSE, _AT_TASK_IDS, _AT_OUT, _AT_TASKS = range(13, 21, 2)  # address, size
_AT_SLOTS = 21
# Slots of a StatusView's address table: each an array's address, then its size.
_ST_ACTIVE, _ST_VIEWS, _ST_OFFSETS = range(0, 6, 2)


def iso_utc(epoch_s: int) -> str:
    """Return epoch seconds as an ISO-8601 UTC string."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


# The answer's shape; a client tells shapes apart by it (1: exact remaining counts, 2: levels).
ANSWER_VERSION = 2


@dataclass(frozen=True, slots=True)
class Levels:
    """What a phone is told of how much of a prize is left: a coarse level, not the count. A count moves
    with every claim anywhere; a level only when it crosses a threshold, so answers and their ETags hold
    while claims land. Exact counts are in the collector's feed."""

    few_below: int = 100
    last_below: int = 10

    def of(self, remaining: int | None) -> str | None:
        """Return `plenty`, `few`, `last` or `none` (None: unknown, without a collector)."""
        if remaining is None:
            return None
        if remaining <= 0:
            return "none"
        if remaining < self.last_below:
            return "last"
        return "few" if remaining < self.few_below else "plenty"


DEFAULT_LEVELS = Levels()


@dataclass(frozen=True, slots=True)
class TaskOverride:
    """What the collector knows of a task beyond the snapshot: the kill switch and what is left."""

    enabled: bool = True
    remaining: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class StatusView:
    """Which tasks are shown, as of a moment: one byte per task, their public views, and a version.

    `version` is a checksum of the content, so every worker computes the same one for the same
    status and ETags agree across workers. `valid_until` is the next start or end of any task
    window: until then the view is exact without recomputing.
    """

    active: npt.NDArray[np.uint8]
    # Every active task's view as JSON, end to end: task i's is views_json[view_offsets[i]:view_offsets[i + 1]]
    # (empty for an inactive task). Encoded once per status, the compiled encoder copies them.
    views_json: npt.NDArray[np.uint8]
    view_offsets: npt.NDArray[np.int64]
    longest_view: int
    version: int
    as_of: int  # the moment it was computed for; it holds from then until valid_until
    valid_until: int
    # The arrays above by address, for the compiled encoder (see native.py), in its _ST_* slots.
    addresses: Table = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", np.array(
            [address(self.active), self.active.size, address(self.views_json), self.views_json.size,
             address(self.view_offsets), self.view_offsets.size], np.int64))

    def view(self, task: int) -> dict[str, Any] | None:
        """Return task position `task`'s public view (None unless active)."""
        lo, hi = self.view_offsets[task], self.view_offsets[task + 1]
        return orjson.loads(self.views_json[lo:hi].tobytes()) if hi > lo else None


@dataclass(frozen=True, slots=True)
class TaskTable:
    """The snapshot's tasks as arrays, for computing status views."""

    tasks: list[dict[str, Any]]
    levels: Levels = DEFAULT_LEVELS
    starts_at: npt.NDArray[np.int64] = field(init=False)
    ends_at: npt.NDArray[np.int64] = field(init=False)
    enabled: npt.NDArray[np.bool_] = field(init=False)
    # Each task's last encoded view and the levels it shows: a new status re-encodes only the tasks
    # whose levels changed (the collector reports every task each tick).
    _encoded: dict[int, tuple[tuple[str | None, ...], bytes]] = field(
        init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts_at", np.array([t["starts_at"] for t in self.tasks], dtype=np.int64))
        object.__setattr__(self, "ends_at", np.array([t["ends_at"] for t in self.tasks], dtype=np.int64))
        object.__setattr__(self, "enabled", np.array([t["enabled"] for t in self.tasks], dtype=np.bool_))

    def status(self, now_s: int, overrides: Mapping[int, TaskOverride] | None = None) -> StatusView:
        """Return the status view at now_s: enabled, inside the time window, and not exhausted."""
        overrides = overrides or {}
        active = self.enabled & (self.starts_at <= now_s) & (now_s < self.ends_at)
        views: list[bytes] = []
        for i, task in enumerate(self.tasks):
            override = overrides.get(task["task_id"])
            if override is not None and active[i]:
                exhausted = override.remaining is not None and not any(v > 0 for v in override.remaining.values())
                active[i] = override.enabled and not exhausted
            views.append(self._view_json(i, override) if active[i] else b"")
        future = np.concatenate([self.starts_at[self.starts_at > now_s], self.ends_at[self.ends_at > now_s]])
        lengths = np.fromiter(map(len, views), dtype=np.int64, count=len(views))
        offsets = np.zeros(len(views) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        blob = b"".join(views)
        flags = active.astype(np.uint8)
        return StatusView(flags, np.frombuffer(blob, dtype=np.uint8), offsets, int(lengths.max(initial=0)),
                          zlib.crc32(blob, zlib.crc32(flags.tobytes())), now_s,
                          int(future.min()) if len(future) else NEVER)

    def _view_json(self, i: int, override: TaskOverride | None) -> bytes:
        task = self.tasks[i]
        remaining = override.remaining if override is not None and override.remaining is not None else {}
        levels = tuple(self.levels.of(remaining.get(p["prize_type"])) for p in task["prizes"])
        cached = self._encoded.get(i)
        if cached is not None and cached[0] == levels:
            return cached[1]
        data = orjson.dumps(_task_view(task, levels))
        self._encoded[i] = (levels, data)
        return data


def _task_view(task: dict[str, Any], levels: tuple[str | None, ...]) -> dict[str, Any]:
    return {
        "task_id": task["task_id"],
        "name": task["name"],
        "district_code": task["district_code"],
        "status": "active",
        "ends_at": iso_utc(task["ends_at"]),
        "prizes": [{"prize_type": p["prize_type"], "level": level} for p, level in zip(task["prizes"], levels)],
    }


Row = tuple[int, int, float, float]  # (task_index, poi_id, lat, lng)


@dataclass(frozen=True, slots=True)
class NearbyResult:
    """What a lookup found: the window, the rows of active tasks in it, and whether the cap cut them.

    Row i is ids[i] = [task_index, poi_id] and coords[i] = [lat, lng].
    """

    window: Window
    ids: list[list[int]]
    coords: list[list[float]]
    truncated: bool


class Lookup:
    """A snapshot prepared for lookups: its arrays, its task table, and task ids by row position."""

    def __init__(self, snapshot: Snapshot, levels: Levels = DEFAULT_LEVELS) -> None:
        self.snapshot = snapshot
        self.seq = snapshot.seq
        self.grid = snapshot.grid
        self.table = TaskTable(snapshot.tasks, levels)
        self.task_ids = [t["task_id"] for t in snapshot.tasks]
        self.task_id_array = np.array(self.task_ids, dtype=np.int64)
        # The most a window holds, on either grid: a square window takes up to two more columns in a band
        # whose column count differs from its centre's.
        self.window_cells = (2 * self.grid.radius + 1) * (2 * self.grid.radius + 3)
        # A square grid's window is computed inside the encoder's compiled call: one call a request.
        self.square = self.grid if isinstance(self.grid, SquareGrid) else None
        self.task_position = {task_id: i for i, task_id in enumerate(self.task_ids)}
        self.coarse = np.ascontiguousarray(snapshot.cells[::COARSE_STRIDE])
        # GET /v1/grid's body, ready: a client computes cell ids from it (a 100 m grid's column counts
        # are ~170 KB of JSON, ~65 KB gzipped).
        self.grid_json = orjson.dumps({"seq": self.seq, **self.grid.client_params()})
        self.grid_gzip = gzip.compress(self.grid_json, mtime=0)
        self.grid_tag = zlib.crc32(self.grid_json)
        self._out = np.empty(0, np.uint8)
        self._rows = np.empty(0, np.int64)
        self.addresses = self._addresses()

    def _addresses(self) -> Table:
        """The lookup's arrays and grid numbers for the compiled encoder, in its _AT_* slots."""
        snap, square = self.snapshot, self.square
        table = np.zeros(_AT_SLOTS, np.int64)
        table[_AT_BAND_ROWS], table[_AT_SEQ], table[_AT_RADIUS] = self.grid.band_rows, self.seq, self.grid.radius
        if square is not None:
            table[_AT_ROW_HEIGHT], table[_AT_MAX_COLS] = float_bits(square.row_height_deg), square.max_cols
            table[_AT_BAND_COLS], table[_AT_BAND_COLS + 1] = address(square.band_cols), square.band_cols.size
        table[_AT_ROWS] = snap.cells.size
        rows: list[tuple[int, npt.NDArray[Any]]] = [(_AT_CELLS, snap.cells), (_AT_TASK_INDEX, snap.task_index),
                                                    (_AT_POI_IDS, snap.poi_ids), (_AT_LATS, snap.lats), (_AT_LNGS, snap.lngs)]
        for slot, array in rows:
            table[slot] = address(array)
        sized: list[tuple[int, npt.NDArray[Any]]] = [(_AT_COARSE, self.coarse), (_AT_TASK_IDS, self.task_id_array),
                                                     (_AT_OUT, self._out), (_AT_TASKS, self._rows)]
        for slot, array in sized:
            table[slot], table[slot + 1] = address(array), array.size
        return table

    def scratch(self, size: int, rows: int) -> npt.NDArray[np.uint8]:
        """Make sure the encoder's reused buffers hold `size` bytes of output and `rows` task positions,
        and return the output one. Answers are encoded on the event loop and copied out before it runs
        anything else, so one pair serves them all."""
        if self._out.size < size or self._rows.size != rows:
            if self._out.size < size:
                self._out = np.empty(size, np.uint8)
            if self._rows.size != rows:
                self._rows = np.empty(rows, np.int64)
            self.addresses = self._addresses()
        return self._out

    def poi_rows(self, poi_id: int) -> list[Row]:
        """Return every row of a POI (one per task that uses it) by binary search on poi_order."""
        snap = self.snapshot
        ids, order = snap.poi_ids, snap.poi_order
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if ids[order[mid]] < poi_id:
                lo = mid + 1
            else:
                hi = mid
        rows: list[Row] = []
        while lo < len(order) and ids[j := int(order[lo])] == poi_id:
            lat, lng = snap.degrees(j)
            rows.append((int(snap.task_index[j]), poi_id, float(lat), float(lng)))
            lo += 1
        return rows

    def find(self, lat: float, lng: float, status: StatusView, max_pois: int, window: Window | None = None) -> NearbyResult:
        """Return the rows of active tasks in the window around (lat, lng), at most max_pois of them."""
        window = window if window is not None else self.grid.window(lat, lng)
        snap = self.snapshot
        ids, coords, truncated = select_rows(snap.cells, self.coarse, snap.task_index, snap.poi_ids, snap.lats,
                                             snap.lngs, window[1], status.active, self.grid.band_rows, max_pois)
        return NearbyResult(window, ids.tolist(), coords.tolist(), truncated)


@numba.njit(nogil=True, cache=True)
def _first_at_least(cells: npt.NDArray[np.int64], coarse: npt.NDArray[np.int64], cell: int) -> int:  # pragma: no cover
    """Return the first position in `cells` holding `cell` or more, coarse = cells[::COARSE_STRIDE]."""
    k = int(np.searchsorted(coarse, cell))
    # coarse[k - 1] < cell <= coarse[k]: the answer lies in ((k - 1) * stride, k * stride].
    lo, hi = max((k - 1) * COARSE_STRIDE + 1, 0), min(k * COARSE_STRIDE, cells.size)
    return int(lo + np.searchsorted(cells[lo:hi], cell))


@numba.njit(nogil=True, cache=True)
def _select(
    cells: npt.NDArray[np.int64], coarse: npt.NDArray[np.int64], task_index: npt.NDArray[np.int32],
    window: npt.NDArray[np.int64], active: npt.NDArray[np.uint8], band_rows: int, limit: int,
) -> tuple[npt.NDArray[np.int64], bool]:  # pragma: no cover - compiled; exercised through Lookup.find
    """Return the positions of the window's rows whose task is active, at most `limit`, and whether
    more exist. `window` is the grid window's spans: its id ranges then their k spans.

    Compiled because it is the one per-row loop on the request path: CPython spends ~0.3 µs a
    row on this work here, and a window scans a few dozen rows.
    """
    half = window.size // 2
    positions = np.empty(limit, np.int64)
    n = 0
    for i in range(0, half, 2):
        j, end = _first_at_least(cells, coarse, window[i]), window[i + 1]
        k_lo, k_hi = window[half + i], window[half + i + 1]
        # A range holds a few dozen rows: walking to its end costs less than a second search.
        while j < cells.size and cells[j] < end:
            k = cells[j] % band_rows
            if k_lo <= k <= k_hi and active[task_index[j]]:
                if n == limit:
                    return positions[:n], True
                positions[n] = j
                n += 1
            j += 1
    return positions[:n], False


@numba.njit(nogil=True, cache=True)
def select_rows(
    cells: npt.NDArray[np.int64], coarse: npt.NDArray[np.int64], task_index: npt.NDArray[np.int32],
    poi_ids: npt.NDArray[np.int64], lats: npt.NDArray[np.int32], lngs: npt.NDArray[np.int32],
    window: npt.NDArray[np.int64], active: npt.NDArray[np.uint8], band_rows: int, limit: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], bool]:  # pragma: no cover - compiled
    """Return the selected rows as ([task_index, poi_id] rows, [lat, lng] rows) and whether the cap cut them."""
    positions, truncated = _select(cells, coarse, task_index, window, active, band_rows, limit)
    # Two 2-D outputs, not four columns: each array returned costs a boxing and a tolist.
    ids = np.empty((positions.size, 2), np.int64)
    coords = np.empty((positions.size, 2), np.float64)
    for m in range(positions.size):
        j = positions[m]
        ids[m, 0], ids[m, 1] = task_index[j], poi_ids[j]
        coords[m, 0], coords[m, 1] = lats[j] / 1e6, lngs[j] / 1e6  # micro-degrees to degrees (MICRO)
    return ids, coords, truncated


def _ascii(text: str) -> npt.NDArray[np.uint8]:
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()


# The fixed parts of the JSON the compiled encoder writes (numba takes global arrays as constants).
_SEQ, _CENTER = _ascii(f'{{"answer_version":{ANSWER_VERSION},"seq":'), _ascii(',"center_cell":')
_CELLS, _POIS = _ascii(',"cells":['), _ascii('],"pois":[')
_POI_ID, _TASK_ID, _LAT, _LNG = _ascii('{"poi_id":'), _ascii(',"task_id":'), _ascii(',"lat":'), _ascii(',"lng":')
_TASKS, _CUT, _WHOLE = _ascii('],"tasks":['), _ascii('],"truncated":true,'), _ascii('],"truncated":false,')


@numba.njit(nogil=True, cache=True)
def _put(out: npt.NDArray[np.uint8], at: int, text: npt.NDArray[np.uint8]) -> int:  # pragma: no cover - compiled
    out[at : at + text.size] = text
    return at + text.size


@numba.njit(nogil=True, cache=True)
def _put_int(out: npt.NDArray[np.uint8], at: int, value: int) -> int:  # pragma: no cover - compiled
    if value < 0:
        out[at] = 45  # -
        at += 1
        value = -value
    digits = 1
    rest = value
    while rest >= 10:
        rest //= 10
        digits += 1
    for i in range(digits - 1, -1, -1):
        out[at + i] = 48 + value % 10
        value //= 10
    return at + digits


@numba.njit(nogil=True, cache=True)
def _put_micro(out: npt.NDArray[np.uint8], at: int, micro: int) -> int:  # pragma: no cover - compiled
    """Write micro-degrees as a decimal of degrees with at most 6 places and no trailing zeros: what orjson
    writes for the double nearest micro / 10^6 (its shortest round-trip form), but below 1e-4 degree, where
    orjson writes an exponent and this a plain decimal; both read back as that double."""
    if micro < 0:
        out[at] = 45  # -
        at += 1
        micro = -micro
    whole, frac = divmod(micro, 1_000_000)
    at = _put_int(out, at, whole)
    out[at] = 46  # .
    places = 6
    while places > 1 and frac % 10 == 0:
        frac //= 10
        places -= 1
    for i in range(places - 1, -1, -1):
        out[at + 1 + i] = 48 + frac % 10
        frac //= 10
    return at + 1 + places


@numba.njit(nogil=True, cache=True)
def encode_rows(center: int, window: npt.NDArray[np.int64], arrays: Table, status: Table) -> int:  # pragma: no cover
    """Select like select_rows and write the answer into the lookup's output buffer (sized by
    encode_size) as JSON up to the comma after "truncated", with its tasks in order of first row.
    `arrays` is a Lookup's address table, `status` a StatusView's. Return the bytes written.
    """
    rows, band_rows, seq = arrays[_AT_ROWS], arrays[_AT_BAND_ROWS], arrays[_AT_SEQ]
    cells, task_index = array_at(arrays[_AT_CELLS], rows, np.int64), array_at(arrays[_AT_TASK_INDEX], rows, np.int32)
    poi_ids, lats, lngs = (array_at(arrays[_AT_POI_IDS], rows, np.int64), array_at(arrays[_AT_LATS], rows, np.int32),
                           array_at(arrays[_AT_LNGS], rows, np.int32))
    coarse = array_at(arrays[_AT_COARSE], arrays[_AT_COARSE + 1], np.int64)
    task_ids = array_at(arrays[_AT_TASK_IDS], arrays[_AT_TASK_IDS + 1], np.int64)
    out = array_at(arrays[_AT_OUT], arrays[_AT_OUT + 1], np.uint8)
    tasks = array_at(arrays[_AT_TASKS], arrays[_AT_TASKS + 1], np.int64)
    active = array_at(status[_ST_ACTIVE], status[_ST_ACTIVE + 1], np.uint8)
    views_json = array_at(status[_ST_VIEWS], status[_ST_VIEWS + 1], np.uint8)
    view_offsets = array_at(status[_ST_OFFSETS], status[_ST_OFFSETS + 1], np.int64)
    positions, truncated = _select(cells, coarse, task_index, window, active, band_rows, tasks.size)
    window_cells = span_cells(window, band_rows)
    at = _put_int(out, _put(out, 0, _SEQ), seq)
    at = _put_int(out, _put(out, at, _CENTER), center)
    at = _put(out, at, _CELLS)
    for m in range(window_cells.size):
        if m:
            out[at] = 44  # ,
            at += 1
        at = _put_int(out, at, window_cells[m])
    at = _put(out, at, _POIS)
    n_tasks = 0
    for m in range(positions.size):
        j = positions[m]
        task = task_index[j]
        if m:
            out[at] = 44
            at += 1
        at = _put_int(out, _put(out, at, _POI_ID), poi_ids[j])
        at = _put_int(out, _put(out, at, _TASK_ID), task_ids[task])
        at = _put_micro(out, _put(out, at, _LAT), lats[j])
        at = _put_micro(out, _put(out, at, _LNG), lngs[j])
        out[at] = 125  # }
        at += 1
        seen = False
        for q in range(n_tasks):  # a window holds a handful of tasks: a scan beats a set
            if tasks[q] == task:
                seen = True
                break
        if not seen:
            tasks[n_tasks] = task
            n_tasks += 1
    at = _put(out, at, _TASKS)
    for q in range(n_tasks):
        if q:
            out[at] = 44
            at += 1
        at = _put(out, at, views_json[view_offsets[tasks[q]] : view_offsets[tasks[q] + 1]])
    return _put(out, at, _CUT if truncated else _WHOLE)


def encode_size(window_cells: int, max_pois: int, longest_view: int) -> int:
    """Return the bytes encode_rows may write: 20 digits and a comma a cell and number, 128 bytes a POI
    and its longest task view each at most."""
    return 128 + 21 * window_cells + (129 + longest_view) * max_pois


def answer(lookup: Lookup, status: StatusView, lat: float, lng: float, max_pois: int,
           window: Window | None = None) -> dict[str, Any]:
    """Return the /v1/nearby body without the load-dependent fields (what `geo-snapshot query` prints)."""
    found = lookup.find(lat, lng, status, max_pois, window)
    task_ids = lookup.task_ids
    return {
        "answer_version": ANSWER_VERSION,
        "seq": lookup.seq,
        "center_cell": found.window[0],
        "cells": cells_in(found.window, lookup.grid.band_rows),
        "pois": [{"poi_id": p, "task_id": task_ids[t], "lat": a, "lng": b} for (t, p), (a, b) in zip(found.ids, found.coords)],
        "tasks": [status.view(t) for t in dict.fromkeys(t for t, _ in found.ids)],
        "truncated": found.truncated,
    }


@numba.njit(nogil=True, cache=True)
def encode_square(lat: float, lng: float, arrays: Table, status: Table) -> int:  # pragma: no cover - compiled
    """encode_rows around a point of a square grid, its window computed here."""
    center, spans = square_window(lat, lng, float_at(arrays, _AT_ROW_HEIGHT), arrays[_AT_RADIUS], arrays[_AT_BAND_ROWS],
                                  arrays[_AT_MAX_COLS], array_at(arrays[_AT_BAND_COLS], arrays[_AT_BAND_COLS + 1], np.int64))
    return encode_rows(center, spans, arrays, status)


def encode_answer(lookup: Lookup, status: StatusView, lat: float, lng: float, max_pois: int,
                  extra: Mapping[str, Any], window: Window | None = None) -> tuple[bytes, int]:
    """Return answer() with the `extra` fields as JSON bytes, and a tag of what it shows (for ETags).

    The tag is a checksum of the answer without `extra`: the same in every worker and host for the same
    snapshot, window and shown tasks, and unmoved by anything the answer does not show. The compiled
    encoder writes the answer. (lat, lng) must be in the served band; a given `window` is used instead
    of theirs.
    """
    out = lookup.scratch(encode_size(lookup.window_cells, max_pois, status.longest_view), max_pois)
    if window is None and lookup.square is not None:
        size = encode_square(lat, lng, lookup.addresses, status.addresses)
    else:
        center, spans = window if window is not None else lookup.grid.window(lat, lng)
        size = encode_rows(center, spans, lookup.addresses, status.addresses)
    # A checksum of the bytes costs ~1.3 µs for a 3 KB answer (2-3% of a request) and is plainly right;
    # the length beside it makes a collision between two answers of one window rarer still. It reads the
    # buffer in place: the answer is copied out once, below.
    tag = (zlib.crc32(out.data[:size]) << 16) | (size & 0xFFFF)
    if not extra:
        return out[: size - 1].tobytes() + b"}", tag
    return out[:size].tobytes() + orjson.dumps(extra)[1:], tag
