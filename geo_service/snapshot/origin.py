"""Snapshot origins: where built snapshots are published for many hosts, and where the hosts' pullers
read them back (pull.py).

Forms: a folder (publish writes it; any static HTTP server such as nginx serves it to the hosts), the
http(s):// base URL of such a server (read only), and an S3-compatible bucket, s3://bucket/prefix
(AWS, MinIO, Ceph alike; credentials from the usual AWS_* environment variables, never logged).
Layout at an origin, the same as a local snapshots folder: <seq>/<file> for every file of a snapshot,
its manifest.json written after them, and CURRENT naming the live seq, replaced last, so a
half-finished upload is never current. This module may touch the origin and local files only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from geo_service.dsn import check_authority
from geo_service.snapshot.format import MAX_SEQ_DIGITS, SnapshotError, parse_seq

T = TypeVar("T")
CHUNK = 1 << 20  # bytes read and written at a time when copying a file down
TIMEOUT_S = 30.0  # how long an origin may stay silent (origin_timeout_s)
# Caps on the small objects a host reads, so an origin answering with far more cannot fill its memory.
CURRENT_MAX_BYTES = 64
MANIFEST_MAX_BYTES = 1 << 20


class OriginError(Exception):
    """An origin that cannot be reached, or that refuses what was asked of it."""


class Origin(Protocol):
    url: str  # for messages: never carries credentials
    timeout_s: float  # how long it may stay silent; the puller's deadlines start from it

    async def read(self, name: str, limit: int = MANIFEST_MAX_BYTES) -> bytes | None:
        """Return a small object (CURRENT, a manifest), or None if the origin has none by that name; one longer
        than `limit` bytes is refused (SnapshotError)."""
        ...

    async def fetch(self, name: str, dest: Path, size: int) -> None:
        """Download an object into dest, going on from dest's length if a download was cut short. Never writes
        dest past `size` bytes: an object longer is refused (SnapshotError) and the caller deletes dest."""
        ...

    async def put(self, name: str, src: Path | bytes) -> None:
        """Store a file or bytes under name, replacing any object there (publish only)."""
        ...

    async def seqs(self) -> list[int]:
        """Return the seqs whose upload finished (their manifest is there), oldest first."""
        ...

    async def close(self) -> None: ...


def _seq_names(names: list[str]) -> list[int]:
    """Return the seqs of <seq>/manifest.json among object names."""
    seqs = (parse_seq(n.removesuffix("/manifest.json")) for n in names if n.endswith("/manifest.json"))
    return sorted({seq for seq in seqs if seq is not None})


def _too_long(where: str, limit: int) -> SnapshotError:
    return SnapshotError(f"{where}: longer than {limit} bytes; refused")


async def _bounded(chunks: AsyncIterator[bytes], limit: int, where: str) -> bytes:
    """Gather a small object, refusing it once it passes `limit` bytes (never holding much more in memory)."""
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise _too_long(where, limit)
    return bytes(data)


@contextmanager
def _capped(dest: Path, append: bool, size: int, where: str) -> Iterator[Callable[[bytes], None]]:
    """Open dest for a download (appending to a partial copy, or afresh) and yield a write that refuses to take it
    past `size` bytes: an origin sending more than the manifest says must not fill the host's disk."""
    with dest.open("ab" if append else "wb") as out:
        def write(chunk: bytes) -> None:
            if out.tell() + len(chunk) > size:
                raise SnapshotError(f"{where}: longer than the {size} bytes its manifest says; refused")
            out.write(chunk)

        yield write


class FolderOrigin:
    """A folder: written by publish, served to the hosts by a static HTTP server, or read directly (NFS)."""

    def __init__(self, root: Path, timeout_s: float = TIMEOUT_S) -> None:
        self.root = root
        self.url = str(root)
        self.timeout_s = timeout_s  # a stalled network filesystem
        self._busy_since: float | None = None  # when the file operation still running began

    async def _io(self, work: Callable[[], T]) -> T:
        """Run work in a daemon thread of its own. A read stuck in a stalled mount can be given up on (the puller's
        deadline) but not stopped: in the default pool a few such would leave no thread to the rest of the process,
        and a pool's thread would keep the process from exiting. While one is stuck, the next call fails at once
        and says since when, instead of queueing behind it."""
        if self._busy_since is not None:
            raise OriginError(f"origin {self.url}: a file operation has not returned for "
                              f"{time.monotonic() - self._busy_since:.0f} s (a stalled mount?)")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            self._busy_since = None
            if done.done():
                return  # given up on by a deadline
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

        def run() -> None:
            try:
                outcome: tuple[bool, Any] = (True, work())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                outcome = (False, exc)
            with suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(settle, *outcome)

        self._busy_since = time.monotonic()
        threading.Thread(target=run, name="folder-origin", daemon=True).start()
        try:
            return await done
        except OSError as exc:
            raise OriginError(f"origin {self.url}: {exc}") from exc

    def _open(self, name: str) -> BinaryIO:
        """Open an object that must be a regular file: a FIFO or a device would block the read or never end."""
        fd = os.open(self.root / name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OriginError(f"origin {self.url}/{name}: not a regular file")
        return os.fdopen(fd, "rb")

    async def read(self, name: str, limit: int = MANIFEST_MAX_BYTES) -> bytes | None:
        def load() -> bytes | None:
            try:
                f = self._open(name)
            except (FileNotFoundError, NotADirectoryError):
                return None
            with f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise _too_long(f"origin {self.url}/{name}", limit)
            return data

        return await self._io(load)

    async def fetch(self, name: str, dest: Path, size: int) -> None:
        def copy() -> None:
            offset = dest.stat().st_size if dest.exists() else 0
            with self._open(name) as src, _capped(dest, True, size, f"origin {self.url}/{name}") as write:
                src.seek(offset)
                while chunk := src.read(CHUNK):
                    write(chunk)

        await self._io(copy)

    async def put(self, name: str, src: Path | bytes) -> None:
        def write() -> None:
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            if isinstance(src, bytes):
                tmp.write_bytes(src)
            else:
                shutil.copyfile(src, tmp)
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)  # a reader sees the old object or the whole new one

        await self._io(write)

    async def seqs(self) -> list[int]:
        return await self._io(lambda: _seq_names([f"{p.parent.name}/{p.name}" for p in self.root.glob("*/manifest.json")]))

    async def close(self) -> None:
        return None


class HttpOrigin:
    """The base URL of an HTTP server serving an origin folder (read only). Byte ranges resume downloads."""

    def __init__(self, base: str, timeout_s: float = TIMEOUT_S) -> None:
        # Credentials in the URL (user:pass@) go in an Authorization header; `url`, which logs, errors and /healthz
        # show, keeps the user and hides the password.
        parts = urlsplit(base.rstrip("/"))
        host = parts.netloc.rpartition("@")[2]
        self.url = urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}" if parts.password else host))
        self._base = urlunsplit(parts._replace(netloc=host))
        self._auth = ({"Authorization": aiohttp.encode_basic_auth(unquote(parts.username or ""), unquote(parts.password))}
                      if parts.password else {})
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._auth)
        return self._session

    async def _get(self, name: str, offset: int, use: Callable[[aiohttp.ClientResponse], Awaitable[T]]) -> T | None:
        # no-cache: CURRENT changes under the same name, and a cache in between must not hide that.
        headers = {"Cache-Control": "no-cache", **({"Range": f"bytes={offset}-"} if offset else {})}
        try:
            async with self._client().get(f"{self._base}/{name}", headers=headers) as resp:
                if resp.status == 404:
                    return None
                if resp.status not in (200, 206):
                    raise OriginError(f"origin {self.url}/{name}: HTTP {resp.status}")
                return await use(resp)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OriginError(f"origin {self.url}/{name}: {type(exc).__name__}: {exc}") from exc

    async def read(self, name: str, limit: int = MANIFEST_MAX_BYTES) -> bytes | None:
        async def body(resp: aiohttp.ClientResponse) -> bytes:
            return await _bounded(resp.content.iter_chunked(min(CHUNK, limit + 1)), limit, f"origin {self.url}/{name}")

        return await self._get(name, 0, body)

    async def fetch(self, name: str, dest: Path, size: int) -> None:
        offset = dest.stat().st_size if dest.exists() else 0

        async def save(resp: aiohttp.ClientResponse) -> bool:
            # 200 to a ranged request: the server sent the whole object, so the partial copy is dropped.
            with _capped(dest, resp.status == 206, size, f"origin {self.url}/{name}") as write:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    write(chunk)
            return True

        if await self._get(name, offset, save) is None:
            raise OriginError(f"origin {self.url}/{name}: not found")

    async def put(self, name: str, src: Path | bytes) -> None:
        raise OriginError(f"origin {self.url}: an HTTP origin is read only; publish to the folder it serves")

    async def seqs(self) -> list[int]:
        raise OriginError(f"origin {self.url}: an HTTP origin cannot be listed; roll back on the folder it serves")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class S3Origin:
    """s3://bucket/prefix on any S3-compatible store, through aiobotocore."""

    def __init__(self, bucket: str, prefix: str, endpoint: str = "", timeout_s: float = TIMEOUT_S) -> None:
        self.bucket, self.prefix, self.endpoint, self.timeout_s = bucket, prefix.strip("/"), endpoint, timeout_s
        self.url = f"s3://{bucket}/{self.prefix}" + (f" at {endpoint}" if endpoint else "")
        self._exit: Any = None
        self._s3: Any = None

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    async def _client(self) -> Any:
        if self._s3 is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            # Fail fast: the puller has its own back-off, and a host polls every second.
            config = AioConfig(connect_timeout=min(5, self.timeout_s), read_timeout=self.timeout_s,
                               retries={"max_attempts": 2, "mode": "standard"})
            context = get_session().create_client("s3", endpoint_url=self.endpoint or None, config=config)
            self._s3 = await context.__aenter__()
            self._exit = context.__aexit__
        return self._s3

    async def _call(self, work: Callable[[Any], Awaitable[T]]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await work(await self._client())
        except (BotoCoreError, ClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise OriginError(f"origin {self.url}: {type(exc).__name__}: {exc}") from exc

    async def read(self, name: str, limit: int = MANIFEST_MAX_BYTES) -> bytes | None:
        async def get(s3: Any) -> bytes | None:
            try:
                answer = await s3.get_object(Bucket=self.bucket, Key=self._key(name))
            except s3.exceptions.NoSuchKey:
                return None
            async with answer["Body"] as body:
                return await _bounded(body.iter_chunks(min(CHUNK, limit + 1)), limit, f"origin {self.url}/{name}")

        return await self._call(get)

    async def fetch(self, name: str, dest: Path, size: int) -> None:
        offset = dest.stat().st_size if dest.exists() else 0

        async def get(s3: Any) -> None:
            ranged = {"Range": f"bytes={offset}-"} if offset else {}
            answer = await s3.get_object(Bucket=self.bucket, Key=self._key(name), **ranged)
            with _capped(dest, bool(offset), size, f"origin {self.url}/{name}") as write:
                async with answer["Body"] as body:
                    async for chunk in body.iter_chunks(CHUNK):
                        write(chunk)

        await self._call(get)

    async def put(self, name: str, src: Path | bytes) -> None:
        async def put(s3: Any) -> None:
            if isinstance(src, bytes):
                await s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=src)
                return
            with src.open("rb") as body:
                await s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=body)

        await self._call(put)

    async def seqs(self) -> list[int]:
        async def listing(s3: Any) -> list[str]:
            names = []
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(""))
            async for page in pages:
                names += [o["Key"].removeprefix(self._key("")) for o in page.get("Contents", [])]
            return names

        return _seq_names(await self._call(listing))

    async def close(self) -> None:
        if self._exit is not None:
            exit_, self._exit, self._s3 = self._exit, None, None
            await exit_(None, None, None)


def open_origin(url: str, endpoint: str = "", timeout_s: float = TIMEOUT_S) -> Origin:
    """Return the origin a URL names: s3://bucket/prefix, http(s)://base, or a folder path; it may stay silent
    for timeout_s seconds before a read of it fails."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"an s3 origin names its bucket: s3://bucket/prefix; got {url!r}")
        return S3Origin(parts.netloc, parts.path, endpoint, timeout_s)
    if parts.scheme in ("http", "https"):
        check_authority(url, "origin")  # publish and rollback take origins from flags, not settings
        return HttpOrigin(url, timeout_s)
    if parts.scheme in ("", "file"):
        return FolderOrigin(Path(parts.path if parts.scheme else url), timeout_s)
    raise ValueError(f"an origin is a folder, http(s)://... or s3://bucket/prefix; got {parts.scheme}://")


async def current_of(origin: Origin) -> int | None:
    """Return the seq an origin's CURRENT names, or None before its first publish; a CURRENT that names none is
    refused (SnapshotError)."""
    raw = await origin.read("CURRENT", CURRENT_MAX_BYTES)
    if raw is None:
        return None
    text = raw.decode(errors="replace").strip()
    seq = parse_seq(text)
    if seq is None:
        raise SnapshotError(f"origin {origin.url}: CURRENT is not a seq (at most {MAX_SEQ_DIGITS} ASCII digits): {text[:40]!r}")
    return seq


async def publish(origin: Origin, folder: Path, manifest: dict[str, Any]) -> None:
    """Upload a local snapshot folder: its data files, then its manifest, then the origin's CURRENT."""
    seq = int(manifest["seq"])
    for name in manifest["files"]:
        await origin.put(f"{seq}/{name}", folder / name)
    await origin.put(f"{seq}/manifest.json", folder / "manifest.json")
    await origin.put("CURRENT", f"{seq}\n".encode())


async def rollback_origin(origin: Origin, to_seq: int | None = None) -> int:
    """Point the origin's CURRENT at an older complete snapshot (default: the newest before the live one)."""
    live, seqs = await current_of(origin), await origin.seqs()
    if to_seq is None:
        older = [s for s in seqs if live is None or s < live]
        if not older:
            raise OriginError(f"origin {origin.url}: no snapshot older than {live} to roll back to")
        to_seq = older[-1]
    if to_seq not in seqs:
        raise OriginError(f"origin {origin.url}: no complete snapshot {to_seq}; have {seqs}")
    await origin.put("CURRENT", f"{to_seq}\n".encode())
    return to_seq
