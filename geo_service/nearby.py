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


@dataclass(frozen=True, slots=True)
class NearbyResult:
    """The answer for one position, ready to serialise."""

    center_cell: int
    cells: list[int]
    pois: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    truncated: bool


class Lookup:
    """A snapshot prepared for lookups: its arrays, its task table, and task ids by row position."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.seq = snapshot.seq
        self.grid = snapshot.grid
        self.table = TaskTable(snapshot.tasks)
        self._task_ids = [t["task_id"] for t in snapshot.tasks]

    def window_key(self, lat: float, lng: float) -> tuple[int, list[int]]:
        """Return a deterministic key of the window (for ETags) and its id bounds."""
        bounds = self.grid.window_bounds(lat, lng)
        return hash(tuple(bounds)), bounds

    def find(self, lat: float, lng: float, status: StatusView, max_pois: int,
             bounds: list[int] | None = None) -> NearbyResult:
        """Return the active POIs in the window around (lat, lng), at most max_pois of them."""
        snap = self.snapshot
        bounds = bounds if bounds is not None else self.grid.window_bounds(lat, lng)
        positions = np.searchsorted(snap.cells, bounds).tolist()
        active, task_ids = status.active, self._task_ids
        pois: list[dict[str, Any]] = []
        seen: dict[int, None] = {}
        truncated = False
        for a, b in zip(positions[::2], positions[1::2]):
            if a == b:
                continue
            rows = zip(snap.task_index[a:b].tolist(), snap.poi_ids[a:b].tolist(),
                       snap.lats[a:b].tolist(), snap.lngs[a:b].tolist())
            for t, poi_id, plat, plng in rows:
                if not active[t]:
                    continue
                if len(pois) == max_pois:
                    truncated = True
                    break
                pois.append({"poi_id": poi_id, "task_id": task_ids[t], "lat": plat, "lng": plng})
                seen[t] = None
            if truncated:
                break
        cells = [c for lo, hi in zip(bounds[::2], bounds[1::2]) for c in range(lo, hi)]
        tasks = [status.views[t] for t in seen]
        return NearbyResult(self.grid.cell_of(lat, lng), cells, pois, tasks, truncated)  # type: ignore[arg-type]


def answer(lookup: Lookup, status: StatusView, lat: float, lng: float, max_pois: int,
           bounds: list[int] | None = None) -> dict[str, Any]:
    """Return the /v1/nearby body without the load-dependent fields (what `geo-snapshot query` prints)."""
    found = lookup.find(lat, lng, status, max_pois, bounds)
    return {
        "seq": lookup.seq,
        "center_cell": found.center_cell,
        "cells": found.cells,
        "pois": found.pois,
        "tasks": found.tasks,
        "truncated": found.truncated,
    }
