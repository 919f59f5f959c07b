"""The snapshot files the dashboard reads beyond the task and district tables: the rows of the snapshot
last asked about (a private copy, memory-mapped read-only: see geo_service.snapshot.staging), its rows ordered
by task (so a task's POIs are a slice, not a scan of every row on the event loop) and its district outlines,
gzipped once. Everything that reads a whole file runs in a thread."""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geo_service.snapshot.format import Snapshot, SnapshotError, open_snapshot
from geo_service.snapshot.staging import staged
from geo_service.web.errors import NotFound, SnapshotUnavailable


@dataclass(slots=True)
class SnapshotFiles:
    root: Path
    stage_dir: Path
    rows: Snapshot | None = None
    by_task: tuple[int, np.ndarray, np.ndarray] | None = None  # (seq, row numbers ordered by task, where each task starts)
    outlines: dict[int, bytes] = field(default_factory=dict)  # seq -> gzipped districts.geojson

    async def snapshot(self, seq: int) -> Snapshot:
        """Return snapshot `seq` mapped read-only from its private copy (made in a thread the first time)."""
        if self.rows is None or self.rows.seq != seq:
            try:
                self.rows = await asyncio.to_thread(self._open, seq)
            except SnapshotError as exc:
                raise SnapshotUnavailable(f"snapshot {seq} cannot be read: {exc}") from None
        return self.rows

    def _open(self, seq: int) -> Snapshot:
        with staged(self.root / str(seq), self.stage_dir) as copy:
            # The copy was checked against the manifest while it was made; the collector's view trusted
            # the snapshot's tables when it went live.
            return open_snapshot(copy, verify=False)

    async def task_rows(self, seq: int, position: int) -> np.ndarray:
        """Return the row numbers of the task at `position` of snapshot `seq`'s task table, in row order."""
        snap = await self.snapshot(seq)
        if self.by_task is None or self.by_task[0] != seq:
            self.by_task = (seq, *await asyncio.to_thread(_order_by_task, snap.task_index, len(snap.tasks)))
        _, order, starts = self.by_task
        return order[starts[position]:starts[position + 1]]

    async def outline(self, seq: int) -> bytes:
        """Return snapshot `seq`'s district outlines, gzipped."""
        if seq not in self.outlines:
            path = (await self.snapshot(seq)).path / "districts.geojson"
            try:
                raw = await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                raise NotFound(f"snapshot {seq} has no district outlines; rebuild it with this release") from None
            self.outlines = {seq: await asyncio.to_thread(gzip.compress, raw, 6)}  # one snapshot's at a time
        return self.outlines[seq]


def _order_by_task(task_index: np.ndarray, tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows sorted by task (stable: each task's rows stay in row order) and, for task i, where its rows
    begin in that order (starts[i]:starts[i + 1])."""
    order = np.argsort(task_index, kind="stable")
    starts = np.searchsorted(task_index[order], np.arange(tasks + 1))
    return order, starts
