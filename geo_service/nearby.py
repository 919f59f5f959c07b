"""The pure nearby lookup: snapshot + position + time -> the window's active POIs and their tasks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from geo_service.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class TaskClock:
    """Per-task time window and enabled flag as arrays, indexed like the snapshot's task table."""

    starts_at: npt.NDArray[np.int64]
    ends_at: npt.NDArray[np.int64]
    enabled: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, tasks: list[dict[str, Any]]) -> TaskClock:
        return cls(
            np.array([t["starts_at"] for t in tasks], dtype=np.int64),
            np.array([t["ends_at"] for t in tasks], dtype=np.int64),
            np.array([t["enabled"] for t in tasks], dtype=np.bool_),
        )

    def active(self, now_s: int) -> npt.NDArray[np.bool_]:
        """Return which tasks are enabled and inside their time window at now_s."""
        return self.enabled & (self.starts_at <= now_s) & (now_s < self.ends_at)


def window_rows(snapshot: Snapshot, lat: float, lng: float) -> npt.NDArray[np.int64]:
    """Return the positions of the rows whose cell lies in the window around (lat, lng)."""
    ranges = snapshot.grid.window_ranges(lat, lng)
    bounds = np.searchsorted(snapshot.cells, ranges.ravel()).reshape(-1, 2)
    return np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in bounds.tolist()])


def iso_utc(epoch_s: int) -> str:
    """Return epoch seconds as an ISO-8601 UTC string."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def nearby(snapshot: Snapshot, clock: TaskClock, lat: float, lng: float, now_s: int, max_pois: int) -> dict[str, Any]:
    """Return the window's POIs of active tasks, their tasks, and whether the POI cap cut the list."""
    rows = window_rows(snapshot, lat, lng)
    active = clock.active(now_s)
    rows = rows[active[snapshot.task_index[rows]]]
    truncated = len(rows) > max_pois
    rows = rows[:max_pois]
    task_idx = snapshot.task_index[rows].tolist()
    pois = [
        {"poi_id": p, "task_id": snapshot.tasks[t]["task_id"], "lat": a, "lng": b}
        for p, t, a, b in zip(snapshot.poi_ids[rows].tolist(), task_idx, snapshot.lats[rows].tolist(), snapshot.lngs[rows].tolist())
    ]
    tasks = [task_view(snapshot.tasks[t]) for t in sorted(set(task_idx))]
    return {
        "seq": snapshot.seq,
        "center_cell": snapshot.grid.cell_of(lat, lng),
        "cells": snapshot.grid.window_cells(lat, lng),
        "pois": pois,
        "tasks": tasks,
        "truncated": truncated,
    }


def task_view(task: dict[str, Any]) -> dict[str, Any]:
    """Return the public view of an active task."""
    return {
        "task_id": task["task_id"],
        "name": task["name"],
        "district_code": task["district_code"],
        "status": "active",
        "ends_at": iso_utc(task["ends_at"]),
        "prizes": [{"prize_type": p["prize_type"], "quota": p["quota"]} for p in task["prizes"]],
    }
