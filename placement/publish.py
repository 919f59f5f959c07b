"""Preview, publish and roll back from the console: the draft goes through the build itself (loaders.build), never a
copy of its rules. A preview builds into a scratch folder and compares the result with the live snapshot; a
publish builds into the snapshots folder (and uploads to the origin), then waits until the services serve it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from geo_service.snapshot.folder import current_seq, open_current, rollback
from geo_service.snapshot.format import Snapshot, open_snapshot
from geo_service.snapshot.grid import Grid, SquareGrid
from geo_service.snapshot.origin import open_origin, publish, rollback_origin
from loaders.build import BuildSettings, build
from loaders.sources import open_source
from placement.db import Db
from placement.diff import compare
from placement.folders import export
from placement.settings import ConsoleSettings

SERVED_CHECKS = 4  # answers in a row that must name the seq: a service's workers each load it in their own time
SERVED_WAIT_S = 120.0


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

    def step(self, phase: str, done: int = 0) -> None:
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


async def _build(settings: ConsoleSettings, db: Db, out: Path, scratch: Path,
                 progress: Callable[[str, int], None]) -> dict[str, Any]:
    """Build the draft into `out`: a MySQL draft straight from its tables, a SQLite one through a data folder."""
    if db.dialect == "mysql":
        spec = db.dsn
    else:
        progress("export", 0)
        await db.read(lambda cur: export(cur, scratch / "data"))
        spec = str(scratch / "data")
    grid = await asyncio.to_thread(live_grid, settings.snapshots)
    build_settings = BuildSettings(source=spec, out=out, grid=grid, keep=settings.keep, memory_mb=settings.memory_mb,
                                   channels=Path(settings.channels) if settings.channels else None)
    source = open_source(spec)
    try:
        return await build(build_settings, source, progress)
    finally:
        await source.close()


async def preview(settings: ConsoleSettings, db: Db) -> dict[str, Any]:
    """A dry-run build of the draft and what it would change against the live snapshot."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="preview-", dir=settings.work_dir) as tmp:
        scratch = Path(tmp)
        manifest = await _build(settings, db, scratch / "snaps", scratch, lambda stage, done: None)
        new = await asyncio.to_thread(open_snapshot, scratch / "snaps" / str(manifest["seq"]))
        live = await asyncio.to_thread(_live, settings.snapshots)
        return {"live_seq": live.seq if live else None, "counts": manifest["counts"],
                "screening": manifest["screening"], **await asyncio.to_thread(compare, live, new)}


def _live(snapshots: Path) -> Snapshot | None:
    return open_current(snapshots) if current_seq(snapshots) is not None else None


async def run_publish(settings: ConsoleSettings, db: Db, job: Job) -> None:
    """Build the draft into the snapshots folder, upload it to the origin if there is one, wait until served."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="publish-", dir=settings.work_dir))
    try:
        manifest = await _build(settings, db, settings.snapshots, scratch, job.step)
        job.seq = int(manifest["seq"])
        if settings.origin:
            job.step("upload")
            origin = open_origin(settings.origin, settings.origin_endpoint)
            try:
                await publish(origin, settings.snapshots / str(job.seq), manifest)
            finally:
                await origin.close()
        await _wait_served(settings, job)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def run_rollback(settings: ConsoleSettings, job: Job, to: int | None) -> None:
    """Point CURRENT (here, and at the origin if there is one) back at an older snapshot; wait until served."""
    job.step("rollback")
    job.seq = await asyncio.to_thread(rollback, settings.snapshots, to)
    if settings.origin:
        origin = open_origin(settings.origin, settings.origin_endpoint)
        try:
            await rollback_origin(origin, job.seq)
        finally:
            await origin.close()
    await _wait_served(settings, job)


async def _wait_served(settings: ConsoleSettings, job: Job) -> None:
    if not settings.service:
        job.step("published")
        return
    job.step("waiting for the services")
    in_a_row = 0
    deadline = time.monotonic() + SERVED_WAIT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while time.monotonic() < deadline:
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

