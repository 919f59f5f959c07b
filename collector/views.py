"""The collector's views: built whole in the spare buffer, then swapped in by one assignment."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from collector.aggregate import STATUSES, Aggregator, IntArray
from geo_service.nearby import iso_utc

_STATUS_NAMES = np.array(STATUSES, dtype=object)


@dataclass(frozen=True, slots=True)
class View:
    """One consistent picture: statuses and remaining counts of every task, district totals, encoded bodies."""

    version: str
    seq: int
    built_at: float
    index: Aggregator  # only its per-snapshot tables are read through a view
    status: IntArray  # status code per task position
    remaining: IntArray  # tasks x prize types, -1 where a task lacks the prize
    districts: list[dict[str, Any]]
    status_body: bytes  # GET /v1/tasks/status, encoded once per view: what every service polls
    districts_body: bytes  # GET /v1/districts

    def task(self, i: int) -> dict[str, Any]:
        """Return task position i with its status and what is left of each prize."""
        index = self.index
        left = {p: int(r) for p, r in zip(index.prize_types, self.remaining[i].tolist()) if r >= 0}
        return {"task_id": int(index.task_ids[i]), "name": index.names[i], "status": STATUSES[int(self.status[i])],
                "starts_at": iso_utc(int(index.starts_at[i])), "ends_at": iso_utc(int(index.ends_at[i])),
                "remaining": left}

    def tasks_of(self, district_code: int) -> list[int]:
        """Return the task positions of a district."""
        codes = [d["code"] for d in self.index.districts]
        if district_code not in codes:
            return []
        return np.flatnonzero(self.index.district_of == codes.index(district_code)).tolist()  # type: ignore[no-any-return]


def build_view(index: Aggregator, now_s: int, disabled: frozenset[int]) -> View:
    """Aggregate the index's current counts into a complete view."""
    status = index.statuses(now_s, disabled)
    remaining = index.remaining_matrix()
    enabled = (status != STATUSES.index("disabled")).tolist()
    totals = index.district_totals(status)
    columns = {"task_id": index.task_ids, "enabled": enabled, "status": _STATUS_NAMES[status].tolist(),
               "remaining": remaining}
    content = orjson.dumps([index.seq, columns], option=orjson.OPT_SERIALIZE_NUMPY)
    version = f"{index.seq}-{zlib.crc32(content):08x}"  # content-derived: unchanged data keeps its version
    built_at = time.time()
    return View(
        version=version, seq=index.seq, built_at=built_at, index=index, status=status, remaining=remaining,
        districts=totals,
        status_body=orjson.dumps({"version": version, "seq": index.seq, "built_at": built_at,
                                  "prize_types": index.prize_types, "tasks": columns}, option=orjson.OPT_SERIALIZE_NUMPY),
        districts_body=orjson.dumps({"version": version, "seq": index.seq, "districts": totals}),
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
