"""Private, verified copies of snapshots: the files the service and the collector actually map.

A mapped file that someone truncates kills the process mapping it (SIGBUS at the next read of a page
past the new end), and one rewritten in place changes answers under it. So no process maps the
snapshots folder: each maps a copy in its own data folder, made once per host (every worker maps the
same copy, so the page cache holds it once), hashed while it is copied, read-only, and afterwards only
ever unlinked, which leaves mapped pages alone. Whatever then happens to the snapshots folder, a
process keeps serving what it mapped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geo_service.snapshot.folder import TMP_PREFIX, locked, remove_stale_tmp
from geo_service.snapshot.format import SnapshotError, parse_manifest, storage_error

# Copies kept beside the newest: the one a worker still serves while its siblings move on, and the one
# before it, which a rollback would want back.
KEEP = 3
_CHUNK = 1 << 20


@contextmanager
def staged(folder: Path, into: Path) -> Iterator[Path]:
    """Yield a verified private copy of snapshot `folder` under `into`, copying it unless a process on this
    host already did. The copies' lock is held meanwhile, so none is pruned before the caller maps it."""
    try:
        raw = (folder / "manifest.json").read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{folder}: no manifest.json") from None
    manifest = parse_manifest(raw, f"{folder}/manifest.json")
    copy = into / _identity(folder.name, raw)
    with locked(into):
        if copy.is_dir():
            os.utime(copy)  # in use again: the newest as far as pruning is concerned
        else:
            remove_stale_tmp(into)
            _copy(folder, copy, manifest, raw)
            _prune(into)
        yield copy


def identity(folder: Path) -> str:
    """Name a snapshot folder by its seq and its manifest's content (which holds every file's checksum): two
    builds under one seq (a snapshots folder deleted and rebuilt) differ, and so does a folder copied under
    another seq. A private copy carries the name of what it copies."""
    try:
        raw = (folder / "manifest.json").read_bytes()
    except OSError:
        raw = b""
    return _identity(folder.name, raw)


def _identity(name: str, manifest: bytes) -> str:
    return f"{name}-{hashlib.sha256(manifest).hexdigest()[:16]}"


def _copy(folder: Path, copy: Path, manifest: Mapping[str, Any], raw: bytes) -> None:
    """Copy every listed file, checking each against the manifest as it is read; publish by rename."""
    tmp = copy.with_name(f"{TMP_PREFIX}{copy.name}-{os.getpid()}")
    try:
        tmp.mkdir()
        for name, info in manifest["files"].items():
            _copy_file(folder / name, tmp / name, info)
        (tmp / "manifest.json").write_bytes(raw)
        for path in tmp.iterdir():
            path.chmod(0o444)
        os.rename(tmp, copy)
    except OSError as exc:
        raise storage_error(copy.parent, f"a private copy of snapshot {manifest['seq']}", exc,
                            "the live snapshot keeps serving") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # what a failed copy left; nothing after the rename


def _copy_file(source: Path, target: Path, info: Mapping[str, Any]) -> None:
    digest, size = hashlib.sha256(), 0
    try:
        reader = source.open("rb")
    except FileNotFoundError:
        raise SnapshotError(f"{source}: missing") from None
    with reader, target.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
    if size != info["bytes"]:
        raise SnapshotError(f"{source}: {size} bytes, the manifest says {info['bytes']}")
    if digest.hexdigest() != info["sha256"]:
        raise SnapshotError(f"{source}: checksum mismatch")


def _prune(into: Path) -> None:
    copies = sorted((p for p in into.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in copies[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def source_problem(folder: Path, manifest: Mapping[str, Any]) -> str | None:
    """Say what is wrong with a snapshot's source folder (a file gone or of the wrong size), or None: a stat
    per file, cheap enough to run every poll. Serving is unaffected; a restart or reload would be."""
    for name, info in {"manifest.json": None, **manifest["files"]}.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{path}: missing"
        if info is not None and size != info["bytes"]:
            return f"{path}: {size} bytes, the manifest says {info['bytes']}"
    return None
