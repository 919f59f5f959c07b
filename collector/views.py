"""The collector's views: built whole in the spare buffer, then swapped in by one assignment."""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from collector.aggregate import STATUSES, Aggregator, IntArray
from geo_service.ledger import PrizeChange
from geo_service.ledger.rates import rate_per_s
from geo_service.nearby.task_status import iso_utc

_STATUS_NAMES = np.array(STATUSES, dtype=object)
ChangeKey = tuple[int, str]  # (task_id, prize_type)


def change_json(change: PrizeChange) -> dict[str, Any]:
    return {"seq": change.seq, "at": iso_utc(int(change.at)), "task_id": change.task_id, "prize_type": change.prize_type,
            "quota": change.quota, "rate_per_s": rate_per_s(change.rate_milli)}


@dataclass(frozen=True, slots=True)
class View:
    """One consistent picture: statuses and remaining counts of every task, district totals, encoded bodies."""

    version: str
    seq: int
    built_at: float
    index: Aggregator  # only its per-snapshot tables are read through a view
    status: IntArray  # status code per task position
    remaining: IntArray  # tasks x prize types, -1 where a task lacks the prize
    quota: IntArray  # the same shape: the quota in force
    rate_milli: IntArray  # the same shape: the rate in force (-1: none, or no such prize)
    districts: list[dict[str, Any]]
    status_body: bytes  # GET /v1/tasks/status, encoded once per view: what every service polls
    districts_body: bytes  # GET /v1/districts
    changes: Mapping[ChangeKey, PrizeChange] = field(default_factory=dict)  # the latest live change per prize

    def task(self, i: int) -> dict[str, Any]:
        """Return task position i with its status and each prize's remaining, quota, rate and latest live change."""
        index = self.index
        task_id = int(index.task_ids[i])
        prizes = []
        for p, left, quota, rate in zip(index.prize_types, self.remaining[i].tolist(), self.quota[i].tolist(),
                                        self.rate_milli[i].tolist()):
            if left >= 0:
                change = self.changes.get((task_id, p))
                prizes.append({"prize_type": p, "remaining": left, "quota": quota, "rate_per_s": rate_per_s(rate),
                               "change": None if change is None else change_json(change)})
        return {"task_id": task_id, "name": index.names[i], "status": STATUSES[int(self.status[i])],
                "starts_at": iso_utc(int(index.starts_at[i])), "ends_at": iso_utc(int(index.ends_at[i])),
                "remaining": {p["prize_type"]: p["remaining"] for p in prizes}, "prizes": prizes}

    def tasks_of(self, district_code: int) -> list[int]:
        """Return the task positions of a district."""
        codes = [d["code"] for d in self.index.districts]
        if district_code not in codes:
            return []
        return np.flatnonzero(self.index.district_of == codes.index(district_code)).tolist()


def _mine(index: Aggregator, changes: Mapping[ChangeKey, PrizeChange]) -> tuple[list[PrizeChange], IntArray]:
    """Return the changes of the index's tasks in seq order, and each one's district position (-1: none)."""
    listed = sorted(changes.values(), key=lambda c: c.seq)
    at = index.positions(np.array([c.task_id for c in listed], dtype=np.int64))
    return [c for c, p in zip(listed, at.tolist()) if p >= 0], index.district_of[at[at >= 0]]


def build_view(index: Aggregator, now_s: int, disabled: frozenset[int],
               changes: Mapping[ChangeKey, PrizeChange] | None = None, recent: IntArray | None = None) -> View:
    """Aggregate the index's current counts into a complete view; `changes` are the latest live change of
    each prize (those of tasks outside the index are left out), `recent` each district's issues over the
    last minute."""
    listed, district_at = _mine(index, changes or {})
    by_code: dict[int, list[dict[str, Any]]] = {}
    for change, d in zip(listed, district_at.tolist()):
        if d >= 0:
            by_code.setdefault(index.districts[d]["code"], []).append(change_json(change))
    status = index.statuses(now_s, disabled)
    remaining, quota, rate = index.matrix(index.remaining), index.matrix(index.slot_quota), index.matrix(index.slot_rate)
    enabled = (status != STATUSES.index("disabled")).tolist()
    recent_l = recent.tolist() if recent is not None else [0] * len(index.districts)
    totals = [{**d, "claims_last_minute": n, "changes": by_code.get(d["code"], [])}
              for d, n in zip(index.district_totals(status), recent_l)]
    columns = {"task_id": index.task_ids, "enabled": enabled, "status": _STATUS_NAMES[status].tolist(),
               "remaining": remaining, "quota": quota,
               "rate_per_s": np.where(rate >= 0, rate / 1000, np.nan)}  # NaN (no limit, no prize) encodes as null
    change_list = [change_json(c) for c in listed]
    content = orjson.dumps([index.seq, columns, change_list], option=orjson.OPT_SERIALIZE_NUMPY)
    version = f"{index.seq}-{zlib.crc32(content):08x}"  # content-derived: unchanged data keeps its version
    built_at = time.time()
    return View(
        version=version, seq=index.seq, built_at=built_at, index=index, status=status, remaining=remaining, quota=quota,
        rate_milli=rate, districts=totals,
        status_body=orjson.dumps({"version": version, "seq": index.seq, "built_at": built_at,
                                  "prize_types": index.prize_types, "tasks": columns, "changes": change_list},
                                 option=orjson.OPT_SERIALIZE_NUMPY),
        districts_body=orjson.dumps({"version": version, "seq": index.seq, "districts": totals}),
        changes={(c.task_id, c.prize_type): c for c in listed},
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
