"""The compiled pass of a lookup: the window's rows selected, and the answer written as JSON bytes.

numba checks the type of every argument and unboxes every array on every call: 3 µs a call for the
encoder's nineteen, a third of a whole lookup. So compiled code here takes its arrays as one int64
address table, built once per snapshot or status from a Layout that declares its slots by name; the
compiled side rebuilds its arrays with `array_at`. Whoever passes a table must hold the arrays it points
into: each table lives beside its arrays in one object (Lookup, StatusView) and is only used through it.
numba checks no bounds, so the output buffer is sized by `encode_size` from the byte pieces below and the
widest values they are written with (tests check those widths against orjson's), and `encode_rows` refuses,
before writing, an answer whose rows and task views would not fit the buffer it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from numba import types
from numba.extending import intrinsic

from geo_service.snapshot.format import MICRO
from geo_service.snapshot.grid import span_cells, square_window

Table = npt.NDArray[np.int64]
# One cell id in every COARSE_STRIDE (a 4 KiB page of them) is copied into a small index that stays
# in cache: a binary search then misses on one page of the large array, not on a dozen.
COARSE_STRIDE = 512
# The answer's shape; a client tells shapes apart by it (1: exact remaining counts, 2: levels).
ANSWER_VERSION = 2


def address(array: npt.NDArray[Any]) -> int:
    """Return where a C-contiguous array's data starts."""
    if not array.flags.c_contiguous:
        raise ValueError("only C-contiguous arrays can be passed by address")
    return int(array.ctypes.data)


def float_bits(value: float) -> int:
    """Return a float as the int64 with the same bits, to store it in a table."""
    return int(np.array([value], np.float64).view(np.int64)[0])


@dataclass(frozen=True, slots=True)
class Layout:
    """An address table's slots, declared once by name: an int or a float takes one slot, an array of a
    dtype two (its address, then its size). Tables are packed by name and read by `slot`."""

    fields: tuple[tuple[str, Any], ...]  # (name, int | float | a numpy scalar type); an array may be None: (0, 0)

    def slot(self, name: str) -> int:
        """Return where a field starts in the table."""
        at = 0
        for field_name, kind in self.fields:
            if field_name == name:
                return at
            at += 1 if kind in (int, float) else 2
        raise KeyError(name)

    @property
    def size(self) -> int:
        return sum(1 if kind in (int, float) else 2 for _, kind in self.fields)

    def pack(self, **values: Any) -> Table:
        """Return the table of these values, one per field; arrays must be of their field's dtype."""
        if set(values) != {name for name, _ in self.fields}:
            raise TypeError(f"a table needs exactly {[name for name, _ in self.fields]}; got {sorted(values)}")
        table = np.zeros(self.size, np.int64)
        for name, kind in self.fields:
            at, value = self.slot(name), values[name]
            if kind is float:
                table[at] = float_bits(value)
            elif kind is int:
                table[at] = int(value)
            elif value is not None:
                if value.dtype != np.dtype(kind):
                    raise TypeError(f"{name}: an array of {np.dtype(kind)}, got {value.dtype}")
                table[at], table[at + 1] = address(value), value.size
        return table


# A Lookup's table: the grid's numbers (those of a square grid are zeros on H3), the snapshot's row
# arrays, the coarse index, task ids by position, and the encoder's reused output and task buffers.
LOOKUP_TABLE = Layout((
    ("band_rows", int), ("seq", int), ("radius", int), ("row_height_deg", float), ("max_cols", int),
    ("band_cols", np.int64), ("cells", np.int64), ("task_index", np.int32), ("poi_ids", np.int64),
    ("lats", np.int32), ("lngs", np.int32), ("coarse", np.int64), ("task_ids", np.int64), ("out", np.uint8),
    ("tasks", np.int64),
))
# A StatusView's table: a flag per task, every active task's view as JSON end to end, and their offsets.
STATUS_TABLE = Layout((("active", np.uint8), ("views_json", np.uint8), ("view_offsets", np.int64)))
_BAND_ROWS, _SEQ, _RADIUS = LOOKUP_TABLE.slot("band_rows"), LOOKUP_TABLE.slot("seq"), LOOKUP_TABLE.slot("radius")
_ROW_HEIGHT, _MAX_COLS = LOOKUP_TABLE.slot("row_height_deg"), LOOKUP_TABLE.slot("max_cols")
_BAND_COLS, _CELLS = LOOKUP_TABLE.slot("band_cols"), LOOKUP_TABLE.slot("cells")
_TASK_INDEX, _POI_IDS = LOOKUP_TABLE.slot("task_index"), LOOKUP_TABLE.slot("poi_ids")
_LATS, _LNGS, _COARSE = LOOKUP_TABLE.slot("lats"), LOOKUP_TABLE.slot("lngs"), LOOKUP_TABLE.slot("coarse")
_TASK_IDS, _OUT, _TASKS = LOOKUP_TABLE.slot("task_ids"), LOOKUP_TABLE.slot("out"), LOOKUP_TABLE.slot("tasks")
_ACTIVE, _VIEWS, _OFFSETS = (STATUS_TABLE.slot(n) for n in ("active", "views_json", "view_offsets"))


def _ascii(text: str) -> npt.NDArray[np.uint8]:
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()


# The fixed parts of the JSON the compiled encoder writes (numba takes global arrays as constants).
_SEQ_TEXT, _CENTER = _ascii(f'{{"answer_version":{ANSWER_VERSION},"seq":'), _ascii(',"center_cell":')
_CELLS_TEXT, _POIS = _ascii(',"cells":['), _ascii('],"pois":[')
_POI_ID, _TASK_ID, _LAT, _LNG = _ascii('{"poi_id":'), _ascii(',"task_id":'), _ascii(',"lat":'), _ascii(',"lng":')
_TASKS_TEXT, _CUT, _WHOLE = _ascii('],"tasks":['), _ascii('],"truncated":true,'), _ascii('],"truncated":false,')
_INT64_MIN = -(2**63)
_INT64_MIN_TEXT = _ascii(str(_INT64_MIN))
# The longest an int64 and an int32 of micro-degrees (whatever a snapshot holds) are written.
_INT_BYTES = _INT64_MIN_TEXT.size
_MICRO_BYTES = len(f"{-(2**31 - 1) / MICRO:.6f}")
_FIXED_BYTES = (_SEQ_TEXT.size + _CENTER.size + 2 * _INT_BYTES + _CELLS_TEXT.size + _POIS.size + _TASKS_TEXT.size
                + max(_CUT.size, _WHOLE.size))
_CELL_BYTES = _INT_BYTES + 1  # a cell id and its comma
_POI_BYTES = (_POI_ID.size + _TASK_ID.size + 2 * _INT_BYTES + _LAT.size + _LNG.size + 2 * _MICRO_BYTES
              + 2)  # the closing brace and a comma


def encode_size(window_cells: int, max_pois: int, longest_view: int) -> int:
    """Return the most bytes `encode_rows` writes for a window of `window_cells` cells, `max_pois` POIs and
    task views of at most `longest_view` bytes: each POI may bring a task of its own, with its comma."""
    return _FIXED_BYTES + _CELL_BYTES * window_cells + (_POI_BYTES + longest_view + 1) * max_pois


@intrinsic
def _pointer(typingctx: Any, at: Any, dtype: Any) -> Any:  # pragma: no cover - compiled
    pointer = types.CPointer(dtype.dtype)  # type: ignore[no-untyped-call]

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(at, dtype), codegen


@numba.njit(nogil=True, cache=True, inline="always")
def array_at(at: int, size: int, dtype: Any) -> Any:  # pragma: no cover - compiled
    """Return the `size` items of `dtype` at address `at` as an array (no copy)."""
    return numba.carray(_pointer(at, dtype), size)  # type: ignore[attr-defined, call-arg]  # numba passes typingctx


@numba.njit(nogil=True, cache=True, inline="always")
def float_at(table: Table, slot: int) -> float:  # pragma: no cover - compiled
    """Return the float stored with float_bits in a table slot."""
    value: float = table[slot : slot + 1].view(np.float64)[0]
    return value


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
        coords[m, 0], coords[m, 1] = lats[j] / MICRO, lngs[j] / MICRO  # micro-degrees to degrees
    return ids, coords, truncated


@numba.njit(nogil=True, cache=True)
def _put(out: npt.NDArray[np.uint8], at: int, text: npt.NDArray[np.uint8]) -> int:  # pragma: no cover - compiled
    out[at : at + text.size] = text
    return at + text.size


@numba.njit(nogil=True, cache=True)
def _put_int(out: npt.NDArray[np.uint8], at: int, value: int) -> int:  # pragma: no cover - compiled
    if value == _INT64_MIN:  # the one int64 whose negation overflows
        return _put(out, at, _INT64_MIN_TEXT)
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
    `arrays` is a Lookup's address table, `status` a StatusView's. Return the bytes written, or -1 if the
    answer would not fit the buffer.
    """
    band_rows, seq = arrays[_BAND_ROWS], arrays[_SEQ]
    cells = array_at(arrays[_CELLS], arrays[_CELLS + 1], np.int64)
    task_index = array_at(arrays[_TASK_INDEX], arrays[_TASK_INDEX + 1], np.int32)
    poi_ids = array_at(arrays[_POI_IDS], arrays[_POI_IDS + 1], np.int64)
    lats = array_at(arrays[_LATS], arrays[_LATS + 1], np.int32)
    lngs = array_at(arrays[_LNGS], arrays[_LNGS + 1], np.int32)
    coarse = array_at(arrays[_COARSE], arrays[_COARSE + 1], np.int64)
    task_ids = array_at(arrays[_TASK_IDS], arrays[_TASK_IDS + 1], np.int64)
    out = array_at(arrays[_OUT], arrays[_OUT + 1], np.uint8)
    tasks = array_at(arrays[_TASKS], arrays[_TASKS + 1], np.int64)
    active = array_at(status[_ACTIVE], status[_ACTIVE + 1], np.uint8)
    views_json = array_at(status[_VIEWS], status[_VIEWS + 1], np.uint8)
    view_offsets = array_at(status[_OFFSETS], status[_OFFSETS + 1], np.int64)
    positions, truncated = _select(cells, coarse, task_index, window, active, band_rows, tasks.size)
    window_cells = span_cells(window, band_rows)
    need = _FIXED_BYTES + _CELL_BYTES * window_cells.size
    for m in range(positions.size):
        task = task_index[positions[m]]
        need += _POI_BYTES + 1 + view_offsets[task + 1] - view_offsets[task]
    if need > out.size:
        return -1  # numba checks no bounds: a buffer sized for less is refused, never written past
    at = _put_int(out, _put(out, 0, _SEQ_TEXT), seq)
    at = _put_int(out, _put(out, at, _CENTER), center)
    at = _put(out, at, _CELLS_TEXT)
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
    at = _put(out, at, _TASKS_TEXT)
    for q in range(n_tasks):
        if q:
            out[at] = 44
            at += 1
        at = _put(out, at, views_json[view_offsets[tasks[q]] : view_offsets[tasks[q] + 1]])
    return _put(out, at, _CUT if truncated else _WHOLE)


@numba.njit(nogil=True, cache=True)
def encode_square(lat: float, lng: float, arrays: Table, status: Table) -> int:  # pragma: no cover - compiled
    """encode_rows around a point of a square grid, its window computed here."""
    center, spans = square_window(lat, lng, float_at(arrays, _ROW_HEIGHT), arrays[_RADIUS], arrays[_BAND_ROWS],
                                  arrays[_MAX_COLS], array_at(arrays[_BAND_COLS], arrays[_BAND_COLS + 1], np.int64))
    return encode_rows(center, spans, arrays, status)


