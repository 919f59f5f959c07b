"""Aggregation as arrays: a snapshot's tasks, the remaining count of every (task, prize) slot, and the
statuses and district totals they give. Built once per snapshot; kept current from pages and deltas
of ledger counters, so a tick costs a few vectorised passes however many tasks there are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geo_service.ledger import Counters
from geo_service.ledger.rates import rate_milli
from geo_service.snapshot.format import DistrictRow, SnapshotError, TaskRow, read_tables

STATUSES = ("active", "upcoming", "exhausted", "ended", "disabled")
ACTIVE, UPCOMING, EXHAUSTED, ENDED, DISABLED = range(len(STATUSES))
IntArray = npt.NDArray[np.int64]


class Aggregator:
    """One snapshot's task table as arrays, and what is left of each of its prizes. It keeps no task
    dicts: it is built in a child process and sent back whole, which columns make cheap."""

    def __init__(self, seq: int, tasks: list[TaskRow], districts: list[DistrictRow]) -> None:
        self.seq, self.districts = seq, districts
        self.task_ids = np.array([t["task_id"] for t in tasks], dtype=np.int64)
        self.names = [t["name"] for t in tasks]
        district_index = {d["code"]: i for i, d in enumerate(districts)}
        self.district_of = np.array([district_index.get(t["district_code"], -1) for t in tasks], dtype=np.int64)
        self.starts_at = np.array([t["starts_at"] for t in tasks], dtype=np.int64)
        self.ends_at = np.array([t["ends_at"] for t in tasks], dtype=np.int64)
        self.enabled = np.array([t["enabled"] for t in tasks], dtype=np.bool_)
        self.prize_types = sorted({p["prize_type"] for t in tasks for p in t["prizes"]})
        code = {p: i for i, p in enumerate(self.prize_types)}
        slots = [(i, code[p["prize_type"]], p["quota"], rate_milli(p.get("rate_per_s")))
                 for i, t in enumerate(tasks) for p in t["prizes"]]
        self.slot_task = np.array([s[0] for s in slots], dtype=np.int64)
        self.slot_prize = np.array([s[1] for s in slots], dtype=np.int64)
        # The quota and rate in force: the snapshot's until the ledger's counters say otherwise (a live change).
        self.slot_quota = np.array([s[2] for s in slots], dtype=np.int64)
        self.slot_rate = np.array([s[3] for s in slots], dtype=np.int64)
        keys = self.task_ids[self.slot_task] * len(self.prize_types) + self.slot_prize
        self._task_order = np.argsort(self.task_ids)
        self._key_order = np.argsort(keys)
        self._sorted_keys = keys[self._key_order]
        self._code = code
        self.remaining = self.slot_quota.copy()  # a prize with no counter yet has all its quota left

    def positions(self, task_ids: IntArray) -> IntArray:
        """Return the position of each task id in this index, -1 for a task it does not hold."""
        if not len(self.task_ids):
            return np.full(len(task_ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.task_ids, task_ids, sorter=self._task_order), len(self.task_ids) - 1)
        found = self._task_order[at]
        return np.where(self.task_ids[found] == task_ids, found, -1)

    def apply(self, counters: Counters) -> None:
        """Take the counts of the counters read (a page or a delta); the others keep theirs."""
        if not len(counters) or not len(self._sorted_keys):
            return
        codes = np.array([self._code.get(p, -1) for p in counters.prize_type], dtype=np.int64)
        keys = counters.task_id * len(self.prize_types) + codes
        pos = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
        known = (codes >= 0) & (self._sorted_keys[pos] == keys)  # counters of tasks not in this snapshot drop out
        slots = self._key_order[pos[known]]
        self.remaining[slots] = np.maximum(counters.left, 0)[known]
        self.slot_quota[slots] = counters.quota[known]
        self.slot_rate[slots] = counters.rate_milli[known]

    def statuses(self, now_s: int, disabled: frozenset[int]) -> IntArray:
        """Return each task's status code, by precedence: ended, disabled, upcoming, exhausted, active."""
        left = np.bincount(self.slot_task, weights=self.remaining, minlength=len(self.task_ids))
        enabled = self.enabled & ~np.isin(self.task_ids, np.fromiter(disabled, dtype=np.int64))
        status = np.full(len(self.task_ids), ACTIVE, dtype=np.int64)
        status[left == 0] = EXHAUSTED
        status[now_s < self.starts_at] = UPCOMING
        status[~enabled] = DISABLED
        status[now_s >= self.ends_at] = ENDED
        return status

    def matrix(self, values: IntArray, absent: int = -1) -> IntArray:
        """Return slot values per task (rows) and prize type (columns); `absent` where a task lacks that prize."""
        matrix = np.full((len(self.task_ids), len(self.prize_types)), absent, dtype=np.int64)
        matrix[self.slot_task, self.slot_prize] = values
        return matrix

    def issued(self) -> tuple[IntArray, IntArray]:
        """Return what has been issued so far per district and per prize type (every task, whatever its status)."""
        issued = np.maximum(self.slot_quota - self.remaining, 0)
        slot_district = self.district_of[self.slot_task]
        known = slot_district >= 0
        by_district = np.bincount(slot_district[known], weights=issued[known], minlength=len(self.districts))
        by_prize = np.bincount(self.slot_prize, weights=issued, minlength=len(self.prize_types))
        return by_district.astype(np.int64), by_prize.astype(np.int64)

    def district_totals(self, status: IntArray) -> list[dict[str, Any]]:
        """Return each district's remaining prizes and their quotas (over active and upcoming tasks) and its
        tasks by status."""
        n_d, n_p = len(self.districts), len(self.prize_types)
        slot_district = self.district_of[self.slot_task]
        live = np.isin(status[self.slot_task], (ACTIVE, UPCOMING)) & (slot_district >= 0)
        cell = slot_district[live] * n_p + self.slot_prize[live]
        sums = np.bincount(cell, weights=self.remaining[live], minlength=n_d * n_p).reshape(n_d, n_p).astype(np.int64)
        quotas = np.bincount(cell, weights=self.slot_quota[live], minlength=n_d * n_p).reshape(n_d, n_p).astype(np.int64)
        present = np.bincount(cell, minlength=n_d * n_p).reshape(n_d, n_p) > 0
        known = self.district_of >= 0
        counts = np.bincount(self.district_of[known] * len(STATUSES) + status[known],
                             minlength=n_d * len(STATUSES)).reshape(n_d, len(STATUSES))
        sums_l, quotas_l, present_l, counts_l = sums.tolist(), quotas.tolist(), present.tolist(), counts.tolist()
        return [
            {"code": d["code"], "name": d["name"],
             "remaining": {p: v for p, v, here in zip(self.prize_types, sums_l[i], present_l[i]) if here},
             "quota": {p: v for p, v, here in zip(self.prize_types, quotas_l[i], present_l[i]) if here},
             "tasks": dict(zip(STATUSES, counts_l[i]))}
            for i, d in enumerate(self.districts)
        ]


def load_index(folder: Path, seq: int) -> Aggregator:
    """Return the index of the snapshot in `folder`, every prize at its full quota until counters arrive."""
    tasks, districts = read_tables(folder)
    try:
        return Aggregator(seq, tasks, districts)
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{folder}: malformed task or district table: {exc!r}") from None
