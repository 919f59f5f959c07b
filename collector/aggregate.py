"""Pure aggregation: snapshot tasks + ledger state + now -> per-task status and per-district totals."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from geo_service.ledger import LedgerState

STATUSES = ("active", "upcoming", "exhausted", "ended", "disabled")


@dataclass(frozen=True, slots=True)
class TaskStatus:
    task_id: int
    district_code: int
    status: str
    enabled: bool
    remaining: dict[str, int]


def task_statuses(tasks: list[dict[str, Any]], state: LedgerState, now_s: int) -> list[TaskStatus]:
    """Return every task's status: ended, disabled, upcoming, exhausted or active, in that precedence."""
    counters = {(t, p): max(q - i, 0) for t, p, q, i in state.counters}
    out = []
    for task in tasks:
        task_id = task["task_id"]
        remaining = {p["prize_type"]: counters.get((task_id, p["prize_type"]), p["quota"]) for p in task["prizes"]}
        enabled = task["enabled"] and task_id not in state.disabled
        if now_s >= task["ends_at"]:
            status = "ended"
        elif not enabled:
            status = "disabled"
        elif now_s < task["starts_at"]:
            status = "upcoming"
        elif not any(remaining.values()):
            status = "exhausted"
        else:
            status = "active"
        out.append(TaskStatus(task_id, task["district_code"], status, enabled, remaining))
    return out


def district_totals(statuses: list[TaskStatus], districts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return each district's remaining prizes (over active and upcoming tasks) and tasks by status."""
    remaining: defaultdict[int, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    counts: defaultdict[int, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in statuses:
        counts[s.district_code][s.status] += 1
        if s.status in ("active", "upcoming"):
            bucket = remaining[s.district_code]
            for prize, left in s.remaining.items():
                bucket[prize] += left
    return [
        {"code": d["code"], "name": d["name"], "remaining": dict(remaining[d["code"]]),
         "tasks": {status: counts[d["code"]][status] for status in STATUSES}}
        for d in districts
    ]
