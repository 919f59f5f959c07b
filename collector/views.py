"""The collector's views: built whole in the spare buffer, then swapped in by one assignment."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from collector.aggregate import TaskStatus, district_totals, task_statuses
from geo_service.ledger import LedgerState


@dataclass(frozen=True, slots=True)
class View:
    """One consistent picture: task statuses, district totals, and their encoded bodies."""

    version: str
    seq: int
    built_at: float
    tasks: list[dict[str, Any]]  # the snapshot's task table
    statuses: dict[int, TaskStatus]
    districts: list[dict[str, Any]]
    status_body: bytes  # GET /v1/tasks/status, encoded once per view: what every service polls
    districts_body: bytes  # GET /v1/districts


def build_view(seq: int, tasks: list[dict[str, Any]], districts: list[dict[str, Any]], state: LedgerState,
               now_s: int) -> View:
    """Aggregate a ledger state against a snapshot's tables into a complete view."""
    statuses = task_statuses(tasks, state, now_s)
    totals = district_totals(statuses, districts)
    compact = [[s.task_id, s.enabled, s.status, s.remaining] for s in statuses]
    content = orjson.dumps([seq, compact])
    version = f"{seq}-{zlib.crc32(content):08x}"  # content-derived: unchanged data keeps its version
    built_at = time.time()
    return View(
        version=version,
        seq=seq,
        built_at=built_at,
        tasks=tasks,
        statuses={s.task_id: s for s in statuses},
        districts=totals,
        status_body=orjson.dumps({"version": version, "seq": seq, "built_at": built_at, "tasks": compact}),
        districts_body=orjson.dumps({"version": version, "seq": seq, "districts": totals}),
    )


@dataclass(slots=True)
class ViewHolder:
    """Holds the live view; readers take `current` once and use that object throughout."""

    current: View | None = None
    swaps: int = 0
    previous_totals: dict[int, dict[str, Any]] = field(default_factory=dict)

    def install(self, view: View) -> list[dict[str, Any]]:
        """Swap in a view; return the district totals that changed (for the stream)."""
        changed = [d for d in view.districts if self.previous_totals.get(d["code"]) != d]
        self.previous_totals = {d["code"]: d for d in view.districts}
        self.current = view
        self.swaps += 1
        return changed
