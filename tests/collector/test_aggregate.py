"""Aggregation, checked against a plain per-task recomputation from the same inputs."""

from __future__ import annotations

import random

from collector.aggregate import ACTIVE, STATUSES, UPCOMING, Aggregator
from geo_service.ledger import Counters
from geo_service.snapshot.format import DistrictRow, PrizeRow, TaskRow

NOW = 1_800_000_000
DISTRICTS = [DistrictRow(code=440300 + k, name=f"d{k}", parent_code=None) for k in range(7)]


def _tasks(n: int, rng: random.Random) -> list[TaskRow]:
    tasks: list[TaskRow] = []
    for i in range(1, n + 1):
        starts = NOW + rng.choice([-10_000, -10, 10, 10_000])
        prizes = [p for p in ("cash", "coupon", "voucher") if rng.random() < 0.7] or ["cash"]
        tasks.append(TaskRow(task_id=i, name=f"t{i}", district_code=440300 + i % 7, poi_set_id=i, enabled=rng.random() > 0.1,
                             stagger_s=0, stagger_groups=1, starts_at=starts, ends_at=starts + rng.choice([5, 20_000]),
                             pois=1, outside_district=0,
                             prizes=[PrizeRow(prize_type=p, quota=rng.randint(0, 50), weight=1.0, rate_per_s=None)
                                     for p in prizes]))
    return tasks


def _expected(tasks: list[TaskRow], left: dict[tuple[int, str], int], disabled: frozenset[int]) -> dict[int, str]:
    out = {}
    for t in tasks:
        enabled = t["enabled"] and t["task_id"] not in disabled
        total = sum(left[(t["task_id"], p["prize_type"])] for p in t["prizes"])
        out[t["task_id"]] = ("ended" if NOW >= t["ends_at"] else "disabled" if not enabled else
                             "upcoming" if NOW < t["starts_at"] else "exhausted" if total == 0 else "active")
    return out


def test_pages_and_deltas_give_the_statuses_and_counts_of_a_plain_recomputation() -> None:
    rng = random.Random(5)
    tasks = _tasks(400, rng)
    agg = Aggregator(1, tasks, DISTRICTS)
    counters = [(t["task_id"], p["prize_type"], p["quota"], rng.randint(0, p["quota"])) for t in tasks for p in t["prizes"]]
    counters = [(t, p, q, q if t % 9 == 0 else i) for t, p, q, i in counters]  # every 9th task fully issued
    counters.append((9999, "cash", 10, 3))  # a counter of a task no longer in the snapshot is ignored
    disabled = frozenset(rng.sample(range(1, 401), 30))
    for start in range(0, len(counters), 250):  # a complete read, page by page
        agg.apply(Counters.from_rows([(t, p, q - i, q, -1) for t, p, q, i in counters[start : start + 250]]))
    left = {(t, p): q - i for t, p, q, i in counters}
    for _ in range(2):
        status = agg.statuses(NOW, disabled)
        got = {int(task_id): STATUSES[int(s)] for task_id, s in zip(agg.task_ids, status)}
        assert got == _expected(tasks, left, disabled)
        matrix = agg.matrix(agg.remaining)
        assert set(_expected(tasks, left, disabled).values()) == set(STATUSES)  # every status is exercised
        for i, t in enumerate(tasks):
            row = {p: int(v) for p, v in zip(agg.prize_types, matrix[i]) if v >= 0}
            assert row == {p["prize_type"]: left[(t["task_id"], p["prize_type"])] for p in t["prizes"]}
        # a delta read: some prizes run out, one task comes back
        changed = [(t, p, 0, q, -1) for t, p, q, _ in rng.sample(counters[:-1], 60)]
        agg.apply(Counters.from_rows(changed))
        left |= {(t, p): 0 for t, p, *_ in changed}
        disabled = disabled - {next(iter(disabled))}


def test_district_totals_count_what_can_still_be_won() -> None:
    rng = random.Random(9)
    tasks = _tasks(300, rng)
    agg = Aggregator(1, tasks, DISTRICTS)
    status = agg.statuses(NOW, frozenset())
    by_id = {int(t): STATUSES[int(s)] for t, s in zip(agg.task_ids, status)}
    for total in agg.district_totals(status):
        mine = [t for t in tasks if t["district_code"] == total["code"]]
        live = [t for t in mine if by_id[t["task_id"]] in ("active", "upcoming")]
        expected: dict[str, int] = {}
        for t in live:
            for p in t["prizes"]:
                expected[p["prize_type"]] = expected.get(p["prize_type"], 0) + p["quota"]
        assert total["remaining"] == expected == total["quota"]  # no counter read yet: every quota is left
        assert sum(total["tasks"].values()) == len(mine)
        assert total["tasks"] == {s: sum(1 for t in mine if by_id[t["task_id"]] == s) for s in STATUSES}


def test_live_quota_and_rate_changes_reach_the_district_totals_and_the_matrices() -> None:
    rng = random.Random(11)
    tasks = _tasks(50, rng)
    agg = Aggregator(1, tasks, DISTRICTS)
    task = next(t for t in tasks if len(t["prizes"]) > 1 and agg.statuses(NOW, frozenset())[tasks.index(t)] == ACTIVE)
    prize = task["prizes"][0]
    raised = prize["quota"] + 1000  # a live change: quota up by 1000, 12.5 a second
    agg.apply(Counters.from_rows([(task["task_id"], prize["prize_type"], raised - 3, raised, 12_500)]))
    i, k = tasks.index(task), agg.prize_types.index(prize["prize_type"])
    assert agg.matrix(agg.slot_quota)[i, k] == raised and agg.matrix(agg.slot_rate)[i, k] == 12_500
    assert agg.matrix(agg.remaining)[i, k] == raised - 3
    total = next(d for d in agg.district_totals(agg.statuses(NOW, frozenset())) if d["code"] == task["district_code"])
    live = [t for t in tasks if t["district_code"] == task["district_code"]
            and agg.statuses(NOW, frozenset())[tasks.index(t)] in (ACTIVE, UPCOMING)]
    want = sum(p["quota"] for t in live for p in t["prizes"] if p["prize_type"] == prize["prize_type"]) + 1000
    assert total["quota"][prize["prize_type"]] == want
