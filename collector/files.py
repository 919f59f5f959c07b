"""The snapshot files the dashboard reads beyond the task and district tables: the rows of the snapshot
last asked about (a private copy, memory-mapped read-only: see geo_service.snapshot.staging) and its district
outlines, gzipped once."""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field
from pathlib import Path

from geo_service.snapshot.format import Snapshot, SnapshotError, open_snapshot
from geo_service.snapshot.staging import staged
from geo_service.web.errors import NotFound, SnapshotUnavailable


@dataclass(slots=True)
class SnapshotFiles:
    root: Path
    stage_dir: Path
    rows: Snapshot | None = None
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

    async def outline(self, seq: int) -> bytes:
        """Return snapshot `seq`'s district outlines, gzipped."""
        if seq not in self.outlines:
            path = (await self.snapshot(seq)).path / "districts.geojson"
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                raise NotFound(f"snapshot {seq} has no district outlines; rebuild it with this release") from None
            self.outlines = {seq: gzip.compress(raw, 6)}  # one snapshot's at a time
        return self.outlines[seq]
