"""The build pipeline: stream the source, validate, screen, assign cells, sort, write and publish."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from geo_service.grid import Grid
from geo_service.snapshot import write_snapshot
from loaders.display import district_outlines
from loaders.errors import ErrorLog, RowError
from loaders.pois import PoiColumns, parse_poi_chunk
from loaders.records import District, FieldError, Prize, Task, Zone, parse_district, parse_prize, parse_task, parse_zone
from loaders.screening import excluded, inside
from loaders.sources import Source, SourceRow

Progress = Callable[[str, int], None]
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """One build: where from, where to, which grid, and how strict."""

    source: str
    out: Path
    grid: Grid
    skip_bad_rows: bool = False
    keep: int = 5
    error_limit: int = 50


@dataclass(slots=True)
class Tables:
    """The small tables after validation and cross-checks, with each record's source row."""

    districts: dict[int, District] = field(default_factory=dict)
    zones: list[Zone] = field(default_factory=list)
    tasks: list[tuple[SourceRow, Task]] = field(default_factory=list)
    prizes: dict[int, list[Prize]] = field(default_factory=dict)


def _parse(rows: Iterable[SourceRow], parse: Callable[[SourceRow], R], errors: ErrorLog) -> list[tuple[SourceRow, R]]:
    parsed = []
    for row in rows:
        try:
            parsed.append((row, parse(row)))
        except FieldError as exc:
            errors.add(RowError(row.source, row.row, exc.field, exc.reason))
    return parsed


def _unique(
    pairs: list[tuple[SourceRow, R]], key: Callable[[R], Any], field_name: str, errors: ErrorLog
) -> list[tuple[SourceRow, R]]:
    seen: dict[Any, int] = {}
    kept = []
    for row, record in pairs:
        k = key(record)
        if k in seen:
            errors.add(RowError(row.source, row.row, field_name, f"duplicate {k!r} (first at row {seen[k]})"))
            continue
        seen[k] = row.row
        kept.append((row, record))
    return kept


async def read_tables(source: Source, errors: ErrorLog) -> Tables:
    """Read, parse and cross-check districts, zones, tasks and prizes."""
    districts = _parse(await source.rows("districts"), lambda r: parse_district(r.fields, r.geometry), errors)
    districts = _unique(districts, lambda d: d.code, "code", errors)
    zones = _parse(await source.rows("zones"), lambda r: parse_zone(r.fields, r.geometry), errors)
    zones = _unique(zones, lambda z: z.zone_id, "id", errors)
    tables = Tables(districts={d.code: d for _, d in districts}, zones=[z for _, z in zones])
    tasks = _parse(await source.rows("tasks"), lambda r: parse_task(r.fields), errors)
    tasks = _unique(tasks, lambda t: t.task_id, "task_id", errors)
    for row, task in tasks:
        if task.district_code in tables.districts:
            tables.tasks.append((row, task))
        else:
            errors.add(RowError(row.source, row.row, "district_code", f"unknown district {task.district_code}"))
    task_ids = {t.task_id for _, t in tables.tasks}
    prizes = _parse(await source.rows("prizes"), lambda r: parse_prize(r.fields), errors)
    for row, prize in _unique(prizes, lambda p: (p.task_id, p.prize_type), "prize_type", errors):
        if prize.task_id in task_ids:
            tables.prizes.setdefault(prize.task_id, []).append(prize)
        else:
            errors.add(RowError(row.source, row.row, "task_id", f"unknown task {prize.task_id}"))
    tables.tasks.sort(key=lambda pair: pair[1].task_id)
    return tables


@dataclass(slots=True)
class PoiStream:
    """What streaming the POIs leaves: the valid POIs, which fall in exclusion zones, the sets seen, the counts."""

    label: str
    pois: PoiColumns
    in_zone: npt.NDArray[np.bool_]
    sets_seen: npt.NDArray[np.int64]
    read: int
    excluded_by_zone: dict[str, int]


async def stream_pois(source: Source, zones: list[Zone], errors: ErrorLog, progress: Progress) -> PoiStream:
    """Validate and screen the POI stream chunk by chunk, keeping compact columns only."""
    parts: list[PoiColumns] = []
    sets: list[npt.NDArray[np.int64]] = []
    drops: list[npt.NDArray[np.bool_]] = []
    counts: dict[str, int] = {z.zone_id: 0 for z in zones}
    read = 0
    label = f"{source.name}/pois"
    async for chunk in source.poi_chunks():
        label = chunk.source
        cols = parse_poi_chunk(chunk, errors)
        sets.append(np.unique(cols.poi_set_id))
        parts.append(cols)
        drops.append(excluded(zones, cols.lat, cols.lng, counts))
        read += len(chunk)
        progress("pois", read)
    all_sets = np.unique(np.concatenate(sets)) if sets else np.empty(0, np.int64)
    drop = np.concatenate(drops) if drops else np.empty(0, np.bool_)
    return PoiStream(label, PoiColumns.concat(parts), drop, all_sets, read, counts)


def repeated_pois(pois: PoiColumns, source: str, errors: ErrorLog) -> npt.NDArray[np.bool_]:
    """Report every repeated poi_id after its first row; return which POIs repeat an earlier one."""
    order = np.argsort(pois.poi_id, kind="stable")
    ids = pois.poi_id[order]
    repeat = np.zeros(len(ids), dtype=np.bool_)
    repeat[1:] = ids[1:] == ids[:-1]
    out = np.zeros(len(ids), dtype=np.bool_)
    if not repeat.any():
        return out
    first_row = pois.row[order][np.maximum.accumulate(np.where(~repeat, np.arange(len(ids)), 0))]
    where = np.flatnonzero(repeat)
    shown = [
        RowError(source, int(pois.row[order][i]), "poi_id", f"duplicate {int(ids[i])} (first at row {int(first_row[i])})")
        for i in where[: max(errors.room, 0)]
    ]
    errors.add_many(shown, len(where))
    out[order[where]] = True
    return out


def check_poi_sets(tables: Tables, sets_seen: npt.NDArray[np.int64], errors: ErrorLog) -> None:
    """Report and drop tasks whose POI set no valid POI belongs to."""
    known = set(sets_seen.tolist())
    kept = []
    for row, task in tables.tasks:
        if task.poi_set_id in known:
            kept.append((row, task))
        else:
            errors.add(RowError(row.source, row.row, "poi_set_id", f"unknown poi_set {task.poi_set_id}: no POI has it"))
    tables.tasks = kept


@dataclass(frozen=True, slots=True)
class Rows:
    """One entry per (POI, task) pair, in no particular order yet."""

    poi_pos: npt.NDArray[np.int64]
    task_index: npt.NDArray[np.int32]
    outside_district: list[int]


def expand_rows(pois: PoiColumns, tasks: list[Task], districts: dict[int, District]) -> Rows:
    """Pair each task with the POIs of its set, counting the POIs outside the task's district."""
    order = np.argsort(pois.poi_set_id, kind="stable")
    sorted_sets = pois.poi_set_id[order]
    set_ids = np.array([t.poi_set_id for t in tasks], dtype=np.int64)
    lo = np.searchsorted(sorted_sets, set_ids, "left")
    hi = np.searchsorted(sorted_sets, set_ids, "right")
    outside_by_pair: dict[tuple[int, int], int] = {}
    outside = []
    for task, a, b in zip(tasks, lo.tolist(), hi.tolist()):
        pair = (task.district_code, task.poi_set_id)
        if pair not in outside_by_pair:
            members = order[a:b]
            hit = inside(districts[task.district_code].geometry, pois.lat[members], pois.lng[members])
            outside_by_pair[pair] = int(len(members) - hit.sum())
        outside.append(outside_by_pair[pair])
    poi_pos = np.concatenate([order[a:b] for a, b in zip(lo.tolist(), hi.tolist())]) if tasks else np.empty(0, np.int64)
    task_index = np.repeat(np.arange(len(tasks), dtype=np.int32), hi - lo)
    return Rows(poi_pos.astype(np.int64), task_index, outside)


def sorted_arrays(pois: PoiColumns, rows: Rows, grid: Grid) -> dict[str, np.ndarray]:
    """Return the snapshot's row arrays sorted by (cell, task, poi_id)."""
    cells = grid.cells_of(pois.lat, pois.lng)[rows.poi_pos]
    poi_ids = pois.poi_id[rows.poi_pos]
    perm = np.lexsort((poi_ids, rows.task_index, cells))
    positions = rows.poi_pos[perm]
    return {
        "cells": cells[perm],
        "task_index": rows.task_index[perm],
        "poi_ids": poi_ids[perm],
        "lats": pois.lat[positions],
        "lngs": pois.lng[positions],
        "poi_order": np.argsort(poi_ids[perm], kind="stable"),
    }


def task_table(tasks: list[Task], tables: Tables, rows: Rows) -> list[dict[str, Any]]:
    """Return the snapshot's task table, in task_id order (the order rows point into)."""
    counts = np.bincount(rows.task_index, minlength=len(tasks)).tolist()
    return [
        {
            **asdict(task),
            "prizes": [
                {k: v for k, v in asdict(p).items() if k != "task_id"}
                for p in sorted(tables.prizes.get(task.task_id, []), key=lambda p: p.prize_type)
            ],
            "pois": counts[i],
            "outside_district": rows.outside_district[i],
        }
        for i, task in enumerate(tasks)
    ]


def district_table(districts: dict[int, District]) -> list[dict[str, Any]]:
    return [{"code": d.code, "name": d.name, "parent_code": d.parent_code} for _, d in sorted(districts.items())]


async def build(settings: BuildSettings, source: Source, progress: Progress) -> dict[str, Any]:
    """Run the whole build and publish the snapshot; raise LoaderError and publish nothing on bad input."""
    errors = ErrorLog(settings.error_limit)
    tables = await read_tables(source, errors)
    progress("tables", len(tables.tasks))
    stream = await stream_pois(source, tables.zones, errors, progress)
    pois = stream.pois.take(~(repeated_pois(stream.pois, stream.label, errors) | stream.in_zone))
    check_poi_sets(tables, stream.sets_seen, errors)
    if not settings.skip_bad_rows:
        errors.raise_if_any()
    tasks = [t for _, t in tables.tasks]
    used = np.isin(pois.poi_set_id, np.array([t.poi_set_id for t in tasks], dtype=np.int64))
    pois = pois.take(used)
    progress("screen", len(pois))
    rows = expand_rows(pois, tasks, tables.districts)
    arrays = sorted_arrays(pois, rows, settings.grid)
    progress("sort", len(arrays["cells"]))
    meta = {
        "source": source.name,
        "counts": {
            "pois_read": stream.read,
            "pois_kept": len(pois),
            "pois_excluded": sum(stream.excluded_by_zone.values()),
            "pois_unused": int((~used).sum()),
            "rows": len(arrays["cells"]),
            "tasks": len(tasks),
            "districts": len(tables.districts),
            "zones": len(tables.zones),
        },
        "screening": {
            "excluded_by_zone": stream.excluded_by_zone,
            "outside_district": {str(t.task_id): n for t, n in zip(tasks, rows.outside_district) if n},
            "skipped_problems": errors.count,
            "skipped_examples": [str(e) for e in errors.shown],
        },
    }
    tables_out = {"tasks": task_table(tasks, tables, rows), "districts": district_table(tables.districts)}
    manifest = write_snapshot(settings.out, arrays, tables_out, meta, settings.grid, keep=settings.keep,
                              extra={"districts.geojson": district_outlines(tables.districts)})
    progress("published", manifest["seq"])
    return manifest
