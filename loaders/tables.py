"""The small tables of a build: districts, zones, tasks and prizes read, parsed and cross-checked, and the
snapshot's task and district tables made from them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from delivery.channels import Channels
from geo_service.snapshot.format import DistrictRow, PrizeRow, TaskRow
from loaders.errors import ErrorLog, RowError
from loaders.records import District, FieldError, Prize, Task, Zone, parse_district, parse_prize, parse_task, parse_zone
from loaders.sources import Source, SourceRow

R = TypeVar("R")


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


async def read_tables(source: Source, errors: ErrorLog, channels: Channels | None = None) -> Tables:
    """Read, parse and cross-check districts, zones, tasks and prizes; with `channels`, every prize type must have a
    channel that delivers it (a win nothing delivers is refused here, not dropped later)."""
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
        if channels is not None and channels.of_prize(prize.prize_type) is None:
            errors.add(RowError(row.source, row.row, "prize_type",
                                f"no channel of {channels.path} delivers prize type {prize.prize_type!r}"))
        elif prize.task_id in task_ids:
            tables.prizes.setdefault(prize.task_id, []).append(prize)
        else:
            errors.add(RowError(row.source, row.row, "task_id", f"unknown task {prize.task_id}"))
    tables.tasks.sort(key=lambda pair: pair[1].task_id)
    return tables


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


def task_table(tasks: list[Task], tables: Tables, pois: npt.NDArray[np.int64], outside: npt.NDArray[np.int64]
               ) -> list[TaskRow]:
    """Return the snapshot's task table, in task_id order (the order rows point into)."""
    return [
        TaskRow(task_id=task.task_id, name=task.name, district_code=task.district_code, poi_set_id=task.poi_set_id,
                starts_at=task.starts_at, ends_at=task.ends_at, enabled=task.enabled, stagger_s=task.stagger_s,
                stagger_groups=task.stagger_groups,
                prizes=[PrizeRow(prize_type=p.prize_type, quota=p.quota, weight=p.weight, rate_per_s=p.rate_per_s)
                        for p in sorted(tables.prizes.get(task.task_id, []), key=lambda p: p.prize_type)],
                pois=int(pois[i]), outside_district=int(outside[i]))
        for i, task in enumerate(tasks)
    ]


def district_table(districts: dict[int, District]) -> list[DistrictRow]:
    """Return the snapshot's district table, in code order."""
    return [DistrictRow(code=d.code, name=d.name, parent_code=d.parent_code) for _, d in sorted(districts.items())]
