"""The pure nearby lookup: snapshot + task status + position -> the window's active POIs and tasks.

Nothing here knows HTTP. The per-request path is one vectorised binary search for all window
rows, then plain Python over the few rows found; task status is precomputed into a bytes table
so the filter is one index per row, not a string of small numpy calls.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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

    active: bytes
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
        flags = active.astype(np.uint8).tobytes()
        version = zlib.crc32(repr([v and v.get("remaining") for v in views]).encode(), zlib.crc32(flags))
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


Row = tuple[int, int, float, float]  # (task_index, poi_id, lat, lng), as stored


@dataclass(frozen=True, slots=True)
class NearbyResult:
    """What a lookup found: the window, the rows of active tasks in it, and whether the cap cut them."""

    window: Window
    rows: list[Row]
    truncated: bool


class Lookup:
    """A snapshot prepared for lookups: its arrays, its task table, and task ids by row position."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.seq = snapshot.seq
        self.grid = snapshot.grid
        self.table = TaskTable(snapshot.tasks)
        self.task_ids = [t["task_id"] for t in snapshot.tasks]

    def find(self, lat: float, lng: float, status: StatusView, max_pois: int, window: Window | None = None) -> NearbyResult:
        """Return the rows of active tasks in the window around (lat, lng), at most max_pois of them."""
        window = window if window is not None else self.grid.window(lat, lng)
        _, bounds, k_spans = window
        snap, active, b = self.snapshot, status.active, self.grid.band_rows
        positions = np.searchsorted(snap.cells, bounds).tolist()
        found: list[Row] = []
        for i in range(0, len(positions), 2):
            lo, hi = positions[i], positions[i + 1]
            if lo == hi:
                continue
            k_lo, k_hi = k_spans[i], k_spans[i + 1]
            # Filter on cell and task first; fetch the payload only for the rows kept.
            tasks = snap.task_index[lo:hi].tolist()
            keep = [j for j, (c, t) in enumerate(zip(snap.cells[lo:hi].tolist(), tasks)) if k_lo <= c % b <= k_hi and active[t]]
            if keep:
                ids, lats, lngs = snap.poi_ids[lo:hi].tolist(), snap.lats[lo:hi].tolist(), snap.lngs[lo:hi].tolist()
                found += [(tasks[j], ids[j], lats[j], lngs[j]) for j in keep]
                if len(found) > max_pois:
                    break
        truncated = len(found) > max_pois
        return NearbyResult(window, found[:max_pois] if truncated else found, truncated)


def answer(lookup: Lookup, status: StatusView, lat: float, lng: float, max_pois: int,
           window: Window | None = None) -> dict[str, Any]:
    """Return the /v1/nearby body without the load-dependent fields (what `geo-snapshot query` prints)."""
    found = lookup.find(lat, lng, status, max_pois, window)
    task_ids, views = lookup.task_ids, status.views
    return {
        "seq": lookup.seq,
        "center_cell": found.window[0],
        "cells": cells_in(found.window, lookup.grid.band_rows),
        "pois": [{"poi_id": p, "task_id": task_ids[t], "lat": a, "lng": b} for t, p, a, b in found.rows],
        "tasks": [views[t] for t in dict.fromkeys(r[0] for r in found.rows)],
        "truncated": found.truncated,
    }
