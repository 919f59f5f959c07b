"""The tick loop: read the ledger, aggregate in the spare buffer, swap; the interval follows the DB's pressure."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from collector.views import View, ViewHolder, build_view
from geo_service.ledger import Ledger, LedgerError, LedgerState
from geo_service.snapshot import SnapshotError, current_seq, read_tables
from loaders.errors import LoaderError

log = logging.getLogger("geodrop.collector")


class DisabledSource(Protocol):
    """A source database whose own column switches tasks off (MySQL tasks.enabled)."""

    async def disabled_task_ids(self) -> frozenset[int]: ...

    async def close(self) -> None: ...


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
                 source: DisabledSource | None = None) -> None:
        self.ledger = ledger
        self.source = source
        self.snapshots = snapshots
        self.holder = holder
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self.slow_read_s = slow_read_s
        self.on_swap = on_swap
        self.health = TickHealth(interval_s=floor_s)
        self._tables: tuple[int, list[dict[str, Any]], list[dict[str, Any]]] | None = None

    def _snapshot_tables(self) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
        seq = current_seq(self.snapshots)
        if seq is None:
            raise SnapshotError(f"{self.snapshots}: no CURRENT snapshot")
        if self._tables is None or self._tables[0] != seq:
            tasks, districts = read_tables(self.snapshots / str(seq))
            self._tables = (seq, tasks, districts)
        return self._tables

    def _slower(self, error: str | None) -> None:
        h = self.health
        h.interval_s = min(self.ceiling_s, h.interval_s * 2)
        h.last_error = error

    async def tick(self) -> View | None:
        """Read, aggregate and swap once; on a failure keep the last view and back off."""
        h = self.health
        started = time.monotonic()
        try:
            seq, tasks, districts = self._snapshot_tables()
            state = await self.ledger.read_state()
            if self.source is not None:
                state = LedgerState(state.counters, state.disabled | await self.source.disabled_task_ids())
        except (LedgerError, SnapshotError, LoaderError) as exc:
            h.failures += 1
            self._slower(str(exc))
            log.warning("tick failed; keeping the last view", extra={"error": str(exc), "interval_s": h.interval_s})
            return None
        h.last_read_s = time.monotonic() - started
        view = await asyncio.to_thread(build_view, seq, tasks, districts, state, int(time.time()))
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

    async def close(self) -> None:
        await self.ledger.close()
        if self.source is not None:
            await self.source.close()

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            await self.tick()
            await asyncio.sleep(self.health.interval_s)
