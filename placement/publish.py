"""Preview, publish and roll back from the console: the draft goes through the build itself (loaders.build), never a
copy of its rules. A preview builds into a scratch folder and compares the result with the live snapshot; a
publish builds into the snapshots folder (and uploads to the origin), then waits until the services serve it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from geo_service.snapshot.folder import current_seq, open_current, rollback
from geo_service.snapshot.format import Snapshot, open_snapshot
from geo_service.snapshot.grid import Grid, SquareGrid
from geo_service.snapshot.origin import Origin, open_origin, publish, rollback_origin
from loaders.build import BuildSettings, build
from loaders.errors import LoaderError
from loaders.sources import open_source
from placement import store
from placement.db import Cursor, Db
from placement.diff import compare
from placement.folders import export
from placement.settings import ConsoleSettings

SERVED_CHECKS = 4  # answers in a row that must name the seq: a service's workers each load it in their own time
SERVED_WAIT_S = 120.0
WAITING = "waiting for the services"


@dataclass(slots=True)
class Job:
    """A publish or rollback as the page follows it: its phase, the build's progress, and when it was served."""

    id: int
    who: str
    action: str
    state: str = "running"  # running, then served, published (no service to ask) or failed
    phase: str = "starting"
    done: int = 0
    started_at: float = field(default_factory=time.time)
    seq: int | None = None
    error: str | None = None
    phases: list[dict[str, Any]] = field(default_factory=list)  # each phase and when it began, seconds from the start
    stopping: bool = False  # the console is stopping: the build gives up at its next step, publishing nothing

    def step(self, phase: str, done: int = 0) -> None:
        """The build's progress callback (run in its thread) and the job's own phases."""
        if self.stopping and phase != "published":
            raise JobStopped("the console stopped; nothing more was published")
        if phase != self.phase:
            self.phases.append({"phase": phase, "at_s": round(time.time() - self.started_at, 3)})
        self.phase, self.done = phase, done

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "who": self.who, "action": self.action, "state": self.state, "phase": self.phase,
                "done": self.done, "seq": self.seq, "error": self.error, "phases": self.phases,
                "elapsed_s": round(time.time() - self.started_at, 3)}


def live_grid(snapshots: Path) -> Grid:
    """The grid to build on: the live snapshot's (a publish must not move every cell), else the default."""
    try:
        return open_current(snapshots, verify=False).grid
    except Exception:  # noqa: BLE001 - no live snapshot yet, or an unreadable one: the build's default grid
        return SquareGrid(cell_m=100.0, radius=2)


class JobStopped(LoaderError):
    """The console is stopping under a job."""


class DraftMoved(LoaderError):
    """The draft was edited after the preview a publish was asked from: nothing is built."""


def _run_build(build_settings: BuildSettings, spec: str, progress: Callable[[str, int], None]) -> dict[str, Any]:
    """The build, on an event loop of its own in a worker thread: minutes of sorting at 10^8 rows must not stall the
    console's loop (the page's job polls, a live kill switch)."""
    async def run() -> dict[str, Any]:
        source = open_source(spec)
        try:
            return await build(build_settings, source, progress)
        finally:
            await source.close()

    return asyncio.run(run())


async def _build(settings: ConsoleSettings, db: Db, out: Path, scratch: Path, progress: Callable[[str, int], None],
                 revision: int | None) -> tuple[dict[str, Any], int]:
    """Build one revision of the draft into `out` (the one given, or refuse: DraftMoved); return the manifest and
    the revision built. A MySQL draft is built from its tables, saves held off meanwhile; a SQLite one is
    exported in one read transaction, its revision read in the same one."""
    def export_at(cur: Cursor) -> int:
        now = store.revision(cur)
        if revision is None or now == revision:
            export(cur, scratch / "data")
        return now

    async with db.hold():
        if db.dialect == "mysql":
            built, spec = await db.read(store.revision), db.dsn
        else:
            progress("export", 0)
            built, spec = await db.read(export_at, stream=True), str(scratch / "data")
        if revision is not None and built != revision:
            raise DraftMoved(f"the draft is at revision {built}, not the {revision} previewed: preview again")
        grid = await asyncio.to_thread(live_grid, settings.snapshots)
        build_settings = BuildSettings(source=spec, out=out, grid=grid, keep=settings.keep, memory_mb=settings.memory_mb,
                                       channels=Path(settings.channels) if settings.channels else None)
        return await asyncio.to_thread(_run_build, build_settings, spec, progress), built


async def preview(settings: ConsoleSettings, db: Db) -> dict[str, Any]:
    """A dry-run build of the draft and what it would change against the live snapshot, with the revision built."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="preview-", dir=settings.work_dir) as tmp:
        scratch = Path(tmp)
        manifest, revision = await _build(settings, db, scratch / "snaps", scratch, lambda stage, done: None, None)
        new = await asyncio.to_thread(open_snapshot, scratch / "snaps" / str(manifest["seq"]))
        live = await asyncio.to_thread(_live, settings.snapshots)
        return {"revision": revision, "live_seq": live.seq if live else None, "counts": manifest["counts"],
                "screening": manifest["screening"], **await asyncio.to_thread(compare, live, new)}


def _live(snapshots: Path) -> Snapshot | None:
    return open_current(snapshots) if current_seq(snapshots) is not None else None


async def run_publish(settings: ConsoleSettings, db: Db, job: Job, revision: int) -> None:
    """Build the previewed revision of the draft into the snapshots folder, upload it to the origin if there is one
    (if that fails, CURRENT here goes back: it must say what the hosts serve), wait until served."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="publish-", dir=settings.work_dir))
    before = await asyncio.to_thread(current_seq, settings.snapshots)
    try:
        def mark(cur: Cursor) -> None:
            if store.revision(cur) != revision:
                raise DraftMoved(f"the draft moved on from the revision {revision} previewed: preview again")
            store.mark_draft_published(cur)  # the ledger holds what is built from here on

        await db.write(mark)
        manifest, _ = await _build(settings, db, settings.snapshots, scratch, job.step, revision)
        job.seq = int(manifest["seq"])
        if settings.origin:
            job.step("upload")
            try:
                await _with_origin(settings, lambda origin: publish(origin, settings.snapshots / str(job.seq), manifest))
            except BaseException:
                if before is not None:
                    await asyncio.to_thread(rollback, settings.snapshots, before)
                raise
        await _wait_served(settings, job)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def run_rollback(settings: ConsoleSettings, job: Job, to: int) -> None:
    """Point CURRENT back at an older snapshot: the origin's first (what the hosts pull; if it refuses, nothing here
    moved), then here; wait until served."""
    job.step("rollback")
    if settings.origin:
        await _with_origin(settings, lambda origin: rollback_origin(origin, to))
    job.seq = await asyncio.to_thread(rollback, settings.snapshots, to)
    await _wait_served(settings, job)


async def _with_origin(settings: ConsoleSettings, work: Callable[[Origin], Awaitable[Any]]) -> None:
    origin = open_origin(settings.origin, settings.origin_endpoint)
    try:
        await work(origin)
    finally:
        await origin.close()


async def _wait_served(settings: ConsoleSettings, job: Job) -> None:
    if not settings.service:
        job.step("published")
        return
    job.step(WAITING)
    in_a_row = 0
    deadline = time.monotonic() + SERVED_WAIT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while time.monotonic() < deadline:
            if job.stopping:  # the console is stopping: published, not confirmed (the job says so)
                return
            in_a_row = in_a_row + 1 if await _serving(http, settings.service) == job.seq else 0
            if in_a_row >= SERVED_CHECKS:
                job.step("served")
                return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the service at {settings.service} did not serve snapshot {job.seq} within {SERVED_WAIT_S:.0f} s")


async def _serving(http: aiohttp.ClientSession, base: str) -> int | None:
    try:
        async with http.get(f"{base}/healthz") as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    snapshot = body.get("snapshot") if isinstance(body, dict) else None
    return snapshot.get("seq") if isinstance(snapshot, dict) else None

