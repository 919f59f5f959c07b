"""The draft's reads and writes: tasks with their prizes, exclusion zones, optimistic versions and the audit. Each
function is one unit of work on a Cursor (placement/db.py runs it in one transaction); POI sets are points.py's.

Every task and zone has a version (console_versions, 0 when it has never been saved through the console). A save
names the version it was based on; if another save came between, it is refused with the audit entries that came
between (who, when, what changed), never applied over them. The draft's revision counts its edits: a publish names
the revision it previewed.

A task in the live snapshot has live fields, its prizes' quotas and rates and its kill switch: the ledger holds
them from the first snapshot on (a later snapshot only seeds prizes it lacks), so they change through the
collector's live routes, which the draft then follows (live_follow), never through an ordinary save.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
import shapely

from geo_service.snapshot.format import TaskRow
from loaders.pois import PoiColumns
from loaders.records import District, FieldError, Prize, Task, Zone, parse_district, parse_zone
from placement.db import Cursor
from placement.points import Refused, digest, drop_if_unused, next_value, replace_points, set_for, set_points

log = logging.getLogger("geodrop.console")

TASK_COLUMNS = "task_id, name, district_code, poi_set_id, starts_at, ends_at, enabled, stagger_s, stagger_groups"


class Conflict(Exception):
    """The thing changed since the version the save was based on."""

    def __init__(self, target: str, based_on: int, now: int, changes: list[dict[str, Any]]) -> None:
        super().__init__(f"{target} is at version {now}, not {based_on}: saved by someone else since you loaded it")
        self.target, self.based_on, self.now, self.changes = target, based_on, now, changes


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


def mark_published(cur: Cursor, tasks: list[TaskRow]) -> None:
    """Remember every task and prize a snapshot carried: the ledger holds their counters and switches from then
    on, whatever later snapshots say (a prize_type of '' stands for the task itself)."""
    rows = [(t["task_id"], p) for t in tasks for p in ["", *(prize["prize_type"] for prize in t["prizes"])]]
    for start in range(0, len(rows), 5000):
        cur.many(f"{cur.insert_ignore} INTO console_published (task_id, prize_type) VALUES (%s, %s)", rows[start:start + 5000])


def mark_draft_published(cur: Cursor) -> None:
    """Mark every task and prize of the draft as published: done, in the transaction that checks the revision,
    before a publish builds that revision, so no save can slip a live field past the rule meanwhile (if the build
    then fails, they stay marked: the safe side)."""
    for select in ("SELECT task_id, '' FROM tasks", "SELECT task_id, prize_type FROM task_prizes"):
        cur.execute(f"{cur.insert_ignore} INTO console_published (task_id, prize_type) {select}")


def published(cur: Cursor, task_id: int) -> set[str] | None:
    """The prize types of a task that a snapshot ever carried (None: the task was never published)."""
    types = {p for (p,) in cur.execute("SELECT prize_type FROM console_published WHERE task_id = %s", (task_id,)).all()}
    return None if "" not in types else types - {""}


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


def _bump_anyway(cur: Cursor, target: str) -> int:
    return _bump(cur, target, version(cur, target))


def record(cur: Cursor, who: str, action: str, target: str, at_version: int, detail: dict[str, Any]) -> int:
    """Append an audit entry; an edit of the draft (not a publish or a rollback) moves its revision on."""
    if not target.startswith("snapshot:"):
        _bump_anyway(cur, "draft")
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
    """The draft's revision: how many edits it has had through the console."""
    return version(cur, "draft")


def districts(cur: Cursor) -> dict[int, District]:
    """The districts that parse; one that does not is logged and left out (the build names it; the console must
    still start, and its tasks are then refused as in an unknown district)."""
    found = {}
    for c, n, p, g in cur.execute("SELECT code, name, parent_code, geojson FROM districts").all():
        try:
            found[int(c)] = parse_district({"code": c, "name": n, "parent_code": p}, g)
        except FieldError as exc:
            log.warning("district left out", extra={"code": c, "problem": str(exc)})
    return found


def _parsed_zones(cur: Cursor) -> list[tuple[str, str, Zone | None, str]]:
    """Every zone row: its id, reason, the zone if it parses, else the problem."""
    found: list[tuple[str, str, Zone | None, str]] = []
    for i, r, g in cur.execute("SELECT id, reason, geojson FROM exclusion_zones ORDER BY id").all():
        try:
            found.append((i, r or "", parse_zone({"id": i, "reason": r}, g), ""))
        except FieldError as exc:
            found.append((i, r or "", None, str(exc)))
    return found


def zones(cur: Cursor) -> list[Zone]:
    """The exclusion zones that parse (one that does not is listed with its problem by overview, to be replaced or
    deleted; the build refuses it)."""
    return [z for _, _, z, _ in _parsed_zones(cur) if z is not None]


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
    return {
        "revision": revision(cur),
        "districts": [{"code": c, "name": n} for c, n in cur.execute("SELECT code, name FROM districts ORDER BY code").all()],
        "tasks": tasks,
        "zones": [{**({"id": i, "reason": r, "geometry": None, "problem": problem} if z is None else _zone_json(z)),
                   "version": versions.get(f"zone:{i}", 0)} for i, r, z, problem in _parsed_zones(cur)],
        "poi_sets": {str(k): int(v) for k, v in sets.items()},
    }


def task_detail(cur: Cursor, task_id: int, limit: int = 10**9) -> dict[str, Any]:
    """One task with its prizes, version, published prize types (null: never published) and the first `limit`
    points of its set ([poi_id, lat, lng]; points_total when there are more)."""
    row = cur.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = %s", (task_id,)).one()
    if row is None:
        raise Missing(f"no task {task_id} in the draft")
    task = _task_json(row, _prizes(cur).get(task_id, []))
    points = cur.execute(f"SELECT poi_id, lat, lng FROM pois WHERE poi_set_id = %s ORDER BY poi_id LIMIT {int(limit) + 1}",
                         (task["poi_set_id"],)).all()
    users = [t for (t,) in cur.execute("SELECT task_id FROM tasks WHERE poi_set_id = %s AND task_id <> %s",
                                       (task["poi_set_id"], task_id)).all()]
    types = published(cur, task_id)
    detail = {**task, "version": version(cur, f"task:{task_id}"), "points": [list(p) for p in points[:limit]],
              "set_shared_with": users, "published": None if types is None else sorted(types)}
    if len(points) > limit:
        total = cur.execute("SELECT COUNT(*) FROM pois WHERE poi_set_id = %s", (task["poi_set_id"],)).one()
        detail["points_total"] = int(total[0]) if total else len(points)
    return detail


def _summary(cur: Cursor, task_id: int) -> dict[str, Any] | None:
    """A task as the audit keeps it: its fields and prizes, its set's size and a digest of its points."""
    row = cur.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = %s", (task_id,)).one()
    if row is None:
        return None
    task = _task_json(row, _prizes(cur).get(task_id, []))
    ids, lats, lngs = set_points(cur, task["poi_set_id"])
    return {**task, "points": {"count": len(ids), "digest": digest(ids, lats, lngs)}}


def _new_task_id(cur: Cursor) -> int:
    """Above every task the draft has, has had (a deleted one keeps its version) and any snapshot carried: a new
    task never takes an id the ledger may hold counters of."""
    versioned = [int(t.removeprefix("task:")) for (t,) in
                 cur.execute("SELECT target FROM console_versions WHERE target LIKE %s", ("task:%",)).all()]
    return max(next_value(cur, "SELECT MAX(task_id) FROM tasks"), max(versioned, default=0) + 1,
               next_value(cur, "SELECT MAX(task_id) FROM console_published"))


def _live_fields(before: dict[str, Any], save: TaskSave, types: set[str]) -> None:
    """Refuse a change to a published task's live fields, its kill switch and the quota and rate of each prize a
    snapshot carried: the ledger keeps those from the first snapshot on, so a save (and a publish) could not change
    them; such a prize stays in the task (removed, or renamed, it would come back later with the ledger's values)."""
    how = "is live: change it with the live controls (no rebuild); a publish would not change the ledger's"
    if save.task.enabled != before["enabled"]:
        raise Refused("enabled", f"the kill switch of a published task {how}", row="task")
    was = {p["prize_type"]: (p["quota"], p["rate_per_s"]) for p in before["prizes"]}
    given = {p.prize_type: (i, p) for i, p in enumerate(save.prizes)}
    for prize_type in sorted(types):
        if prize_type not in given:
            raise Refused("prize_type", f"{prize_type!r} was published: it stays in the task (end it with a live quota "
                                        "of what is issued)", row="prizes")
        i, p = given[prize_type]
        if prize_type not in was:
            raise Refused("prize_type", f"{prize_type!r} was published and left the draft: the ledger still holds its "
                                        "counter; bring it back with the live controls", row=f"prizes[{i}]")
        if (p.quota, p.rate_per_s) != was[prize_type]:
            field = "quota" if p.quota != was[prize_type][0] else "rate_per_s"
            raise Refused(field, f"the {field} of {prize_type!r} {how}", row=f"prizes[{i}]")


def save_task(cur: Cursor, who: str, task_id: int | None, based_on: int, save: TaskSave,
              limit: int = 10**9) -> dict[str, Any]:
    """Create (task_id None: a new id) or update a task, its prizes and, when given, its points; return its detail."""
    creating = task_id is None
    task_id = _new_task_id(cur) if task_id is None else task_id
    before = _summary(cur, task_id)
    if before is None and not creating:
        raise Missing(f"no task {task_id} in the draft (a new task is POSTed; this one may have been deleted)")
    if save.points is None and save.poi_set_id is None and before is None:
        raise Refused("points", "a new task needs points or an existing poi_set_id")
    new_version = _bump(cur, f"task:{task_id}", based_on)  # a stale save is told what changed, before anything else
    types = published(cur, task_id)
    if before is not None and types is not None:
        _live_fields(before, save, types)
    current = before["poi_set_id"] if before else None
    set_id = set_for(cur, task_id, current, save.poi_set_id, save.points is not None)
    moved = {"pois_added": 0, "pois_removed": 0, "pois_moved": 0}
    if save.points is not None:
        moved = replace_points(cur, set_id, save.points, copied_from=current if current != set_id else None)
    t = save.task
    values = (t.name, t.district_code, set_id, t.starts_at, t.ends_at, int(t.enabled), t.stagger_s, t.stagger_groups)
    if before is None:
        cur.execute(f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", (task_id, *values))
    else:  # an update, not a replace: columns the console does not know stay as they are
        cur.execute("UPDATE tasks SET name = %s, district_code = %s, poi_set_id = %s, starts_at = %s, ends_at = %s, "
                    "enabled = %s, stagger_s = %s, stagger_groups = %s WHERE task_id = %s", (*values, task_id))
    cur.execute("DELETE FROM task_prizes WHERE task_id = %s", (task_id,))
    cur.many("INSERT INTO task_prizes (task_id, prize_type, quota, weight, rate_per_s) VALUES (%s, %s, %s, %s, %s)",
             [(task_id, p.prize_type, p.quota, p.weight, p.rate_per_s) for p in save.prizes])
    if current is not None and current != set_id:
        moved["pois_orphaned_deleted"] = drop_if_unused(cur, current)
    after = _summary(cur, task_id) or {}
    changed = [k for k in after if before is None or before.get(k) != after[k]]
    record(cur, who, "create_task" if before is None else "update_task", f"task:{task_id}", new_version,
           {"before": before, "after": after, "changed": changed, **moved})
    return task_detail(cur, task_id, limit)


def live_follow(cur: Cursor, who: str, task_id: int, action: str, changes: dict[str, Any], answer: Any) -> None:
    """The draft follows a live change the ledger made (quota, rate, kill switch): the task's version moves on, so
    an editor opened before it cannot save the old values back, and the audit holds before and after."""
    before = _summary(cur, task_id)
    if before is None:
        raise Missing(f"no task {task_id} in the draft")
    prize = changes.pop("prize_type", None)
    if prize is not None and not any(p["prize_type"] == prize for p in before["prizes"]):
        raise Missing(f"task {task_id} has no prize {prize!r} in the draft")
    for column, value in changes.items():
        if prize is None:
            cur.execute(f"UPDATE tasks SET {column} = %s WHERE task_id = %s", (value, task_id))
        else:
            cur.execute(f"UPDATE task_prizes SET {column} = %s WHERE task_id = %s AND prize_type = %s",
                        (value, task_id, prize))
    after = _summary(cur, task_id) or {}
    record(cur, who, action, f"task:{task_id}", _bump_anyway(cur, f"task:{task_id}"),
           {"before": before, "after": after, "changed": [k for k in after if before.get(k) != after[k]], "ledger": answer})


def delete_task(cur: Cursor, who: str, task_id: int, based_on: int) -> None:
    """Delete a task and its prizes, and its set's points when no other task uses them."""
    before = _summary(cur, task_id)
    if before is None:
        raise Missing(f"no task {task_id} in the draft")
    new_version = _bump(cur, f"task:{task_id}", based_on)
    cur.execute("DELETE FROM tasks WHERE task_id = %s", (task_id,))
    cur.execute("DELETE FROM task_prizes WHERE task_id = %s", (task_id,))
    dropped = drop_if_unused(cur, before["poi_set_id"])
    record(cur, who, "delete_task", f"task:{task_id}", new_version,
           {"before": before, "after": None, "pois_removed": dropped})


def _zone_json(zone: Zone) -> dict[str, Any]:
    return {"id": zone.zone_id, "reason": zone.reason, "geometry": orjson.loads(shapely.to_geojson(zone.geometry))}


def _zone_row(cur: Cursor, zone_id: str) -> dict[str, Any] | None:
    """A zone as stored, whether or not it parses (a broken one can still be replaced or deleted)."""
    row = cur.execute("SELECT reason, geojson FROM exclusion_zones WHERE id = %s", (zone_id,)).one()
    return None if row is None else {"id": zone_id, "reason": row[0] or "", "geojson": str(row[1])[:100_000]}


def save_zone(cur: Cursor, who: str, zone: Zone | None, zone_id: str, based_on: int) -> int:
    """Create or replace an exclusion zone (zone None: delete it). A zone deleted before is created anew from
    version 0, as the page sends for a new one."""
    before = _zone_row(cur, zone_id)
    if before is None and zone is None:
        raise Missing(f"no exclusion zone {zone_id!r} in the draft")
    if before is None and based_on == 0:
        based_on = version(cur, f"zone:{zone_id}")
    new_version = _bump(cur, f"zone:{zone_id}", based_on)
    cur.execute("DELETE FROM exclusion_zones WHERE id = %s", (zone_id,))
    if zone is not None:
        cur.execute("INSERT INTO exclusion_zones (id, reason, geojson) VALUES (%s, %s, %s)",
                    (zone.zone_id, zone.reason, shapely.to_geojson(zone.geometry)))
    action = "delete_zone" if zone is None else ("create_zone" if before is None else "update_zone")
    record(cur, who, action, f"zone:{zone_id}", new_version,
           {"before": before, "after": None if zone is None else _zone_json(zone)})
    return new_version
