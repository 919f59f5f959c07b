"""POI sets in the draft: which set a task's points go to, writing a set's points, and what the exclusion zones drop.

A set's points are written by id: kept ids are updated in place (other columns of the row, a POI's name, stay),
removed ones deleted, new ones inserted with ids above any the draft or the save holds.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import orjson

from loaders.pois import PoiColumns
from loaders.records import Zone
from loaders.screening import zone_index
from placement.db import Cursor

BATCH = 5000  # rows a statement
MAX_POI_ID = 10**18 - 1  # the build reads ids of up to 18 digits
CHUNK = 200_000  # POIs screened at a time: the drop counts stream over any draft in bounded memory


class Refused(ValueError):
    """A save the draft cannot take as it stands (a poi_id of another set, a live field changed); nothing is kept."""

    def __init__(self, field: str, reason: str, row: str = "points") -> None:
        super().__init__(reason)
        self.field = field
        self.row = row


def next_value(cur: Cursor, sql: str) -> int:
    """One more than the largest value `sql` selects (1 on an empty table)."""
    row = cur.execute(sql).one()
    return int(row[0] or 0) + 1 if row else 1


def set_points(cur: Cursor, set_id: int) -> tuple[list[int], list[float], list[float]]:
    rows = cur.execute("SELECT poi_id, lat, lng FROM pois WHERE poi_set_id = %s", (set_id,)).all()
    return [int(r[0]) for r in rows], [float(r[1]) for r in rows], [float(r[2]) for r in rows]


def digest(ids: list[int], lats: list[float], lngs: list[float]) -> str:
    """A short fingerprint of a set's points, for the audit (which keeps counts, not copies)."""
    return hashlib.sha256(orjson.dumps(sorted(zip(ids, lats, lngs)))).hexdigest()[:16]


def set_for(cur: Cursor, task_id: int, current: int | None, named: int | None, points_given: bool) -> int:
    """The set a task will use: the one named; else its own, kept while its points are not edited, or a new one
    when they are and another task shares it (editing one task's points must not move another's)."""
    if named is not None:
        if not points_given and not cur.execute("SELECT 1 FROM pois WHERE poi_set_id = %s LIMIT 1", (named,)).one():
            raise Refused("poi_set_id", f"POI set {named} has no points", row="task")
        return named
    shared = current is not None and cur.execute("SELECT 1 FROM tasks WHERE poi_set_id = %s AND task_id <> %s LIMIT 1",
                                                 (current, task_id)).one()
    if current is not None and (not points_given or not shared):
        return current
    return max(next_value(cur, "SELECT MAX(poi_set_id) FROM pois"), next_value(cur, "SELECT MAX(poi_set_id) FROM tasks"))


def _owners(cur: Cursor, ids: list[int], set_id: int) -> dict[int, int]:
    """Which other sets hold any of `ids`."""
    found: dict[int, int] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        marks = ", ".join(["%s"] * len(chunk))
        found.update(cur.execute(f"SELECT poi_id, poi_set_id FROM pois WHERE poi_id IN ({marks}) AND poi_set_id <> %s",
                                 (*chunk, set_id)).all())
    return found


def replace_points(cur: Cursor, set_id: int, points: PoiColumns, copied_from: int | None) -> dict[str, int]:
    """Make the set hold exactly `points`. A given id of another set is refused, except the set this one is copied
    from (a shared set being split off): those points get new ids in the copy."""
    ids = points.poi_id.copy()
    owners = _owners(cur, [int(i) for i in ids[ids != 0].tolist()], set_id)
    if copied_from is not None:
        ids[np.isin(ids, [i for i, s in owners.items() if s == copied_from])] = 0
        owners = {i: s for i, s in owners.items() if s != copied_from}
    if owners:
        poi_id, other = next(iter(owners.items()))
        raise Refused("poi_id", f"poi_id {poi_id} belongs to POI set {other}; leave it empty for a new id")
    fresh = np.flatnonzero(ids == 0)
    first = max(next_value(cur, "SELECT MAX(poi_id) FROM pois"), int(ids.max(initial=0)) + 1)
    if len(fresh) and first + len(fresh) - 1 > MAX_POI_ID:
        raise Refused("poi_id", f"no room for {len(fresh)} new ids above {first - 1}: the build reads ids of up to 18 "
                                "digits; give smaller ids")
    ids[fresh] = np.arange(len(fresh), dtype=np.int64) + first
    old = _positions(cur, set_id)
    new = dict(zip(ids.tolist(), zip(points.lat.tolist(), points.lng.tolist())))
    gone = [i for i in old if i not in new]
    moved = [(lat, lng, i) for i, (lat, lng) in new.items() if i in old and old[i] != (lat, lng)]
    added = [(i, set_id, lat, lng) for i, (lat, lng) in new.items() if i not in old]
    for start in range(0, len(gone), 1000):
        chunk = gone[start:start + 1000]
        cur.execute(f"DELETE FROM pois WHERE poi_id IN ({', '.join(['%s'] * len(chunk))})", chunk)
    for start in range(0, len(moved), BATCH):
        cur.many("UPDATE pois SET lat = %s, lng = %s WHERE poi_id = %s", moved[start:start + BATCH])
    for start in range(0, len(added), BATCH):
        cur.many("INSERT INTO pois (poi_id, poi_set_id, lat, lng) VALUES (%s, %s, %s, %s)", added[start:start + BATCH])
    return {"pois_added": len(added), "pois_removed": len(gone), "pois_moved": len(moved)}


def _positions(cur: Cursor, set_id: int) -> dict[int, tuple[float, float]]:
    ids, lats, lngs = set_points(cur, set_id)
    return dict(zip(ids, zip(lats, lngs)))


def drop_if_unused(cur: Cursor, set_id: int) -> int:
    """Delete a set's points when no task uses the set any more; return how many."""
    if cur.execute("SELECT 1 FROM tasks WHERE poi_set_id = %s LIMIT 1", (set_id,)).one():
        return 0
    count = cur.execute("SELECT COUNT(*) FROM pois WHERE poi_set_id = %s", (set_id,)).one()
    cur.execute("DELETE FROM pois WHERE poi_set_id = %s", (set_id,))
    return int(count[0]) if count else 0


def zone_drops(cur: Cursor, zones: list[Zone]) -> list[dict[str, Any]]:
    """How many POIs of which tasks each zone drops (the first zone listed that holds a point, as the build counts),
    streamed over the POIs CHUNK at a time."""
    users: dict[int, list[int]] = {}
    for task_id, set_id in cur.execute("SELECT task_id, poi_set_id FROM tasks").all():
        users.setdefault(int(set_id), []).append(int(task_id))
    drops: list[dict[int, int]] = [{} for _ in zones]
    cur.execute("SELECT poi_set_id, lat, lng FROM pois")
    while rows := cur.fetch(CHUNK):
        sets, lats, lngs = (np.array(c) for c in zip(*rows))
        which = zone_index(zones, lats.astype(np.float64), lngs.astype(np.float64))
        for k in np.flatnonzero(which >= 0).tolist():
            for task_id in users.get(int(sets[k]), ()):
                drops[which[k]][task_id] = drops[which[k]].get(task_id, 0) + 1
    return [{"id": z.zone_id, "pois": sum(d.values()), "tasks": [{"task_id": t, "pois": n} for t, n in sorted(d.items())]}
            for z, d in zip(zones, drops)]
