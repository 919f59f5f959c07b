"""The tick loop: read the ledger, aggregate in the spare buffer, swap; the interval follows the DB's pressure.

Each tick reads the counters changed since the previous read and every kill-switch flag, and one
page of the sweep: a complete read of the counters in key order, spread over ticks so that no tick
pays for a whole table. A sweep fills the index of a newly published snapshot before it goes live,
and every `sweep_every_s` re-reads the live one, healing what a delta could have missed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.aggregate import Aggregator, load_index
from collector.history import History
from collector.views import ChangeKey, View, ViewHolder, build_view
from geo_service.ledger import Counters, Ledger, LedgerError, LedgerState, PrizeChange
from geo_service.snapshot.folder import current_seq
from geo_service.snapshot.format import SnapshotError
from loaders.errors import LoaderError
from loaders.sources.mysql import MySQLSource

log = logging.getLogger("geodrop.collector")
# A claim stamps changed_at when its statement runs and commits a little later; reading from a
# margin before the previous read catches commits that were in flight then.
DELTA_MARGIN_S = 10.0


@dataclass(slots=True)
class TickHealth:
    interval_s: float
    last_read_s: float = 0.0
    last_tick_s: float = 0.0
    last_good_at: float = 0.0
    ticks: int = 0
    failures: int = 0
    last_error: str | None = None
    sweeps: int = 0  # complete reads finished
    swept_at: float = 0.0  # wall time the last complete read started
    sweep_rows: int = 0  # counters read so far by the running sweep
    refused_seq: int | None = None  # a published snapshot whose tables could not be read


@dataclass(slots=True)
class Sweep:
    """A complete read of the counters in key order into `index`, a page per tick."""

    index: Aggregator
    started_at: float
    after: tuple[int, str] | None = None
    rows: int = 0


@dataclass(frozen=True, slots=True)
class Reads:
    """What one tick read: the sweep's pages, the key the sweep goes on after, whether it is done (its
    last page came short), and the delta."""

    pages: list[Counters]
    after: tuple[int, str] | None
    done: bool
    state: LedgerState
    changes: list[PrizeChange]


class Ticker:
    """One owner of the views: each tick builds a whole new view, then installs it by assignment."""

    def __init__(self, *, ledger: Ledger, snapshots: Path, holder: ViewHolder, floor_s: float, ceiling_s: float,
                 slow_read_s: float, on_swap: Callable[[list[dict[str, Any]]], None], page_rows: int = 10_000,
                 sweep_every_s: float = 60.0, source: MySQLSource | None = None) -> None:
        self.ledger = ledger
        self.source = source
        self.snapshots = snapshots
        self.holder = holder
        self.floor_s = floor_s
        self.ceiling_s = ceiling_s
        self.slow_read_s = slow_read_s
        self.page_rows = page_rows
        self.sweep_every_s = sweep_every_s
        self.on_swap = on_swap
        self.health = TickHealth(interval_s=floor_s)
        self._live: Aggregator | None = None
        self._sweep: Sweep | None = None
        self._building: tuple[int, asyncio.Future[Aggregator]] | None = None
        self._builder: ProcessPoolExecutor | None = None
        self._read_at = 0.0  # wall time the last good read started
        self._changes: dict[ChangeKey, PrizeChange] = {}  # the latest live change of each prize
        self.history = History()

    def _newest(self) -> Aggregator | None:
        return self._sweep.index if self._sweep is not None else self._live

    async def _follow_snapshot(self, now: float) -> None:
        """Start a sweep into the index of a newly published snapshot. With nothing live yet the index is
        built right here; beside a live one it is built in a child process, so that parsing the new
        tables stalls neither the ticks nor the views' HTTP."""
        seq = await asyncio.to_thread(current_seq, self.snapshots)
        if seq is None:
            raise SnapshotError(f"{self.snapshots}: no CURRENT snapshot")
        newest = self._newest()
        if (newest is not None and newest.seq == seq) or seq == self.health.refused_seq:
            return
        if self._live is None:
            self._sweep = Sweep(await asyncio.to_thread(load_index, self.snapshots / str(seq), seq), now)
            return
        if self._building is not None:
            built_seq, future = self._building
            if not future.done():
                return
            self._building = None
            if built_seq == seq:
                self._adopt(seq, future, now)
                return
        if self._builder is None:
            self._builder = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        self._building = (seq, loop.run_in_executor(self._builder, load_index, self.snapshots / str(seq), seq))

    def _adopt(self, seq: int, future: asyncio.Future[Aggregator], now: float) -> None:
        try:
            index = future.result()
        except Exception as exc:  # noqa: BLE001 - whatever the tables make loading raise, they are refused
            # The live view goes on; this snapshot is not tried again until another is published.
            self.health.refused_seq = seq
            if isinstance(exc, BrokenProcessPool):
                self._builder = None
            log.warning("new snapshot's tables refused; the live view stays", extra={"seq": seq, "error": str(exc)})
            return
        self._sweep = Sweep(index, now)

    def _failed(self, error: str, unexpected: bool = False) -> None:
        """Count a failed tick, keep the last view and back off."""
        self.health.failures += 1
        self._slower(error)
        (log.exception if unexpected else log.warning)("tick failed; keeping the last view",
                                                       extra={"error": error, "interval_s": self.health.interval_s})

    def _slower(self, error: str | None) -> None:
        h = self.health
        h.interval_s = min(self.ceiling_s, h.interval_s * 2)
        h.last_error = error

    async def _read(self, now: float) -> Reads:
        """Read the sweep's next page (every page while nothing is live yet), then the delta."""
        sweep = self._sweep
        pages: list[Counters] = []
        after = sweep.after if sweep is not None else None
        done = False
        if sweep is not None:
            while not done and (not pages or self._live is None):
                page = await self.ledger.read_page(after, self.page_rows)
                pages.append(page)
                after = page.last_key() or after
                done = len(page) < self.page_rows
        state = await self.ledger.read_state((self._read_at or now) - DELTA_MARGIN_S)
        if self.source is not None:
            state = LedgerState(state.counters, state.disabled | await self.source.disabled_task_ids())
        # Every live change once, at the first good read; then those since the last, as for counters.
        changes = await self.ledger.read_changes(self._read_at - DELTA_MARGIN_S if self._read_at else 0.0)
        return Reads(pages, after, done, state, changes)

    async def tick(self) -> View | None:
        """Read, aggregate and swap once; on a failure keep the last view and back off."""
        h = self.health
        started = time.monotonic()
        read_at = time.time()
        try:
            await self._follow_snapshot(read_at)
            if self._sweep is None and self._live is not None and read_at - h.swept_at >= self.sweep_every_s:
                self._sweep = Sweep(self._live, read_at)
            reads = await self._read(read_at)
        except (LedgerError, SnapshotError, LoaderError) as exc:
            self._failed(str(exc))
            return None
        h.last_read_s = time.monotonic() - started
        self._read_at = read_at
        self._changes |= {(c.task_id, c.prize_type): c for c in reads.changes}
        sweep = self._sweep
        view = await asyncio.to_thread(self._advance, self._live, sweep, reads, dict(self._changes), self.history)
        self._finish_sweep(reads)
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

    def _finish_sweep(self, reads: Reads) -> None:
        sweep, h = self._sweep, self.health
        if sweep is None:
            return
        sweep.rows += sum(len(p) for p in reads.pages)
        sweep.after = reads.after
        h.sweep_rows = sweep.rows
        if reads.done:
            self._live, self._sweep = sweep.index, None
            h.sweeps += 1
            h.swept_at = sweep.started_at

    @staticmethod
    def _advance(live: Aggregator | None, sweep: Sweep | None, reads: Reads,
                 changes: dict[ChangeKey, PrizeChange], history: History) -> View:
        """Apply the reads to the indexes they concern; return the view of the one that serves now."""
        if sweep is not None:
            for page in reads.pages:
                sweep.index.apply(page)
            if sweep.index is not live:
                sweep.index.apply(reads.state.counters)
        if live is not None:
            live.apply(reads.state.counters)
        serving = sweep.index if sweep is not None and reads.done else live
        assert serving is not None, "with nothing live, a tick reads its sweep to the end"
        now = time.time()
        recent = history.record(serving.seq, now, *serving.issued())
        return build_view(serving, int(now), reads.state.disabled, changes, recent)

    async def close(self) -> None:
        await self.ledger.close()
        if self.source is not None:
            await self.source.close()
        if self._builder is not None:
            await asyncio.to_thread(self._builder.shutdown, True, cancel_futures=True)
            self._builder = None

    async def run(self) -> None:
        """Tick until cancelled."""
        while True:
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - the ticker outlives any one tick; the view stays
                self._failed(f"{type(exc).__name__}: {exc}", unexpected=True)
            await asyncio.sleep(self.health.interval_s)
