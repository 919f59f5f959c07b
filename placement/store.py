"""The draft's reads and writes: tasks with their prizes and points, exclusion zones, optimistic versions and the
audit. Each function is one unit of work on a Cursor (placement/db.py runs it in one transaction).

Every task and zone has a version (console_versions, 0 when it has never been saved through the console). A save
names the version it was based on; if another save came between, it is refused with the audit entries that came
between (who, when, what changed), never applied over them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import shapely

from loaders.pois import PoiColumns
from loaders.records import District, Prize, Task, Zone, parse_district, parse_zone
from placement.db import Cursor

TASK_COLUMNS = "task_id, name, district_code, poi_set_id, starts_at, ends_at, enabled, stagger_s, stagger_groups"


class Conflict(Exception):
    """The thing changed since the version the save was based on."""

    def __init__(self, target: str, based_on: int, now: int, changes: list[dict[str, Any]]) -> None:
        super().__init__(f"{target} is at version {now}, not {based_on}: saved by someone else since you loaded it")
        self.target, self.based_on, self.now, self.changes = target, based_on, now, changes


class Refused(ValueError):
    """A save the draft cannot take as it stands (a poi_id of another set, a set with no points); nothing is kept."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


class Missing(Exception):
    """No such task or zone."""


@dataclass(frozen=True, slots=True)
class TaskSave:
    """A checked save: the task (its task_id and poi_set_id are filled here), its prizes, and either the points of
    its set (replacing them) or an existing set to use."""

    task: Task
    prizes: list[Prize]
    points: PoiColumns | None
    poi_set_id: int | None


def version(cur: Cursor, target: str) -> int:
    row = cur.execute("SELECT version FROM console_versions WHERE target = %s", (target,)).one()
    return int(row[0]) if row else 0


def _bump(cur: Cursor, target: str, based_on: int) -> int:
    now = version(cur, target)
    if now != based_on:
        raise Conflict(target, based_on, now, audit(cur, target=target, after_version=based_on))
    if now:
        cur.execute("UPDATE console_versions SET version = %s WHERE target = %s", (now + 1, target))
    else:
        cur.execute("INSERT INTO console_versions (target, version) VALUES (%s, %s)", (target, 1))
    return now + 1


def record(cur: Cursor, who: str, action: str, target: str, at_version: int, detail: dict[str, Any]) -> int:
    """Append an audit entry; return its id (the draft's revision)."""
    cur.execute("INSERT INTO console_audit (at, who, action, target, version, detail) VALUES (%s, %s, %s, %s, %s, %s)",
                (time.time(), who, action, target, at_version, orjson.dumps(detail).decode()))
    return cur.lastrowid


def audit(cur: Cursor, target: str | None = None, after_version: int = 0, limit: int = 200) -> list[dict[str, Any]]:
    """The newest audit entries first (of one target, past a version, when given)."""
    where, params = ("WHERE target = %s AND version > %s", [target, after_version]) if target else ("", [])
    rows = cur.execute(f"SELECT id, at, who, action, target, version, detail FROM console_audit {where} "
                       f"ORDER BY id DESC LIMIT {int(limit)}", params).all()
    return [{"id": r[0], "at": r[1], "who": r[2], "action": r[3], "target": r[4], "version": r[5],
             **orjson.loads(r[6])} for r in rows]


def revision(cur: Cursor) -> int:
    """The draft's revision: the newest edit's audit id (0 for a draft never changed through the console); publishes
    and rollbacks are audited too but change no draft."""
    row = cur.execute("SELECT MAX(id) FROM console_audit WHERE target NOT LIKE %s", ("snapshot:%",)).one()
    return int(row[0]) if row and row[0] is not None else 0


def districts(cur: Cursor) -> dict[int, District]:
    return {d.code: d for d in (parse_district({"code": c, "name": n, "parent_code": p}, g)
                                for c, n, p, g in cur.execute("SELECT code, name, parent_code, geojson FROM districts").all())}


def zones(cur: Cursor) -> list[Zone]:
    rows = cur.execute("SELECT id, reason, geojson FROM exclusion_zones ORDER BY id").all()
    return [parse_zone({"id": i, "reason": r}, g) for i, r, g in rows]


def _task_json(row: tuple[Any, ...], prizes: list[dict[str, Any]]) -> dict[str, Any]:
    names = TASK_COLUMNS.split(", ")
    task = dict(zip(names, row))
    task["enabled"] = bool(task["enabled"])
    task["stagger_s"] = task["stagger_s"] or 0
    task["stagger_groups"] = task["stagger_groups"] or (5 if task["stagger_s"] else 1)
    return {**task, "prizes": prizes}


def _prizes(cur: Cursor) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {}
    for t, p, q, w, r in cur.execute("SELECT task_id, prize_type, quota, weight, rate_per_s FROM task_prizes "
                                     "ORDER BY task_id, prize_type").all():
        found.setdefault(int(t), []).append({"prize_type": p, "quota": int(q), "weight": float(w),
                                             "rate_per_s": None if r is None else float(r)})
    return found


def overview(cur: Cursor) -> dict[str, Any]:
    """Every task (with prizes, its set's size and its version), zone and district name: the console's lists."""
    prizes, versions = _prizes(cur), dict(cur.execute("SELECT target, version FROM console_versions").all())
    sets = dict(cur.execute("SELECT poi_set_id, COUNT(*) FROM pois GROUP BY poi_set_id").all())
    tasks = []
    for row in cur.execute(f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY task_id").all():
        task = _task_json(row, prizes.get(int(row[0]), []))
        tasks.append({**task, "pois": int(sets.get(task["poi_set_id"], 0)), "version": versions.get(f"task:{row[0]}", 0)})
    zone_rows = cur.execute("SELECT id, reason, geojson FROM exclusion_zones ORDER BY id").all()
    return {
        "revision": revision(cur),
        "districts": [{"code": c, "name": n} for c, n in cur.execute("SELECT code, name FROM districts ORDER BY code").all()],
        "tasks": tasks,
        "zones": [{"id": i, "reason": r or "", "geometry": orjson.loads(g), "version": versions.get(f"zone:{i}", 0)}
                  for i, r, g in zone_rows],
        "poi_sets": {str(k): int(v) for k, v in sets.items()},
    }


def task_detail(cur: Cursor, task_id: int) -> dict[str, Any]:
    """One task with its prizes, version and every point of its set ([poi_id, lat, lng])."""
    row = cur.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = %s", (task_id,)).one()
    if row is None:
        raise Missing(f"no task {task_id} in the draft")
    task = _task_json(row, _prizes(cur).get(task_id, []))
    points = cur.execute("SELECT poi_id, lat, lng FROM pois WHERE poi_set_id = %s ORDER BY poi_id", (task["poi_set_id"],)).all()
    users = [t for (t,) in cur.execute("SELECT task_id FROM tasks WHERE poi_set_id = %s AND task_id <> %s",
                                       (task["poi_set_id"], task_id)).all()]
    return {**task, "version": version(cur, f"task:{task_id}"), "points": [list(p) for p in points],
            "set_shared_with": users}


def _points_digest(ids: list[int], lats: list[float], lngs: list[float]) -> str:
    body = orjson.dumps(sorted(zip(ids, lats, lngs)))
    return hashlib.sha256(body).hexdigest()[:16]


def _summary(cur: Cursor, task_id: int) -> dict[str, Any] | None:
    """A task as the audit keeps it: its fields and prizes, its set's size and a digest of its points."""
    row = cur.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = %s", (task_id,)).one()
    if row is None:
        return None
    task = _task_json(row, _prizes(cur).get(task_id, []))
    ids, lats, lngs = _set_points(cur, task["poi_set_id"])
    return {**task, "points": {"count": len(ids), "digest": _points_digest(ids, lats, lngs)}}


def _set_points(cur: Cursor, set_id: int) -> tuple[list[int], list[float], list[float]]:
    rows = cur.execute("SELECT poi_id, lat, lng FROM pois WHERE poi_set_id = %s", (set_id,)).all()
    return [int(r[0]) for r in rows], [float(r[1]) for r in rows], [float(r[2]) for r in rows]


def _next(cur: Cursor, sql: str) -> int:
    row = cur.execute(sql).one()
    return int(row[0] or 0) + 1 if row else 1


def _replace_points(cur: Cursor, set_id: int, points: PoiColumns) -> dict[str, int]:
    """Make the set hold exactly `points`: given ids are kept (unless another set holds them), others allocated."""
    old_ids = set(_set_points(cur, set_id)[0])
    ids = points.poi_id.copy()
    given = [int(i) for i in ids[ids != 0].tolist()]
    for start in range(0, len(given), 1000):
        chunk = given[start:start + 1000]
        marks = ", ".join(["%s"] * len(chunk))
        taken = cur.execute(f"SELECT poi_id, poi_set_id FROM pois WHERE poi_id IN ({marks}) AND poi_set_id <> %s",
                            (*chunk, set_id)).all()
        if taken:
            raise Refused("poi_id", f"poi_id {taken[0][0]} belongs to POI set {taken[0][1]}; leave it empty for a new id")
    fresh = np.flatnonzero(ids == 0)
    ids[fresh] = np.arange(len(fresh)) + _next(cur, "SELECT MAX(poi_id) FROM pois")
    cur.execute("DELETE FROM pois WHERE poi_set_id = %s", (set_id,))
    rows = list(zip(ids.tolist(), [set_id] * len(ids), points.lat.tolist(), points.lng.tolist()))
    for start in range(0, len(rows), 5000):
        cur.many("INSERT INTO pois (poi_id, poi_set_id, lat, lng) VALUES (%s, %s, %s, %s)", rows[start:start + 5000])
    new_ids = set(ids.tolist())
    return {"pois_added": len(new_ids - old_ids), "pois_removed": len(old_ids - new_ids)}


def _set_for(cur: Cursor, task_id: int, current_set: int | None, save: TaskSave) -> int:
    """The set the task will use: the one named; else its own, kept while its points are not edited, or a new one
    when they are and another task shares it (editing one task's points must not move another's)."""
    if save.poi_set_id is not None:
        if save.points is None and not cur.execute("SELECT 1 FROM pois WHERE poi_set_id = %s LIMIT 1",
                                                   (save.poi_set_id,)).one():
            raise Refused("poi_set_id", f"POI set {save.poi_set_id} has no points")
        return save.poi_set_id
    shared = current_set is not None and cur.execute("SELECT 1 FROM tasks WHERE poi_set_id = %s AND task_id <> %s LIMIT 1",
                                                     (current_set, task_id)).one()
    if current_set is not None and (save.points is None or not shared):
        return current_set
    return max(_next(cur, "SELECT MAX(poi_set_id) FROM pois"), _next(cur, "SELECT MAX(poi_set_id) FROM tasks"))


def save_task(cur: Cursor, who: str, task_id: int | None, based_on: int, save: TaskSave) -> dict[str, Any]:
    """Create (task_id None) or replace a task, its prizes and, when given, its points; return its new detail."""
    if task_id is None:
        task_id = _next(cur, "SELECT MAX(task_id) FROM tasks")
    before = _summary(cur, task_id)
    if before is None and based_on:
        raise Missing(f"no task {task_id} in the draft (it was deleted)")
    if save.points is None and save.poi_set_id is None and before is None:
        raise Refused("points", "a new task needs points or an existing poi_set_id")
    new_version = _bump(cur, f"task:{task_id}", based_on)
    set_id = _set_for(cur, task_id, before["poi_set_id"] if before else None, save)
    moved = {"pois_added": 0, "pois_removed": 0}
    if save.points is not None:
        moved = _replace_points(cur, set_id, save.points)
    t = save.task
    cur.execute("DELETE FROM tasks WHERE task_id = %s", (task_id,))
    cur.execute(f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (task_id, t.name, t.district_code, set_id, t.starts_at, t.ends_at, int(t.enabled), t.stagger_s,
                 t.stagger_groups))
    cur.execute("DELETE FROM task_prizes WHERE task_id = %s", (task_id,))
    cur.many("INSERT INTO task_prizes (task_id, prize_type, quota, weight, rate_per_s) VALUES (%s, %s, %s, %s, %s)",
             [(task_id, p.prize_type, p.quota, p.weight, p.rate_per_s) for p in save.prizes])
    after = _summary(cur, task_id) or {}
    changed = [k for k in after if before is None or before.get(k) != after[k]]
    record(cur, who, "create_task" if before is None else "update_task", f"task:{task_id}", new_version,
           {"before": before, "after": after, "changed": changed, **moved})
    return task_detail(cur, task_id)


def delete_task(cur: Cursor, who: str, task_id: int, based_on: int) -> None:
    """Delete a task and its prizes, and its set's points when no other task uses them."""
    before = _summary(cur, task_id)
    if before is None:
        raise Missing(f"no task {task_id} in the draft")
    new_version = _bump(cur, f"task:{task_id}", based_on)
    cur.execute("DELETE FROM tasks WHERE task_id = %s", (task_id,))
    cur.execute("DELETE FROM task_prizes WHERE task_id = %s", (task_id,))
    if not cur.execute("SELECT 1 FROM tasks WHERE poi_set_id = %s LIMIT 1", (before["poi_set_id"],)).one():
        cur.execute("DELETE FROM pois WHERE poi_set_id = %s", (before["poi_set_id"],))
    record(cur, who, "delete_task", f"task:{task_id}", new_version, {"before": before, "after": None})


def _zone_json(zone: Zone | None) -> dict[str, Any] | None:
    if zone is None:
        return None
    return {"id": zone.zone_id, "reason": zone.reason, "geometry": orjson.loads(shapely.to_geojson(zone.geometry))}


def save_zone(cur: Cursor, who: str, zone: Zone | None, zone_id: str, based_on: int) -> None:
    """Create or replace an exclusion zone (zone None: delete it)."""
    before = next((z for z in zones(cur) if z.zone_id == zone_id), None)
    if before is None and zone is None:
        raise Missing(f"no exclusion zone {zone_id!r} in the draft")
    new_version = _bump(cur, f"zone:{zone_id}", based_on)
    cur.execute("DELETE FROM exclusion_zones WHERE id = %s", (zone_id,))
    if zone is not None:
        cur.execute("INSERT INTO exclusion_zones (id, reason, geojson) VALUES (%s, %s, %s)",
                    (zone.zone_id, zone.reason, shapely.to_geojson(zone.geometry)))
    action = "delete_zone" if zone is None else ("create_zone" if before is None else "update_zone")
    record(cur, who, action, f"zone:{zone_id}", new_version, {"before": _zone_json(before), "after": _zone_json(zone)})


def all_points(cur: Cursor) -> tuple[list[tuple[int, int]], PoiColumns]:
    """Every task's (task_id, poi_set_id) and every POI: what the zones' drop counts are computed from."""
    tasks = [(int(t), int(s)) for t, s in cur.execute("SELECT task_id, poi_set_id FROM tasks").all()]
    rows = cur.execute("SELECT poi_id, poi_set_id, lat, lng FROM pois").all()
    ids, sets, lats, lngs = (list(c) for c in zip(*rows)) if rows else ([], [], [], [])
    return tasks, PoiColumns(np.array(ids, np.int64), np.array(sets, np.int64), np.array(lats, np.float64),
                             np.array(lngs, np.float64), np.zeros(len(ids), np.int64))
