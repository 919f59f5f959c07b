"""Task status as the lookup reads it: which tasks are shown now, and each shown task's view as JSON.

A status is computed whenever the snapshot, the clock (a task window's edge) or the collector's view
changes, never per request: the compiled pass reads one flag per task and copies the views' bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from geo_service.nearby.encoder import STATUS_TABLE, Table
from geo_service.snapshot.format import TaskRow

NEVER = 2**62


def iso_utc(epoch_s: float) -> str:
    """Return epoch seconds as an ISO-8601 UTC string (with microseconds when they are not 0)."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


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
    # The arrays above by address, for the compiled encoder (encoder.STATUS_TABLE).
    addresses: Table = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", STATUS_TABLE.pack(
            active=self.active, views_json=self.views_json, view_offsets=self.view_offsets))

    def view(self, task: int) -> dict[str, Any] | None:
        """Return task position `task`'s public view (None unless active)."""
        lo, hi = self.view_offsets[task], self.view_offsets[task + 1]
        return orjson.loads(self.views_json[lo:hi].tobytes()) if hi > lo else None


@dataclass(frozen=True, slots=True)
class TaskTable:
    """The snapshot's tasks as arrays, for computing status views."""

    tasks: list[TaskRow]
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


def _task_view(task: TaskRow, levels: tuple[str | None, ...]) -> dict[str, Any]:
    view = {
        "task_id": task["task_id"],
        "name": task["name"],
        "district_code": task["district_code"],
        "status": "active",
        "ends_at": iso_utc(task["ends_at"]),
        "prizes": [{"prize_type": p["prize_type"], "level": level} for p, level in zip(task["prizes"], levels)],
    }
    if task["stagger_groups"] > 1:  # one answer for every player: each client computes its own group's opening
        view["stagger"] = {"groups": task["stagger_groups"], "step_s": task["stagger_s"],
                           "starts_at": iso_utc(task["starts_at"])}
    return view
