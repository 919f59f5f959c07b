"""The build pipeline: stream the source, validate, screen, assign cells, sort, write and publish."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from delivery.channels import Channels, ChannelsError, load_channels
from geo_service.snapshot.folder import write_snapshot
from geo_service.snapshot.format import MAX_ROWS, MICRO, ROW_ARRAYS, storage_error
from geo_service.snapshot.grid import Grid
from loaders.display import district_outlines
from loaders.errors import ErrorLog, LoaderError, RowError
from loaders.reading import KIND_UNUSED, KIND_USED, MIB, RUN_POI_BYTES, PoiPass, Progress, read_pois
from loaders.records import District
from loaders.screening import inside
from loaders.sources import Source
from loaders.spill import Columns, NpyAppender, Runs, SpillFolder, ahead, spill_folder
from loaders.tables import check_poi_sets, district_table, read_tables, task_table


def default_workers() -> int:
    """One build thread per core this process may use."""
    return len(os.sched_getaffinity(0))


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
    workers: int = field(default_factory=default_workers)  # threads parsing and sorting
    channels: Path | None = None  # the channels file every prize type must have a channel in (None: not checked)


# Bytes of memory a row takes while a range of the merge is sorted and written.
MERGE_ROW_BYTES = 180


def _halved(max_rows: int) -> int:
    """Rows a range may hold when two are held at once: one worked on, the next made in the pool (ahead)."""
    return max(max_rows // 2, 1)


@dataclass(frozen=True, slots=True)
class Repeats:
    """What the duplicate check found: source rows to drop, and the counts of what stays."""

    dropped: npt.NDArray[np.int64]  # source rows of repeated poi_ids, sorted
    kept: int  # POIs that make rows
    unused: int  # POIs in sets no task uses
    rows: int  # rows the snapshot will hold


def find_repeats(ids: Runs, label: str, max_rows: int, pool: Executor, errors: ErrorLog) -> Repeats:
    """Report every repeated poi_id after its first row, in poi_id order; return what to drop. The next range
    is read and sorted in `pool` while this one is checked, so each holds half of `max_rows`."""
    dropped: list[npt.NDArray[np.int64]] = []
    kept = unused = rows = 0
    for part in ahead(ids.ranges(_halved(max_rows)), pool):
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
               folder: SpillFolder, out: dict[str, NpyAppender], max_rows: int, pool: Executor,
               progress: Progress) -> Merged:
    """Write the rows in (cell, task, poi_id) order into `out`, range by range, without the repeated POIs;
    then poi_order, the row positions in poi_id order, the same way. The next range is read, sorted and
    screened in `pool` while this one is written, so each holds half of `max_rows` (and only one thread at a
    time screens: GEOS prepares the districts' indexes lazily, not safely for two)."""
    n_tasks = len(districts)
    pois, outside = np.zeros(n_tasks, np.int64), np.zeros(n_tasks, np.int64)
    by_code = {d.code: d for d in districts}
    codes, group_of = np.unique(np.array([d.code for d in districts], dtype=np.int64), return_inverse=True)
    # Small integers: numpy's stable sort of them is a radix sort, one pass over a range's rows.
    group_of = group_of.astype(np.uint16 if len(codes) < 2**16 else np.int64)

    def screened(part: Columns) -> tuple[Columns, npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """A range without repeated POIs, its rows' task positions, and its rows outside their district per task."""
        if len(repeats.dropped):
            part = {k: v[~_in_sorted(part["src_row"], repeats.dropped)] for k, v in part.items()}
        task = remap[part["task"]]
        lat, lng = part["lat"] / MICRO, part["lng"] / MICRO
        group = group_of[task]
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(len(codes) + 1)).tolist()
        away = np.zeros(n_tasks, np.int64)
        for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):  # each district's rows: is each POI inside it?
            if hi > lo:
                mine = order[lo:hi]
                hit = inside(by_code[int(codes[k])].geometry, lat[mine], lng[mine])
                away += np.bincount(task[mine[~hit]], minlength=n_tasks)
        return part, task, away

    by_poi = folder.runs("order", ("poi_id", "position"), tail_in_order=True)
    at = 0
    for part, task, away in ahead(map(screened, found.rows.ranges(_halved(max_rows))), pool):
        n = len(task)
        for name, column in (("cells", "cells"), ("task_index", "task"), ("poi_ids", "poi_id"), ("lats", "lat"),
                             ("lngs", "lng")):
            out[name].append(task if column == "task" else part[column])
        pois += np.bincount(task, minlength=n_tasks)
        outside += away
        by_poi.add({"poi_id": part["poi_id"], "position": np.arange(at, at + n, dtype=np.int64)},
                   spill=bool(found.rows.spilled))
        at += n
        progress("merge", at)
    for part in ahead(by_poi.ranges(_halved(max_rows)), pool):
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


@contextmanager
def _workers(count: int) -> Iterator[Executor]:
    """The build's threads; a failed build drops the work queued for them and waits for what runs, so nothing
    writes into the spill folder once it is being removed."""
    pool = ThreadPoolExecutor(count, thread_name_prefix="build")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_sorted(values: npt.NDArray[np.int64], sorted_set: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values  # type: ignore[no-any-return]


def _channels(path: Path | None) -> Channels | None:
    try:
        return None if path is None else load_channels(path)
    except ChannelsError as exc:
        raise LoaderError(str(exc)) from None


class Phases:
    """Wall seconds of each phase of a build, for its manifest and the benchmark."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.monotonic()

    def done(self, phase: str) -> None:
        now = time.monotonic()
        self.seconds[phase] = round(now - self._since, 2)
        self._since = now


async def build(settings: BuildSettings, source: Source, progress: Progress) -> dict[str, Any]:
    """Run the whole build and publish the snapshot; raise LoaderError and publish nothing on bad input.

    Memory is bounded by settings.memory_mb, not by the input: POI rows are sorted in runs of that
    size, spilled beside the snapshots when there is more than one, and merged range by range.
    """
    errors = ErrorLog(settings.error_limit)
    memory = settings.memory_mb * MIB
    channels = _channels(settings.channels)
    phases = Phases()
    tables = await read_tables(source, errors, channels)
    progress("tables", len(tables.tasks))
    phases.done("tables")
    with spill_folder(settings.out) as folder, _storage(settings.out), _workers(settings.workers) as pool:
        found = await read_pois(source, tables, settings.grid, folder, memory, errors, pool, settings.workers, progress)
        phases.done("pois")
        repeats = find_repeats(found.ids, found.label, max(memory // RUN_POI_BYTES, 1), pool, errors)
        phases.done("duplicates")
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
                            max(memory // MERGE_ROW_BYTES, 1), pool, progress)
        phases.done("merge")
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
            "build": {"memory_mb": settings.memory_mb, "workers": settings.workers, "runs_spilled": found.rows.spilled,
                      "phases_s": phases.seconds},
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
