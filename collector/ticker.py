"""The tick loop: read the ledger, aggregate in the spare buffer, swap; the interval follows the DB's pressure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.aggregate import Aggregator
from collector.views import View, ViewHolder, build_view
from geo_service.ledger import Ledger, LedgerError, LedgerState
from geo_service.snapshot import SnapshotError, current_seq, read_tables
from loaders.errors import LoaderError
from loaders.sources.mysql import MySQLSource

log = logging.getLogger("geodrop.collector")
# A claim stamps changed_at when its statement runs and commits a little later; reading from a
# margin before the previous read catches commits that were in flight then.
DELTA_MARGIN_S = 10.0
# Every so often read everything anyway: heals any change a delta could have missed (clock skew
# between service hosts beyond the margin, a manual UPDATE that did not touch changed_at).
FULL_READ_EVERY_S = 60.0


@dataclass(slots=True)
class TickHealth:
    interval_s: float
    last_read_s: float = 0.0
    last_tick_s: float = 0.0
    last_good_at: float = 0.0
    ticks: int = 0
    failures: int = 0
    last_error: str | None = None


class Ticker:
    """One owner of the views: each tick builds a whole new view, then installs it by assignment."""

    def __init__(self, *, ledger: Ledger, snapshots: Path, holder: ViewHolder, floor_s: float, ceiling_s: float,
                 slow_read_s: float, on_swap: Callable[[list[dict[str, Any]]], None],
                 source: MySQLSource | None = None) -> None:
        self.ledger = ledger
        self.source = source
        self.snapshots = snapshots
        self.holder = holder
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self.slow_read_s = slow_read_s
        self.on_swap = on_swap
        self.health = TickHealth(interval_s=floor_s)
        self._index: Aggregator | None = None
        self._full_read_at = 0.0  # wall time the last complete read started
        self._read_at = 0.0  # wall time the last read started

    def _aggregator(self) -> Aggregator:
        seq = current_seq(self.snapshots)
        if seq is None:
            raise SnapshotError(f"{self.snapshots}: no CURRENT snapshot")
        if self._index is None or self._index.seq != seq:
            self._index = Aggregator(seq, *read_tables(self.snapshots / str(seq)))
            self._full_read_at = 0.0  # a new task table starts from a complete read
        return self._index

    def _since(self, now: float) -> float | None:
        """Return the cut of a delta read, or None when this tick reads everything."""
        if now - self._full_read_at >= FULL_READ_EVERY_S:
            return None
        return self._read_at - DELTA_MARGIN_S

    def _slower(self, error: str | None) -> None:
        h = self.health
        h.interval_s = min(self.ceiling_s, h.interval_s * 2)
        h.last_error = error

    async def tick(self) -> View | None:
        """Read, aggregate and swap once; on a failure keep the last view and back off."""
        h = self.health
        started = time.monotonic()
        read_at = time.time()
        try:
            index = await asyncio.to_thread(self._aggregator)
            since = self._since(read_at)
            state = await self.ledger.read_state(since)
            if self.source is not None:
                state = LedgerState(state.counters, state.disabled | await self.source.disabled_task_ids(), state.complete)
        except (LedgerError, SnapshotError, LoaderError) as exc:
            h.failures += 1
            self._full_read_at = 0.0  # after a failure, read everything again
            self._slower(str(exc))
            log.warning("tick failed; keeping the last view", extra={"error": str(exc), "interval_s": h.interval_s})
            return None
        h.last_read_s = time.monotonic() - started
        self._read_at = read_at
        if since is None:
            self._full_read_at = read_at
        view = await asyncio.to_thread(self._build, index, state)
        self.on_swap(self.holder.install(view))
        h.ticks += 1
        h.last_tick_s = time.monotonic() - started
        h.last_good_at = time.time()
        if h.last_read_s > self.slow_read_s:
            self._slower(f"ledger read took {h.last_read_s:.3f} s")
        else:
            h.interval_s = max(self.floor_s, h.interval_s / 2)
            h.last_error = None
        return view

    @staticmethod
    def _build(index: Aggregator, state: LedgerState) -> View:
        index.apply(state)
        return build_view(index, int(time.time()))

    async def close(self) -> None:
        await self.ledger.close()
        if self.source is not None:
            await self.source.close()

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            await self.tick()
            await asyncio.sleep(self.health.interval_s)
