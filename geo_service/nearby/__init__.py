"""The pure nearby lookup: snapshot + task status + position -> the window's active POIs and tasks.

Nothing here knows HTTP. The per-request path is the window arithmetic, one compiled pass that
binary-searches the window's id ranges and keeps the rows of the window whose task is active, and
writes the answer's bytes (encoder.py); task status is precomputed into a flag per task whenever it
changes (task_status.py), so the filter is one index per row. live.py holds the double buffer.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from geo_service.nearby.encoder import (
    ANSWER_VERSION,
    COARSE_STRIDE,
    LOOKUP_TABLE,
    Table,
    encode_rows,
    encode_size,
    encode_square,
    select_rows,
)
from geo_service.nearby.task_status import DEFAULT_LEVELS, NEVER, Levels, StatusView, TaskOverride, TaskTable, iso_utc
from geo_service.snapshot.format import Snapshot
from geo_service.snapshot.grid import SquareGrid, Window, cells_in

__all__ = ["ANSWER_VERSION", "DEFAULT_LEVELS", "NEVER", "Levels", "Lookup", "NearbyResult", "StatusView", "TaskOverride",
           "answer", "encode_answer", "iso_utc"]


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
        params = self.grid.client_params()
        # The grid's own key, the same from snapshot to snapshot while the grid is: a client names it when it polls a
        # cell (?grid=), so an edge cache keys cell answers on it and a cell id of another grid is refused (409).
        self.grid_key = f"{zlib.crc32(orjson.dumps(params)):08x}"
        self.grid_json = orjson.dumps({"seq": self.seq, "key": self.grid_key, **params})
        self.grid_gzip = gzip.compress(self.grid_json, mtime=0)
        self.grid_tag = zlib.crc32(self.grid_json)
        self._out = np.empty(0, np.uint8)
        self._rows = np.empty(0, np.int64)
        self.addresses = self._addresses()

    def _addresses(self) -> Table:
        """The lookup's arrays and grid numbers for the compiled encoder (encoder.LOOKUP_TABLE)."""
        snap, square = self.snapshot, self.square
        return LOOKUP_TABLE.pack(
            band_rows=self.grid.band_rows, seq=self.seq, radius=self.grid.radius,
            row_height_deg=square.row_height_deg if square is not None else 0.0,
            max_cols=square.max_cols if square is not None else 0,
            band_cols=square.band_cols if square is not None else None,
            cells=snap.cells, task_index=snap.task_index, poi_ids=snap.poi_ids, lats=snap.lats, lngs=snap.lngs,
            coarse=self.coarse, task_ids=self.task_id_array, out=self._out, tasks=self._rows)

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
    if size < 0:
        raise OverflowError(f"an answer outgrew its {out.size}-byte buffer: encode_size is short of what encode_rows writes")
    # A checksum of the bytes costs ~1.3 µs for a 3 KB answer (2-3% of a request) and is plainly right;
    # the length beside it makes a collision between two answers of one window rarer still. It reads the
    # buffer in place: the answer is copied out once, below.
    tag = (zlib.crc32(out.data[:size]) << 16) | (size & 0xFFFF)
    if not extra:
        return out[: size - 1].tobytes() + b"}", tag
    return out[:size].tobytes() + orjson.dumps(extra)[1:], tag
