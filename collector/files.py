"""The snapshot files the dashboard reads beyond the task and district tables: the rows of the snapshot
last asked about (memory-mapped read-only) and its district outlines, gzipped once."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

from geo_service.errors import NotFound
from geo_service.snapshot import Snapshot, open_snapshot


@dataclass(slots=True)
class SnapshotFiles:
    root: Path
    rows: Snapshot | None = None
    outlines: dict[int, bytes] = field(default_factory=dict)  # seq -> gzipped districts.geojson

    def snapshot(self, seq: int) -> Snapshot:
        """Return snapshot `seq` mapped read-only (the collector's view already trusted it when it went live)."""
        if self.rows is None or self.rows.seq != seq:
            self.rows = open_snapshot(self.root / str(seq), verify=False)
        return self.rows

    def outline(self, seq: int) -> bytes:
        """Return snapshot `seq`'s district outlines, gzipped."""
        if seq not in self.outlines:
            try:
                raw = (self.root / str(seq) / "districts.geojson").read_bytes()
            except FileNotFoundError:
                raise NotFound(f"snapshot {seq} has no district outlines; rebuild it with this release") from None
            self.outlines = {seq: gzip.compress(raw, 6)}  # one snapshot's at a time
        return self.outlines[seq]
