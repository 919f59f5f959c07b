"""The build pipeline: stream the source, validate, screen, assign cells, sort, write and publish."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from delivery.channels import Channels, ChannelsError, load_channels
from geo_service.snapshot.folder import write_snapshot
from geo_service.snapshot.format import MAX_ROWS, MICRO, ROW_ARRAYS, ROW_BYTES, StorageError, storage_error
from geo_service.snapshot.grid import Grid
from loaders.display import district_outlines
from loaders.errors import ErrorLog, LoaderError, RowError
from loaders.pois import PoiColumns, parse_poi_chunk
from loaders.records import District, Task
from loaders.screening import excluded, inside
from loaders.sources import Source
from loaders.spill import Columns, NpyAppender, Runs, SpillFolder, spill_folder
from loaders.tables import Tables, check_poi_sets, district_table, read_tables, task_table

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
    memory_mb: int = 2048  # the build's working memory for POI rows; beyond it, sorted runs spill to disk
    channels: Path | None = None  # the channels file every prize type must have a channel in (None: not checked)


MIB = 2**20
# Bytes of memory a buffered row and a buffered POI take while their run is sorted (the buffers, their
# concatenation, the sort's permutation and the sorted copy), and a row while a range of the merge is.
RUN_ROW_BYTES, RUN_POI_BYTES, MERGE_ROW_BYTES = 110, 50, 180
# Disk a row needs beyond the snapshot's 32 bytes: its spilled run and its poi_order run; a POI: its
# duplicate-check run.
SPILL_ROW_BYTES, SPILL_POI_BYTES = 36 + 16, 21
ROW_KEYS = ("cells", "task", "poi_id")  # the snapshot's row order
KIND_EXCLUDED, KIND_UNUSED, KIND_USED = 0, 1, 2  # what became of a POI (its duplicate-check run keeps it)


def to_micro(pois: PoiColumns) -> tuple[PoiColumns, int]:
    """Round coordinates to the snapshot's micro-degrees (about 11 cm) and count those it changed; everything
    after (screening, cells) sees the rounded position, the one the service will show."""
    lat, lng = np.rint(pois.lat * MICRO) / MICRO, np.rint(pois.lng * MICRO) / MICRO
    changed = int(np.count_nonzero(lat != pois.lat) + np.count_nonzero(lng != pois.lng))
    return PoiColumns(pois.poi_id, pois.poi_set_id, lat, lng, pois.row), changed


class TaskSets:
    """Which tasks use each POI set, so a chunk of POIs becomes rows by a lookup."""

    def __init__(self, tasks: list[Task]) -> None:
        set_ids = np.array([t.poi_set_id for t in tasks], dtype=np.int64)
        self.order = np.argsort(set_ids, kind="stable").astype(np.int32)  # task positions by set
        self.sets = set_ids[self.order]

    def expand(self, poi_set_id: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32],
                                                                  npt.NDArray[np.int64]]:
        """Return (POI position, task position) of every row, and how many rows each POI makes."""
        lo = np.searchsorted(self.sets, poi_set_id, "left")
        counts = np.searchsorted(self.sets, poi_set_id, "right") - lo
        pos = np.repeat(np.arange(len(poi_set_id), dtype=np.int64), counts)
        first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        return pos, self.order[first + np.arange(len(pos))], counts


@dataclass(slots=True)
class PoiPass:
    """What reading the POIs leaves: sorted runs of rows and of POI ids, and what was counted on the way."""

    rows: Runs  # cells, task (position in Tables.tasks before check_poi_sets), poi_id, lat, lng, src_row
    ids: Runs  # poi_id, src_row, kind, n_rows: every valid POI, for the duplicate check and the counts
    label: str = ""
    sets_seen: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    read: int = 0
    rounded: int = 0
    excluded_by_zone: dict[str, int] = field(default_factory=dict)


async def read_pois(source: Source, tables: Tables, grid: Grid, folder: SpillFolder, memory_bytes: int,
                    errors: ErrorLog, progress: Progress) -> PoiPass:
    """Validate, round, screen and expand the POI stream chunk by chunk into rows, sorting them in runs
    that fit `memory_bytes`; the runs go to disk once the first one would not fit beside the rest."""
    task_sets = TaskSets([t for _, t in tables.tasks])
    found = PoiPass(folder.runs("rows", ROW_KEYS), folder.runs("ids", ("poi_id", "src_row"), tail_in_order=True),
                    label=f"{source.name}/pois", excluded_by_zone={z.zone_id: 0 for z in tables.zones})
    rows: list[Columns] = []
    ids: list[Columns] = []
    held = 0

    async def flush(spill: bool) -> None:
        nonlocal held
        if spill and not found.rows.spilled:
            await check_disk(source, folder.path, found, sum(len(r["cells"]) for r in rows))
        # A source chunk larger than the budget still sorts in runs that fit it.
        for table, buffered, unit in ((found.rows, rows, RUN_ROW_BYTES), (found.ids, ids, RUN_POI_BYTES)):
            whole = _concat(buffered)
            buffered.clear()
            size = len(next(iter(whole.values())))
            step = max(memory_bytes // unit, 1)
            for at in range(0, max(size, 1), step):
                table.add({name: column[at : at + step] for name, column in whole.items()}, spill)
            del whole
        held = 0
        if spill:
            progress("runs spilled", found.rows.spilled)

    async for chunk in source.poi_chunks():
        found.label = chunk.source
        cols, changed = to_micro(parse_poi_chunk(chunk, errors))
        found.rounded += changed
        found.sets_seen = np.union1d(found.sets_seen, cols.poi_set_id)
        zone = excluded(tables.zones, cols.lat, cols.lng, found.excluded_by_zone)
        pos, task, counts = task_sets.expand(cols.poi_set_id)
        keep = ~zone[pos]
        pos, task = pos[keep], task[keep]
        cells = grid.cells_of(cols.lat, cols.lng)
        rows.append({"cells": cells[pos], "task": task, "poi_id": cols.poi_id[pos],
                     "lat": np.rint(cols.lat[pos] * MICRO).astype(np.int32),
                     "lng": np.rint(cols.lng[pos] * MICRO).astype(np.int32), "src_row": cols.row[pos]})
        kind = np.where(zone, KIND_EXCLUDED, np.where(counts > 0, KIND_USED, KIND_UNUSED)).astype(np.int8)
        ids.append({"poi_id": cols.poi_id, "src_row": cols.row, "kind": kind,
                    "n_rows": np.where(zone, 0, counts).astype(np.int32)})
        held += len(pos) * RUN_ROW_BYTES + len(cols) * RUN_POI_BYTES
        found.read += len(chunk)
        progress("pois", found.read)
        if held >= memory_bytes:
            await flush(spill=True)
    if rows or not found.rows.runs:
        await flush(spill=bool(found.rows.spilled))  # a build that fits keeps its one run in memory
    return found


def _concat(parts: list[Columns]) -> Columns:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {
        "cells": np.empty(0, np.int64), "task": np.empty(0, np.int32), "poi_id": np.empty(0, np.int64),
        "lat": np.empty(0, np.int32), "lng": np.empty(0, np.int32), "src_row": np.empty(0, np.int64),
        "kind": np.empty(0, np.int8), "n_rows": np.empty(0, np.int32)}


async def check_disk(source: Source, folder: Path, found: PoiPass, buffered_rows: int) -> None:
    """Refuse a build that will not fit on the disk, before its first run is written: the POIs the source
    says it has, at the rows per POI seen so far, in spilled runs and in the snapshot."""
    hint = await source.poi_count_hint()
    pois = max(hint or 0, found.read)
    rows = int(pois * max(buffered_rows, 1) / max(found.read, 1))
    need = rows * (SPILL_ROW_BYTES + ROW_BYTES) + pois * SPILL_POI_BYTES
    free = shutil.disk_usage(folder).free
    if need > free:
        raise StorageError(f"{folder.parent}: not enough free disk for this build: about {need / MIB:,.0f} MiB "
                           f"needed for ~{rows:,} rows (sorted runs spilled beyond --memory-mb, then the snapshot), "
                           f"{free / MIB:,.0f} MiB free; nothing was published and CURRENT is unchanged")


@dataclass(frozen=True, slots=True)
class Repeats:
    """What the duplicate check found: source rows to drop, and the counts of what stays."""

    dropped: npt.NDArray[np.int64]  # source rows of repeated poi_ids, sorted
    kept: int  # POIs that make rows
    unused: int  # POIs in sets no task uses
    rows: int  # rows the snapshot will hold


def find_repeats(ids: Runs, label: str, max_rows: int, errors: ErrorLog) -> Repeats:
    """Report every repeated poi_id after its first row, in poi_id order; return what to drop."""
    dropped: list[npt.NDArray[np.int64]] = []
    kept = unused = rows = 0
    for part in ids.ranges(max_rows):
        poi_id, src_row = part["poi_id"], part["src_row"]
        repeat = np.zeros(len(poi_id), dtype=np.bool_)
        repeat[1:] = poi_id[1:] == poi_id[:-1]
        if repeat.any():
            first_row = src_row[np.maximum.accumulate(np.where(~repeat, np.arange(len(poi_id)), 0))]
            where = np.flatnonzero(repeat)
            errors.add_many([RowError(label, int(src_row[i]), "poi_id",
                                      f"duplicate {int(poi_id[i])} (first at row {int(first_row[i])})")
                             for i in where[: max(errors.room, 0)]], len(where))
            dropped.append(src_row[where])
        stays = ~repeat
        kept += int(np.count_nonzero(stays & (part["kind"] == KIND_USED)))
        unused += int(np.count_nonzero(stays & (part["kind"] == KIND_UNUSED)))
        rows += int(part["n_rows"][stays].sum())
    return Repeats(np.sort(np.concatenate(dropped)) if dropped else np.empty(0, np.int64), kept, unused, rows)


@dataclass(frozen=True, slots=True)
class Merged:
    """Per task of the snapshot: its rows and those outside its district."""

    pois: npt.NDArray[np.int64]
    outside: npt.NDArray[np.int64]


def _outputs(folder: SpillFolder, rows: int) -> dict[str, NpyAppender]:
    """The snapshot's row arrays, written in order as .npy files beside it and moved in when it is published."""
    return folder.keep({name: NpyAppender(folder.path / f"out-{name}.npy", dtype, rows)
                        for name, dtype in ROW_ARRAYS.items()})


def merge_rows(found: PoiPass, repeats: Repeats, remap: npt.NDArray[np.int32], districts: list[District],
               folder: SpillFolder, out: dict[str, NpyAppender], max_rows: int, progress: Progress) -> Merged:
    """Write the rows in (cell, task, poi_id) order into `out`, range by range, without the repeated POIs;
    then poi_order, the row positions in poi_id order, the same way."""
    n_tasks = len(districts)
    pois, outside = np.zeros(n_tasks, np.int64), np.zeros(n_tasks, np.int64)
    by_code = {d.code: d for d in districts}
    codes, group_of = np.unique(np.array([d.code for d in districts], dtype=np.int64), return_inverse=True)
    # Small integers: numpy's stable sort of them is a radix sort, one pass over a range's rows.
    group_of = group_of.astype(np.uint16 if len(codes) < 2**16 else np.int64)
    by_poi = folder.runs("order", ("poi_id", "position"), tail_in_order=True)
    at = 0
    for part in found.rows.ranges(max_rows):
        if len(repeats.dropped):
            part = {k: v[~_in_sorted(part["src_row"], repeats.dropped)] for k, v in part.items()}
        n = len(part["cells"])
        task = remap[part["task"]]
        for name, column in (("cells", "cells"), ("task_index", "task"), ("poi_ids", "poi_id"), ("lats", "lat"),
                             ("lngs", "lng")):
            out[name].append(task if column == "task" else part[column])
        pois += np.bincount(task, minlength=n_tasks)
        lat, lng = part["lat"] / MICRO, part["lng"] / MICRO
        group = group_of[task]
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(len(codes) + 1)).tolist()
        for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):  # each district's rows: is each POI inside it?
            if hi > lo:
                mine = order[lo:hi]
                hit = inside(by_code[int(codes[k])].geometry, lat[mine], lng[mine])
                outside += np.bincount(task[mine[~hit]], minlength=n_tasks)
        by_poi.add({"poi_id": part["poi_id"], "position": np.arange(at, at + n, dtype=np.int64)},
                   spill=bool(found.rows.spilled))
        at += n
        progress("merge", at)
    for part in by_poi.ranges(max_rows):
        out["poi_order"].append(part["position"])
    progress("poi order", out["poi_order"].written)
    return Merged(pois, outside)


@contextmanager
def _storage(out: Path) -> Iterator[None]:
    """Turn a write refused by the disk (full, read-only) into the StorageError a publish gives."""
    try:
        yield
    except OSError as exc:
        raise storage_error(out, "the build's sorted runs or rows", exc) from exc


def _in_sorted(values: npt.NDArray[np.int64], sorted_set: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values  # type: ignore[no-any-return]


def _channels(path: Path | None) -> Channels | None:
    try:
        return None if path is None else load_channels(path)
    except ChannelsError as exc:
        raise LoaderError(str(exc)) from None


async def build(settings: BuildSettings, source: Source, progress: Progress) -> dict[str, Any]:
    """Run the whole build and publish the snapshot; raise LoaderError and publish nothing on bad input.

    Memory is bounded by settings.memory_mb, not by the input: POI rows are sorted in runs of that
    size, spilled beside the snapshots when there is more than one, and merged range by range.
    """
    errors = ErrorLog(settings.error_limit)
    memory = settings.memory_mb * MIB
    channels = _channels(settings.channels)
    tables = await read_tables(source, errors, channels)
    progress("tables", len(tables.tasks))
    with spill_folder(settings.out) as folder, _storage(settings.out):
        found = await read_pois(source, tables, settings.grid, folder, memory, errors, progress)
        repeats = find_repeats(found.ids, found.label, max(memory // RUN_POI_BYTES, 1), errors)
        provisional = {t.task_id: i for i, (_, t) in enumerate(tables.tasks)}
        check_poi_sets(tables, found.sets_seen, errors)
        if not settings.skip_bad_rows:
            errors.raise_if_any()
        if repeats.rows > MAX_ROWS:
            raise LoaderError(f"{source.name}: {repeats.rows:,} rows (POI x task); a snapshot holds at most {MAX_ROWS:,}")
        tasks = [t for _, t in tables.tasks]
        remap = np.full(len(provisional), -1, dtype=np.int32)
        remap[[provisional[t.task_id] for t in tasks]] = np.arange(len(tasks), dtype=np.int32)
        out = _outputs(folder, repeats.rows)
        merged = merge_rows(found, repeats, remap, [tables.districts[t.district_code] for t in tasks], folder, out,
                            max(memory // MERGE_ROW_BYTES, 1), progress)
        meta = {
            "source": source.name,
            "coordinates": "int32 micro-degrees; counts.coordinates_rounded had more than 6 decimals",
            "counts": {
                "pois_read": found.read,
                "pois_kept": repeats.kept,
                "pois_excluded": sum(found.excluded_by_zone.values()),
                "pois_unused": repeats.unused,
                "rows": repeats.rows,
                "coordinates_rounded": found.rounded,
                "tasks": len(tasks),
                "districts": len(tables.districts),
                "zones": len(tables.zones),
            },
            "screening": {
                "excluded_by_zone": found.excluded_by_zone,
                "outside_district": {str(t.task_id): int(n) for t, n in zip(tasks, merged.outside) if n},
                "skipped_problems": errors.count,
                "skipped_examples": [str(e) for e in errors.shown],
            },
            "build": {"memory_mb": settings.memory_mb, "runs_spilled": found.rows.spilled},
        }
        if channels is not None:  # what the service tells players of each prize: its channel and ETA
            meta["deliveries"] = channels.manifest()
        tables_out = {"tasks": task_table(tasks, tables, merged.pois, merged.outside),
                      "districts": district_table(tables.districts)}
        arrays = {name: file.close() for name, file in out.items()}
        folder.release()
        manifest = write_snapshot(settings.out, arrays, tables_out, meta, settings.grid, keep=settings.keep,
                                  extra={"districts.geojson": district_outlines(tables.districts)})
    progress("published", manifest["seq"])
    return manifest
