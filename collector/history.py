"""What the ticks saw over the last 15 minutes: issued counts per district and per prize type, for the
dashboard's "claims in the last minute" and its issues-per-second chart."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from collector.aggregate import IntArray

KEEP_S = 900.0


@dataclass(slots=True)
class History:
    """Issued totals at each tick of one snapshot; a new snapshot (another index) starts it afresh."""

    seq: int = -1
    ticks: deque[tuple[float, IntArray, IntArray]] = field(default_factory=deque)  # (time, by district, by prize)

    def record(self, seq: int, at: float, by_district: IntArray, by_prize: IntArray) -> IntArray:
        """Take a tick's totals; return each district's issues over the last minute."""
        if seq != self.seq:
            self.seq = seq
            self.ticks.clear()
        self.ticks.append((at, by_district, by_prize))
        while self.ticks and self.ticks[0][0] < at - KEEP_S:
            self.ticks.popleft()
        minute_ago = next((t for t in self.ticks if t[0] >= at - 60.0), self.ticks[0])
        recent: IntArray = np.maximum(by_district - minute_ago[1], 0)
        return recent

    def series(self, prize_types: list[str]) -> dict[str, object]:
        """Return issues per second by prize type between consecutive ticks, for a chart: {t: [...], prize: [...]}."""
        ticks = list(self.ticks)
        times = [round(b[0], 3) for b in ticks[1:]]  # to the ms: a rate times its interval gives back the issues
        rates = [np.maximum(b[2] - a[2], 0) / max(b[0] - a[0], 1e-3) for a, b in zip(ticks, ticks[1:])]
        return {"t": times, **{p: [round(float(r[k]), 2) for r in rates] for k, p in enumerate(prize_types)}}
