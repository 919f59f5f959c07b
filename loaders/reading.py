"""The build's pass over the POIs: each chunk validated, rounded, screened and expanded into rows on a worker
thread (arrow, numpy and shapely let go of the GIL, so the cores share the work), the rows sorted into runs."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import shapely

from geo_service.snapshot.format import MICRO, ROW_BYTES, StorageError
from geo_service.snapshot.grid import Grid
from loaders.errors import ErrorLog
from loaders.pois import PoiChunk, PoiColumns, parse_poi_chunk
from loaders.records import Task, Zone
from loaders.screening import excluded
from loaders.sources import Source
from loaders.spill import Columns, Runs, SpillFolder
from loaders.tables import Tables

Progress = Callable[[str, int], None]
MIB = 2**20
# Bytes of memory a buffered row and a buffered POI take while their run is sorted: the buffers, their
# concatenation, stable_order's packed values, groups and permutation, and the sorted copy.
RUN_ROW_BYTES, RUN_POI_BYTES = 130, 70
# Disk a row needs beyond the snapshot's 32 bytes: its spilled run and its poi_order run; a POI: its
# duplicate-check run.
SPILL_ROW_BYTES, SPILL_POI_BYTES = 36 + 16, 21
DENSE_SETS = 1 << 20  # set ids spanning at most this many numbers are looked up in a table (16 MiB at most)
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
        # Set ids are mostly a database's small, dense numbers: then a table indexed by id finds a POI's tasks
        # in one step instead of two binary searches, the largest cost of reading POIs after parsing.
        self.low = int(self.sets[0]) if len(self.sets) else 0
        span = int(self.sets[-1]) - self.low + 1 if len(self.sets) else 0
        self.table: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
        if 0 < span <= DENSE_SETS:
            every = np.arange(self.low, self.low + span, dtype=np.int64)
            first = np.searchsorted(self.sets, every, "left")
            self.table = first, np.searchsorted(self.sets, every, "right") - first

    def _find(self, poi_set_id: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Return where each set's tasks start in `order`, and how many there are."""
        if self.table is None:
            lo = np.searchsorted(self.sets, poi_set_id, "left")
            return lo, np.searchsorted(self.sets, poi_set_id, "right") - lo
        first, count = self.table
        at = poi_set_id - self.low
        known = (at >= 0) & (at < len(first))
        at[~known] = 0
        return first[at], np.where(known, count[at], 0)

    def expand(self, poi_set_id: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32],
                                                                  npt.NDArray[np.int64]]:
        """Return (POI position, task position) of every row, and how many rows each POI makes."""
        lo, counts = self._find(poi_set_id)
        pos = np.repeat(np.arange(len(poi_set_id), dtype=np.int64), counts)
        first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        return pos, self.order[first + np.arange(len(pos))], counts


@dataclass(frozen=True, slots=True)
class ChunkRows:
    """One chunk made ready on a worker: its rows, its POIs for the duplicate check, and what it counted."""

    source: str
    read: int
    rows: Columns  # cells, task, poi_id, lat, lng, src_row
    ids: Columns  # poi_id, src_row, kind, n_rows
    errors: ErrorLog
    rounded: int
    sets: npt.NDArray[np.int64]  # the POI sets it names, sorted
    by_zone: dict[str, int]


@dataclass(frozen=True, slots=True)
class ChunkWork:
    """What every chunk is made ready with."""

    task_sets: TaskSets
    zones: list[Zone]
    grid: Grid
    error_limit: int
    mine: threading.local = field(default_factory=threading.local)

    def own_zones(self) -> list[Zone]:
        """This thread's own copy of the zones: GEOS builds a prepared polygon's index lazily, and not safely for
        two threads at once (libgeos/geos#825)."""
        zones: list[Zone] | None = getattr(self.mine, "zones", None)
        if zones is None:
            copies = shapely.from_wkb(shapely.to_wkb([z.geometry for z in self.zones]))
            shapely.prepare(copies)
            zones = self.mine.zones = [replace(z, geometry=g) for z, g in zip(self.zones, copies)]
        return zones

    def __call__(self, chunk: PoiChunk) -> ChunkRows:
        errors = ErrorLog(self.error_limit)  # the chunk's own: merged into the build's in stream order
        cols, changed = to_micro(parse_poi_chunk(chunk, errors))
        by_zone: dict[str, int] = {}
        zone = excluded(self.own_zones(), cols.lat, cols.lng, by_zone)
        pos, task, counts = self.task_sets.expand(cols.poi_set_id)
        keep = ~zone[pos]
        pos, task = pos[keep], task[keep]
        cells = self.grid.cells_of(cols.lat, cols.lng)
        rows: Columns = {"cells": cells[pos], "task": task, "poi_id": cols.poi_id[pos],
                "lat": np.rint(cols.lat[pos] * MICRO).astype(np.int32),
                "lng": np.rint(cols.lng[pos] * MICRO).astype(np.int32), "src_row": cols.row[pos]}
        kind = np.where(zone, KIND_EXCLUDED, np.where(counts > 0, KIND_USED, KIND_UNUSED)).astype(np.int8)
        ids: Columns = {"poi_id": cols.poi_id, "src_row": cols.row, "kind": kind,
                        "n_rows": np.where(zone, 0, counts).astype(np.int32)}
        sets = np.unique(cols.poi_set_id)
        return ChunkRows(chunk.source, len(chunk), rows, ids, errors, changed, sets, by_zone)


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
    last_poi_id: int = -(2**63)  # while the stream comes in poi_id order, the rows' runs sort without that key

    def take(self, ready: ChunkRows, errors: ErrorLog) -> None:
        """Count a chunk made ready, in stream order."""
        self.label = ready.source
        errors.add_many(ready.errors.shown, ready.errors.count)
        self.rounded += ready.rounded
        self.sets_seen = np.union1d(self.sets_seen, ready.sets)
        for zone_id, n in ready.by_zone.items():
            self.excluded_by_zone[zone_id] += n
        self.read += ready.read
        poi_id = ready.ids["poi_id"]
        if self.rows.tail_in_order and len(poi_id):
            self.rows.tail_in_order = bool(poi_id[0] >= self.last_poi_id and np.all(poi_id[1:] >= poi_id[:-1]))
            self.last_poi_id = int(poi_id[-1])


async def read_pois(source: Source, tables: Tables, grid: Grid, folder: SpillFolder, memory_bytes: int,
                    errors: ErrorLog, pool: Executor, workers: int, progress: Progress) -> PoiPass:
    """Validate, round, screen and expand the POI stream chunk by chunk into rows, `workers` chunks at a time
    in `pool`, sorting them in runs that fit `memory_bytes`; the runs go to disk once the first one would not
    fit beside the rest."""
    work = ChunkWork(TaskSets([t for _, t in tables.tasks]), tables.zones, grid, errors.limit)
    found = PoiPass(folder.runs("rows", ROW_KEYS, tail_in_order=True),
                    folder.runs("ids", ("poi_id", "src_row"), tail_in_order=True),
                    label=f"{source.name}/pois", excluded_by_zone={z.zone_id: 0 for z in tables.zones})
    rows: list[Columns] = []
    ids: list[Columns] = []
    held = 0
    loop = asyncio.get_running_loop()
    pending: deque[asyncio.Future[ChunkRows]] = deque()

    async def flush(spill: bool) -> None:
        nonlocal held
        if spill and not found.rows.spilled:
            await check_disk(source, folder.path, found, sum(len(r["cells"]) for r in rows))
        # A spilled run is sorted in `workers` parts side by side; a source chunk larger than the budget still
        # sorts in runs that fit it; a build that fits keeps its one run in memory.
        for table, buffered, unit in ((found.rows, rows, RUN_ROW_BYTES), (found.ids, ids, RUN_POI_BYTES)):
            whole = _concat(buffered)
            buffered.clear()
            size = len(next(iter(whole.values())))
            step = max(min(memory_bytes // unit, -(-size // workers) if spill else size), 1)
            table.add_many([{name: column[at : at + step] for name, column in whole.items()}
                            for at in range(0, max(size, 1), step)], spill, pool)
            del whole
        held = 0
        if spill:
            progress("runs spilled", found.rows.spilled)

    async def take_one() -> None:
        nonlocal held
        ready = await pending.popleft()
        found.take(ready, errors)
        rows.append(ready.rows)
        ids.append(ready.ids)
        held += len(ready.rows["cells"]) * RUN_ROW_BYTES + len(ready.ids["poi_id"]) * RUN_POI_BYTES
        progress("pois", found.read)
        if held >= memory_bytes:
            await flush(spill=True)

    try:
        async for chunk in source.poi_chunks():
            pending.append(loop.run_in_executor(pool, work, chunk))
            if len(pending) >= workers:
                await take_one()
        while pending:
            await take_one()
    finally:  # a failed build lets its workers finish before it cleans up
        await asyncio.gather(*pending, return_exceptions=True)
    if rows or not found.rows.runs:
        await flush(spill=bool(found.rows.spilled))
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
