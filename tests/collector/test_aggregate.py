"""Aggregation, checked against a plain recomputation from the same inputs."""

from __future__ import annotations

import random

from collector.aggregate import STATUSES, district_totals, task_statuses
from geo_service.ledger import LedgerState

NOW = 1_800_000_000


def _tasks(n: int, rng: random.Random) -> list[dict]:  # type: ignore[type-arg]
    tasks = []
    for i in range(1, n + 1):
        starts = NOW + rng.choice([-10_000, -10, 10, 10_000])
        tasks.append({"task_id": i, "district_code": 440300 + i % 7, "enabled": rng.random() > 0.1,
                      "starts_at": starts, "ends_at": starts + rng.choice([5, 20_000]),
                      "prizes": [{"prize_type": "cash", "quota": rng.randint(0, 50)},
                                 {"prize_type": "coupon", "quota": rng.randint(0, 50)}]})
    return tasks


def test_statuses_follow_the_precedence_ended_disabled_upcoming_exhausted_active() -> None:
    rng = random.Random(5)
    tasks = _tasks(400, rng)
    counters = [(t["task_id"], p["prize_type"], p["quota"], rng.randint(0, p["quota"])) for t in tasks for p in t["prizes"]]
    disabled = frozenset(rng.sample(range(1, 401), 30))
    out = {s.task_id: s for s in task_statuses(tasks, LedgerState(counters, disabled), NOW)}
    issued = {(t, p): i for t, p, _, i in counters}
    for t in tasks:
        left = {p["prize_type"]: p["quota"] - issued[(t["task_id"], p["prize_type"])] for p in t["prizes"]}
        enabled = t["enabled"] and t["task_id"] not in disabled
        expected = ("ended" if NOW >= t["ends_at"] else "disabled" if not enabled else
                    "upcoming" if NOW < t["starts_at"] else "exhausted" if sum(left.values()) == 0 else "active")
        assert out[t["task_id"]].status == expected
        assert out[t["task_id"]].remaining == left
    assert {s.status for s in out.values()} == set(STATUSES)


def test_district_totals_count_what_can_still_be_won() -> None:
    rng = random.Random(9)
    tasks = _tasks(300, rng)
    statuses = task_statuses(tasks, LedgerState([], frozenset()), NOW)
    districts = [{"code": 440300 + k, "name": f"d{k}"} for k in range(7)]
    for total in district_totals(statuses, districts):
        mine = [s for s in statuses if s.district_code == total["code"]]
        for prize in ("cash", "coupon"):
            assert total["remaining"].get(prize, 0) == sum(
                s.remaining[prize] for s in mine if s.status in ("active", "upcoming"))
        assert sum(total["tasks"].values()) == len(mine)
