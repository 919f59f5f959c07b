"""What a new snapshot changes against the live one: tasks added, removed and changed (fields and quotas), and
each task's POIs added, removed and moved. Read from the two snapshots' own tables and rows, so it shows what the
build made of the draft (screening included), not what the draft says."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from geo_service.snapshot.format import Snapshot, TaskRow

FIELDS = ("name", "district_code", "poi_set_id", "starts_at", "ends_at", "enabled", "stagger_s", "stagger_groups")
LISTED = 500  # tasks listed per kind of change; all are counted


def _pois_by_task(snap: Snapshot | None) -> dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Each task's POI ids (sorted) and their packed positions, from the snapshot's rows."""
    if snap is None or not len(snap.task_index):
        return {}
    order = np.lexsort((snap.poi_ids, snap.task_index))
    tasks, ids = snap.task_index[order], snap.poi_ids[order]
    where = (snap.lats[order].astype(np.int64) << 32) | (snap.lngs[order].astype(np.int64) & 0xFFFFFFFF)
    cuts = np.flatnonzero(np.diff(tasks)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(tasks)]])
    return {int(snap.tasks[int(tasks[a])]["task_id"]): (ids[a:b], where[a:b]) for a, b in zip(starts, ends)}


def _quota_changes(old: TaskRow, new: TaskRow) -> dict[str, list[int | None]]:
    before = {p["prize_type"]: p["quota"] for p in old["prizes"]}
    after = {p["prize_type"]: p["quota"] for p in new["prizes"]}
    return {t: [before.get(t), after.get(t)] for t in sorted(before.keys() | after.keys()) if before.get(t) != after.get(t)}


def _point_changes(old: tuple[Any, Any] | None, new: tuple[Any, Any] | None) -> dict[str, int]:
    empty = (np.empty(0, np.int64), np.empty(0, np.int64))
    (old_ids, old_at), (new_ids, new_at) = old or empty, new or empty
    common, i, j = np.intersect1d(old_ids, new_ids, assume_unique=True, return_indices=True)
    return {"pois_added": int(len(new_ids) - len(common)), "pois_removed": int(len(old_ids) - len(common)),
            "pois_moved": int((old_at[i] != new_at[j]).sum())}


def compare(live: Snapshot | None, new: Snapshot) -> dict[str, Any]:
    """Return the changes from `live` (None: nothing published yet) to `new`."""
    old_tasks = {t["task_id"]: t for t in live.tasks} if live else {}
    new_tasks = {t["task_id"]: t for t in new.tasks}
    old_pois, new_pois = _pois_by_task(live), _pois_by_task(new)
    added: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for task_id in sorted(old_tasks.keys() | new_tasks.keys()):
        old, now = old_tasks.get(task_id), new_tasks.get(task_id)
        points = _point_changes(old_pois.get(task_id), new_pois.get(task_id))
        if old is None and now is not None:
            added.append({"task_id": task_id, "name": now["name"], "pois": now["pois"]})
        elif now is None and old is not None:
            removed.append({"task_id": task_id, "name": old["name"], "pois": old["pois"]})
        elif old is not None and now is not None:
            fields = {f: [old[f], now[f]] for f in FIELDS if old[f] != now[f]}  # type: ignore[literal-required]
            quotas = _quota_changes(old, now)
            prizes = old["prizes"] != now["prizes"]
            if fields or quotas or prizes or any(points.values()):
                changed.append({"task_id": task_id, "name": now["name"], "fields": fields, "quotas": quotas,
                                "prizes_changed": prizes, **points})
    return {
        "tasks_added": added[:LISTED], "tasks_removed": removed[:LISTED], "tasks_changed": changed[:LISTED],
        "totals": {"tasks_added": len(added), "tasks_removed": len(removed), "tasks_changed": len(changed),
                   "pois_added": sum(c["pois_added"] for c in changed) + sum(a["pois"] for a in added),
                   "pois_removed": sum(c["pois_removed"] for c in changed) + sum(r["pois"] for r in removed),
                   "pois_moved": sum(c["pois_moved"] for c in changed)},
    }
