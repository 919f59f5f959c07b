"""The puller: brings an origin's current snapshot into this host's snapshots folder, for the watcher.

It runs beside the snapshot watcher in each worker (and in the collector). It polls the origin's
CURRENT; a seq the host lacks is downloaded into <root>/.pull-<seq>/ (a download cut short resumes
where it stopped), every file checked against the manifest's SHA-256 and fsynced, then published
locally the way a build publishes (rename, then CURRENT), and the watcher's double buffer swaps it
in. A seq the host already has (the origin rolled back) is pointed at. A copy that fails its checks
is refused and reported, and the live snapshot stays; while the origin is down the puller backs off
and the host goes on serving. Nothing an origin sends ends the puller or fills the host: a malformed
CURRENT or manifest, an object longer than its cap or than its manifest says, a snapshot above
max_bytes is refused, and an origin that stalls or drips its answer runs into a deadline. The workers
of a host share its folder: one pulls at a time (a lock file), the others find the work done. This
module may touch the origin and the local snapshots folder.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from geo_service.snapshot.folder import current_seq, install_pulled, rollback
from geo_service.snapshot.format import SnapshotError, open_snapshot, parse_manifest, verify_file
from geo_service.snapshot.origin import Origin, OriginError, current_of

T = TypeVar("T")
log = logging.getLogger("geodrop.pull")
MAX_BACKOFF_S = 30.0
REFUSED_RETRY_S = 60.0  # a copy refused as corrupt is fetched again only this long after, in case the origin is fixed
MAX_SNAPSHOT_BYTES = 8 << 30  # origin_max_bytes' default: a snapshot's files in all
# The slowest download a file's deadline allows beyond the origin's timeout: a drip-feeding origin fails it, and
# a slow but honest link resumes where it stopped on the next try.
MIN_BYTES_PER_S = 256 << 10
_PREFIX = ".pull-"


@dataclass(slots=True)
class PullHealth:
    origin: str
    origin_seq: int | None = None
    local_seq: int | None = None
    last_pull_at: float = 0.0  # when the last pull into this folder finished (by any worker of the host)
    last_pull_s: float = 0.0  # how long it took: download and checks
    last_pull_bytes: int = 0
    last_error: str | None = None
    pulls: int = 0  # pulls this process completed
    refused: int = 0  # answers this process refused: a malformed CURRENT or manifest, over a limit, a bad checksum
    failures: int = 0  # polls or downloads that failed (origin down or stalled, a refused answer)


class Puller:
    """Keeps `root` at the origin's current seq; one pull at a time per host."""

    def __init__(self, origin: Origin, root: Path, interval_s: float, keep: int = 5,
                 on_pulled: Callable[[], None] | None = None, refused_retry_s: float = REFUSED_RETRY_S,
                 max_bytes: int = MAX_SNAPSHOT_BYTES) -> None:
        self.origin = origin
        self.refused_retry_s = refused_retry_s
        self.max_bytes = max_bytes
        self.root = root
        self.interval_s = interval_s
        self.keep = keep
        self.on_pulled = on_pulled
        self.health = PullHealth(origin.url)
        self._refused: tuple[int, bytes, float] | None = None  # (seq, manifest, when) of the last copy refused

    def view(self) -> dict[str, Any]:
        """Return the health, with the last pull as the host's folder records it."""
        try:
            shared = orjson.loads((self.root / ".pull.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            shared = {}
        if not (isinstance(shared, dict) and all(isinstance(shared.get(k), int | float) for k in ("at", "seconds", "bytes"))):
            shared = {}  # not what _fetch_checked writes: the host's record of its last pull is not there
        h = self.health
        if shared.get("at", 0) > h.last_pull_at:
            h.last_pull_at, h.last_pull_s, h.last_pull_bytes = shared["at"], shared["seconds"], shared["bytes"]
        return {**asdict(h), "last_pull_s_ago": round(time.time() - h.last_pull_at, 1) if h.last_pull_at else None}

    async def pull_once(self) -> bool:
        """Bring the origin's current seq here if it is not; return whether CURRENT moved. Raises
        OriginError when the origin cannot be read, SnapshotError when its copy is refused."""
        seq = await self._within(self.origin.timeout_s, "CURRENT", current_of(self.origin))
        self.health.origin_seq = seq
        self.health.local_seq = local = await asyncio.to_thread(current_seq, self.root)
        if seq is None or seq == local:
            return False
        if (self.root / str(seq)).is_dir():
            await asyncio.to_thread(rollback, self.root, seq)  # the origin rolled back (or forth) to a seq we have
        elif not await self._download(seq):
            return False
        self.health.local_seq = seq
        if self.on_pulled is not None:
            self.on_pulled()
        return True

    async def _download(self, seq: int) -> bool:
        """Fetch seq into a temp folder, check it and publish it; False if another worker is at it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".pull.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                if await asyncio.to_thread(current_seq, self.root) == seq:
                    return True  # another worker of this host pulled it meanwhile
                return await self._fetch_checked(seq)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def _fetch_checked(self, seq: int) -> bool:
        name = f"{seq}/manifest.json"
        raw = await self._within(self.origin.timeout_s, name, self.origin.read(name))
        if raw is None:
            raise OriginError(f"origin {self.origin.url}: CURRENT names {seq}, which has no manifest.json")
        refused = self._refused
        if refused is not None and refused[:2] == (seq, raw) and time.time() - refused[2] < self.refused_retry_s:
            return False
        started = time.monotonic()
        tmp = self.root / f"{_PREFIX}{seq}"
        try:  # whatever makes this copy refused, it is not fetched again for refused_retry_s
            total = await self._fetch_into(tmp, seq, raw)
        except SnapshotError:
            self._refused = (seq, raw, time.time())
            raise
        await asyncio.to_thread(install_pulled, self.root, tmp, seq, self.keep)
        self._refused = None
        h = self.health
        h.pulls += 1
        h.last_pull_at, h.last_pull_s = time.time(), round(time.monotonic() - started, 3)
        h.last_pull_bytes = total
        # Replaced whole: another worker's view() never reads half of it.
        (self.root / ".pull.json.part").write_bytes(orjson.dumps({"seq": seq, "at": h.last_pull_at, "seconds": h.last_pull_s,
                                                                  "bytes": h.last_pull_bytes}))
        os.replace(self.root / ".pull.json.part", self.root / ".pull.json")
        log.info("snapshot pulled", extra={"seq": seq, "seconds": h.last_pull_s, "bytes": h.last_pull_bytes})
        return True

    async def _fetch_into(self, tmp: Path, seq: int, raw: bytes) -> int:
        """Download seq's files under the manifest `raw` into tmp and check them as a snapshot; return their bytes."""
        where = f"origin {self.origin.url}/{seq}/manifest.json"
        manifest = parse_manifest(raw, where, seq)
        total: int = sum(info["bytes"] for info in manifest["files"].values())
        if total > self.max_bytes:  # checked before a byte of it is written
            raise SnapshotError(f"{where}: {total} bytes of files, above origin_max_bytes ({self.max_bytes}); refused")
        await asyncio.to_thread(_clear_other_pulls, self.root, tmp)  # first: their space counts as free below
        tmp.mkdir(exist_ok=True)
        missing = total - await asyncio.to_thread(_partial_bytes, tmp, manifest["files"])
        free = (await asyncio.to_thread(shutil.disk_usage, self.root)).free
        if missing > free:  # refused before a byte is written, not half-written into a full disk
            raise OSError(errno.ENOSPC, f"snapshot {seq} needs {missing} more bytes; {free} are free under {self.root}")
        for name, info in manifest["files"].items():
            await self._fetch_file(f"{seq}/{name}", tmp / name, info)
        (tmp / "manifest.json").write_bytes(raw)
        # Checksums hold; the tables and arrays must also make a snapshot before CURRENT names it.
        await asyncio.to_thread(open_snapshot, tmp, True, False)
        return total

    async def _fetch_file(self, name: str, dest: Path, info: dict[str, Any]) -> None:
        """Download one file (resuming a partial one), then check it against the manifest and fsync it."""
        size = dest.stat().st_size if dest.exists() else 0
        if size > info["bytes"]:
            dest.unlink()
            size = 0
        try:
            if size < info["bytes"]:
                seconds = self.origin.timeout_s + (info["bytes"] - size) / MIN_BYTES_PER_S
                await self._within(seconds, name, self.origin.fetch(name, dest, info["bytes"]))
            await asyncio.to_thread(_check_and_sync, dest, info)
        except SnapshotError:
            dest.unlink(missing_ok=True)  # fetched whole next time
            raise

    async def _within(self, seconds: float, name: str, work: Awaitable[T]) -> T:
        """Await work on the origin for at most `seconds` in all: a read timeout alone lets an origin that drips a
        byte now and then hold the puller, and the host's pull lock, for ever."""
        try:
            async with asyncio.timeout(seconds):
                return await work
        except TimeoutError:
            raise OriginError(f"origin {self.origin.url}/{name}: no complete answer within {seconds:.1f} s") from None

    async def run(self) -> None:
        """Pull until cancelled; back off while the origin fails. Nothing the origin sends ends it: a refused
        answer, a failure and even an unexpected error are reported, and pulling goes on."""
        delay = self.interval_s
        while True:
            try:
                await self.pull_once()
            except SnapshotError as exc:
                self.health.refused += 1
                delay = self._failed("snapshot refused; the live snapshot stays", str(exc), delay)
            except (OriginError, OSError) as exc:
                delay = self._failed("snapshot pull failed; the live snapshot stays", str(exc), delay)
            except Exception as exc:  # a bug must not stop this host pulling until it restarts
                delay = self._failed("snapshot pull failed unexpectedly; the live snapshot stays",
                                     f"{type(exc).__name__}: {exc}", delay, trace=True)
            else:
                if self._refused is None or self._refused[0] != self.health.origin_seq:
                    delay = self.interval_s  # a refused copy still current at the origin stays reported, backed off
                    self.health.last_error = None
            await asyncio.sleep(delay)

    def _failed(self, message: str, error: str, delay: float, trace: bool = False) -> float:
        """Count and report a failed poll; return the next, longer delay."""
        self.health.failures += 1
        self.health.last_error = error
        delay = min(delay * 2, MAX_BACKOFF_S)
        log.warning(message, exc_info=trace, extra={"error": error, "retry_in_s": delay})
        return delay


def pull_metrics(puller: Puller) -> dict[str, tuple[str, str, float]]:
    """Return the puller's figures for /metrics (name -> type, help, value)."""
    v = puller.view()
    return {
        "origin_seq": ("gauge", "Seq the origin's CURRENT names (0: unknown).", v["origin_seq"] or 0),
        "pulls_total": ("counter", "Snapshots this process pulled from the origin.", v["pulls"]),
        "pull_refused_total": ("counter", "Origin answers refused: a malformed CURRENT or manifest, over a limit, "
                                          "a bad checksum.", v["refused"]),
        "pull_failures_total": ("counter", "Origin polls or downloads that failed.", v["failures"]),
        "last_pull_seconds": ("gauge", "Duration of the last pull into this host's folder.", v["last_pull_s"]),
        "last_pull_age_seconds": ("gauge", "Time since the last pull into this host's folder (-1: none).",
                                  v["last_pull_s_ago"] if v["last_pull_s_ago"] is not None else -1),
    }


@asynccontextmanager
async def pulling(puller: Puller | None) -> AsyncIterator[None]:
    """Run a puller (if there is one) for as long as the block lasts, then close its origin."""
    if puller is None:
        yield
        return
    task = asyncio.create_task(puller.run(), name="snapshot-puller")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await puller.origin.close()


def _check_and_sync(path: Path, info: dict[str, Any]) -> None:
    verify_file(path, info)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clear_other_pulls(root: Path, keep: Path) -> None:
    """Remove the temp folders of pulls of other seqs (the origin moved on): only `keep` can still be resumed."""
    for p in root.glob(f"{_PREFIX}*"):
        if p != keep:
            shutil.rmtree(p, ignore_errors=True)


def _partial_bytes(tmp: Path, files: dict[str, Any]) -> int:
    """Bytes of a resumed pull already on disk, counted up to each file's size (a longer one is fetched again)."""
    sizes = {name: (tmp / name).stat().st_size if (tmp / name).is_file() else 0 for name in files}
    return sum(size for name, size in sizes.items() if size <= files[name]["bytes"])
