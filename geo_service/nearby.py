"""The pure nearby lookup: snapshot + task status + position -> the window's active POIs and tasks.

Nothing here knows HTTP. The per-request path is the window arithmetic, one compiled pass that
binary-searches the window's id ranges and keeps the rows of the window whose task is active,
then three gathers for the payload. Task status is precomputed into a flag per task whenever it
changes, so the filter is one index per row.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from geo_service.grid import Window, cells_in
from geo_service.snapshot import Snapshot

NEVER = 2**62


def iso_utc(epoch_s: int) -> str:
    """Return epoch seconds as an ISO-8601 UTC string."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


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
    views: tuple[dict[str, Any] | None, ...]
    version: int
    valid_until: int


@dataclass(frozen=True, slots=True)
class TaskTable:
    """The snapshot's tasks as arrays, for computing status views."""

    tasks: list[dict[str, Any]]
    starts_at: npt.NDArray[np.int64] = field(init=False)
    ends_at: npt.NDArray[np.int64] = field(init=False)
    enabled: npt.NDArray[np.bool_] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts_at", np.array([t["starts_at"] for t in self.tasks], dtype=np.int64))
        object.__setattr__(self, "ends_at", np.array([t["ends_at"] for t in self.tasks], dtype=np.int64))
        object.__setattr__(self, "enabled", np.array([t["enabled"] for t in self.tasks], dtype=np.bool_))

    def status(self, now_s: int, overrides: Mapping[int, TaskOverride] | None = None) -> StatusView:
        """Return the status view at now_s: enabled, inside the time window, and not exhausted."""
        overrides = overrides or {}
        active = self.enabled & (self.starts_at <= now_s) & (now_s < self.ends_at)
        views: list[dict[str, Any] | None] = []
        for i, task in enumerate(self.tasks):
            override = overrides.get(task["task_id"])
            if override is not None and active[i]:
                exhausted = override.remaining is not None and not any(v > 0 for v in override.remaining.values())
                active[i] = override.enabled and not exhausted
            views.append(_task_view(task, override) if active[i] else None)
        future = np.concatenate([self.starts_at[self.starts_at > now_s], self.ends_at[self.ends_at > now_s]])
        flags = active.astype(np.uint8)
        version = zlib.crc32(repr([v and v.get("remaining") for v in views]).encode(), zlib.crc32(flags.tobytes()))
        return StatusView(flags, tuple(views), version, int(future.min()) if len(future) else NEVER)


def _task_view(task: dict[str, Any], override: TaskOverride | None) -> dict[str, Any]:
    remaining = override.remaining if override is not None else None
    return {
        "task_id": task["task_id"],
        "name": task["name"],
        "district_code": task["district_code"],
        "status": "active",
        "ends_at": iso_utc(task["ends_at"]),
        "prizes": [
            {"prize_type": p["prize_type"], "quota": p["quota"],
             "remaining": None if remaining is None else remaining.get(p["prize_type"])}
            for p in task["prizes"]
        ],
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

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.seq = snapshot.seq
        self.grid = snapshot.grid
        self.table = TaskTable(snapshot.tasks)
        self.task_ids = [t["task_id"] for t in snapshot.tasks]
        self.task_position = {task_id: i for i, task_id in enumerate(self.task_ids)}

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
            rows.append((int(snap.task_index[j]), poi_id, float(snap.lats[j]), float(snap.lngs[j])))
            lo += 1
        return rows

    def find(self, lat: float, lng: float, status: StatusView, max_pois: int, window: Window | None = None) -> NearbyResult:
        """Return the rows of active tasks in the window around (lat, lng), at most max_pois of them."""
        window = window if window is not None else self.grid.window(lat, lng)
        snap = self.snapshot
        ids, coords, truncated = select_rows(
            snap.cells, snap.task_index, snap.poi_ids, snap.lats, snap.lngs,
            np.array(window[1] + window[2], dtype=np.int64), status.active, self.grid.band_rows, max_pois,
        )
        return NearbyResult(window, ids.tolist(), coords.tolist(), truncated)


@numba.njit(nogil=True, cache=True)
def select_rows(
    cells: npt.NDArray[np.int64], task_index: npt.NDArray[np.int32], poi_ids: npt.NDArray[np.int64],
    lats: npt.NDArray[np.float64], lngs: npt.NDArray[np.float64], window: npt.NDArray[np.int64],
    active: npt.NDArray[np.uint8], band_rows: int, limit: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], bool]:
    """Return the window's rows whose task is active, at most `limit`, as ([task_index, poi_id] rows,
    [lat, lng] rows), and whether more exist. `window` is the grid window's bounds then its k spans.

    Compiled because it is the one per-row loop on the request path: CPython spends ~0.3 µs a
    row on this work here, and a window scans a few dozen rows.
    """  # pragma: no cover - compiled; exercised through Lookup.find
    half = window.size // 2
    positions = np.empty(limit, np.int64)
    n = 0
    truncated = False
    for i in range(0, half, 2):
        lo = np.searchsorted(cells, window[i])
        hi = np.searchsorted(cells, window[i + 1])
        k_lo, k_hi = window[half + i], window[half + i + 1]
        for j in range(lo, hi):
            k = cells[j] % band_rows
            if k_lo <= k <= k_hi and active[task_index[j]]:
                if n == limit:
                    truncated = True
                    break
                positions[n] = j
                n += 1
        if truncated:
            break
    # Two 2-D outputs, not four columns: each array returned costs a boxing and a tolist.
    ids = np.empty((n, 2), np.int64)
    coords = np.empty((n, 2), np.float64)
    for m in range(n):
        j = positions[m]
        ids[m, 0], ids[m, 1] = task_index[j], poi_ids[j]
        coords[m, 0], coords[m, 1] = lats[j], lngs[j]
    return ids, coords, truncated


def answer(lookup: Lookup, status: StatusView, lat: float, lng: float, max_pois: int,
           window: Window | None = None) -> dict[str, Any]:
    """Return the /v1/nearby body without the load-dependent fields (what `geo-snapshot query` prints)."""
    found = lookup.find(lat, lng, status, max_pois, window)
    task_ids, views = lookup.task_ids, status.views
    return {
        "seq": lookup.seq,
        "center_cell": found.window[0],
        "cells": cells_in(found.window, lookup.grid.band_rows),
        "pois": [{"poi_id": p, "task_id": task_ids[t], "lat": a, "lng": b} for (t, p), (a, b) in zip(found.ids, found.coords)],
        "tasks": [views[t] for t in dict.fromkeys(t for t, _ in found.ids)],
        "truncated": found.truncated,
    }
