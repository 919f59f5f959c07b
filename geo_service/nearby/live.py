"""The double buffer: the live snapshot + status pair, and the watcher that swaps in new snapshots.

A new snapshot is opened and verified off the event loop beside the live one, then installed by
one assignment; requests that already read `holder.live` finish on the pair they started with.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from geo_service.nearby import DEFAULT_LEVELS, NEVER, Levels, Lookup, StatusView, TaskOverride, answer, encode_answer
from geo_service.snapshot.folder import current_seq
from geo_service.snapshot.format import SnapshotError, open_snapshot
from geo_service.snapshot.staging import identity, source_problem, staged

log = logging.getLogger("geodrop.snapshot")
# How far ahead of a task window's start or end its status is computed, and how often to look.
EDGE_LEAD_S = 10
EDGE_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class Live:
    """A snapshot and a status view computed for it: always read and replaced together."""

    lookup: Lookup
    status: StatusView
    loaded_at: float


@dataclass(slots=True)
class SnapshotHolder:
    """Holds the live pair; `live` is replaced by one assignment, never mutated."""

    live: Live | None = None
    swaps: int = 0
    refused: int = 0
    last_error: str | None = None
    refused_ids: set[str] = field(default_factory=set)  # staging.identity of each snapshot refused
    # The collector's latest view of the tasks (kill switch, what is left), or None without one.
    overrides: Mapping[int, TaskOverride] | None = None
    # The live pair as it will be at the next task-window edge, computed ahead by prepare_edges.
    upcoming: Live | None = None
    edges_inline: int = 0  # edges whose status had to be computed on the event loop
    # What is wrong with the live snapshot's folder under the snapshots root (the mapped copy is unharmed).
    source_problem: str | None = None

    def install(self, lookup: Lookup, now_s: int) -> None:
        self.live = Live(lookup, lookup.table.status(now_s, self.overrides), time.time())
        self.upcoming = None
        self.swaps += 1

    def current(self, now_s: int) -> Live | None:
        """Return the live pair, first moving to the next status if a task window opened or closed."""
        live = self.live
        if live is not None and now_s >= live.status.valid_until:
            ahead = self.upcoming
            if self._prepared(ahead, live) and now_s < ahead.status.valid_until:
                live = ahead
            else:
                live = Live(live.lookup, live.lookup.table.status(now_s, self.overrides), live.loaded_at)
                self.edges_inline += 1
            self.live, self.upcoming = live, None
        return live

    @staticmethod
    def _prepared(ahead: Live | None, live: Live) -> TypeGuard[Live]:
        """Whether `ahead` is the status of the live snapshot at the live status's next edge."""
        return ahead is not None and ahead.lookup is live.lookup and ahead.status.as_of == live.status.valid_until

    async def prepare_edges(self) -> None:
        """Compute the status of the next task-window edge in a thread shortly before it comes, so that
        requests at the edge swap it in rather than compute it on the event loop. Runs until cancelled."""
        while True:
            live, overrides = self.live, self.overrides
            if (live is not None and live.status.valid_until != NEVER and not self._prepared(self.upcoming, live)
                    and live.status.valid_until - time.time() <= EDGE_LEAD_S):
                edge = live.status.valid_until
                status = await asyncio.to_thread(live.lookup.table.status, edge, overrides)
                if self.live is live and self.overrides is overrides:
                    self.upcoming = Live(live.lookup, status, live.loaded_at)
            await asyncio.sleep(EDGE_POLL_S)

    async def apply_overrides(self, overrides: Mapping[int, TaskOverride], now_s: int) -> None:
        """Take a new collector view: recompute the live status beside it (in a thread), then swap."""
        self.overrides = overrides
        self.upcoming = None
        live = self.live
        if live is not None:
            status = await asyncio.to_thread(live.lookup.table.status, now_s, overrides)
            if self.live is live:  # a snapshot swapped in meanwhile already used these overrides
                self.live = Live(live.lookup, status, live.loaded_at)


def load_lookup(folder: Path, stage_dir: Path, levels: Levels = DEFAULT_LEVELS) -> Lookup:
    """Copy and verify a snapshot folder into `stage_dir` (unless a sibling worker did), open the copy and
    prepare it (blocking: run it in a thread)."""
    with staged(folder, stage_dir) as copy:
        snapshot = open_snapshot(copy, checksums=False)
    lookup = Lookup(snapshot, levels)
    # The first call of each compiled pass compiles it (or loads it from numba's cache): make those
    # calls here, off the event loop, not in the first player's request.
    status = lookup.table.status(0)
    encode_answer(lookup, status, 0.0, 0.0, 1, {})
    answer(lookup, status, 0.0, 0.0, 1)
    return lookup


class Watcher:
    """Polls CURRENT, and reloads on SIGHUP or an admin call; one load at a time."""

    def __init__(self, holder: SnapshotHolder, root: Path, stage_dir: Path, poll_interval_s: float,
                 on_load: Callable[[Lookup], Awaitable[None]] | None = None, levels: Levels = DEFAULT_LEVELS) -> None:
        self.holder = holder
        self.levels = levels
        self.root = root
        self.stage_dir = stage_dir
        self.poll_interval_s = poll_interval_s
        self.on_load = on_load
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Check CURRENT now (the SIGHUP handler)."""
        self._wake.set()

    async def refresh(self, force: bool = False) -> dict[str, Any]:
        """Load CURRENT if it names a snapshot not yet live; return what happened."""
        async with self._lock:
            holder = self.holder
            try:
                seq = current_seq(self.root)
            except SnapshotError as exc:
                return self._refuse(None, str(exc))
            live_seq = holder.live.lookup.seq if holder.live else None
            if seq is None:
                return {"seq": live_seq, "swapped": False, "error": holder.last_error}
            # By identity, not seq: a snapshots folder deleted and rebuilt starts again at seq 1.
            folder = self.root / str(seq)
            wanted = identity(folder)
            live_id = holder.live.lookup.snapshot.path.name if holder.live else None
            if not force and (wanted == live_id or wanted in holder.refused_ids):
                return {"seq": live_seq, "swapped": False, "error": holder.last_error if wanted != live_id else None}
            try:
                lookup = await asyncio.to_thread(load_lookup, folder, self.stage_dir, self.levels)
                if self.on_load is not None:
                    await self.on_load(lookup)  # seeds the ledger's counters: an error there (the ledger down aside) too
            except (SnapshotError, OSError, ValueError) as exc:
                return self._refuse(wanted, str(exc))
            except Exception as exc:  # noqa: BLE001 - unforeseen, so logged whole; still refused, not fatal
                log.exception("loading a snapshot failed unexpectedly", extra={"snapshot": wanted})
                return self._refuse(wanted, f"{type(exc).__name__}: {exc}")
            holder.install(lookup, int(time.time()))
            holder.last_error = None
            # What is alive now (the snapshot's tables, the modules, the app) lives until the next swap or the
            # end: out of the cyclic collector's scans, full collections stop stalling requests for tens of ms
            # (claims' p99 60 -> 20 ms in bench/claims_bench.py). A snapshot has no reference cycles, so a
            # replaced one is still freed, by reference counting.
            gc.freeze()
            log.info("snapshot swapped in", extra={"seq": seq, "previous": live_seq, "rows": len(lookup.snapshot.cells)})
            return {"seq": seq, "swapped": True, "error": None}

    def _refuse(self, wanted: str | None, error: str) -> dict[str, Any]:
        holder = self.holder
        if wanted is not None:
            holder.refused_ids.add(wanted)
        holder.refused += 1
        holder.last_error = error
        log.warning("snapshot refused; the live one stays", extra={"snapshot": wanted, "error": error})
        return {"seq": holder.live.lookup.seq if holder.live else None, "swapped": False, "error": error}

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.refresh()
                self.check_source()
            except Exception:  # noqa: BLE001 - the watcher outlives any one bad look at the folder
                log.exception("snapshot watch failed; the live snapshot stays")

    def check_source(self) -> None:
        """Note (and log once) whether the live snapshot's folder was deleted or its files cut or grown."""
        live = self.holder.live
        if live is None:
            return
        problem = source_problem(self.root / str(live.lookup.seq), live.lookup.snapshot.manifest)
        if problem != self.holder.source_problem and problem is not None:
            log.warning("the live snapshot's folder is damaged; its private copy keeps serving",
                        extra={"seq": live.lookup.seq, "problem": problem})
        self.holder.source_problem = problem
