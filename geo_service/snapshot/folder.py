"""The snapshots folder: numbered snapshot folders, CURRENT, and publishing into it atomically.

Layout of SNAPSHOTS_DIR:
    <seq>/      one snapshot each (format.py)
    CURRENT     the live seq, replaced by rename
    .lock       flock held while a writer allocates a seq and publishes
    .tmp-*      a writer's folder before it is renamed to <seq>
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from geo_service.snapshot.format import (
    FORMAT,
    MAX_ROWS,
    ROW_ARRAYS,
    VERSION,
    Manifest,
    RowArray,
    Snapshot,
    SnapshotError,
    fsync_path,
    open_snapshot,
    parse_seq,
    rows_of,
    storage_error,
    write_files,
)
from geo_service.snapshot.grid import Grid

TMP_PREFIX = ".tmp-"


@contextmanager
def locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def list_seqs(root: Path) -> list[int]:
    """Return the seqs of the published snapshot folders, oldest first."""
    if not root.is_dir():
        return []
    return sorted(seq for p in root.iterdir() if p.is_dir() and (seq := parse_seq(p.name)) is not None)


def current_seq(root: Path) -> int | None:
    """Return the seq CURRENT points at, or None before the first publish."""
    try:
        text = (root / "CURRENT").read_bytes().decode(errors="replace").strip()
    except FileNotFoundError:
        return None
    seq = parse_seq(text)
    if seq is None:
        raise SnapshotError(f"{root / 'CURRENT'}: not a snapshot seq: {text[:40]!r}")
    return seq


def _point_current(root: Path, seq: int) -> None:
    tmp = root / f"CURRENT.{os.getpid()}.tmp"
    try:
        with tmp.open("w") as f:
            f.write(f"{seq}\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, root / "CURRENT")
    fsync_path(root)




def remove_stale_tmp(root: Path) -> None:
    """Remove the temp folders of writers that died. Called under the lock, so a publishing writer's folder is
    its own; a build's spill folder is flocked while the build runs (loaders.spill) and skipped then."""
    for p in root.glob(f"{TMP_PREFIX}*"):
        if not _held(p / ".lock"):
            shutil.rmtree(p, ignore_errors=True)


def _held(lock_path: Path) -> bool:
    """Whether a live process holds an flock on this file."""
    try:
        with lock_path.open("r") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def write_snapshot(
    root: Path,
    arrays: Mapping[str, RowArray],
    tables: Mapping[str, Any],
    meta: Mapping[str, Any],
    grid: Grid,
    keep: int = 5,
    extra: Mapping[str, bytes] | None = None,
) -> Manifest:
    """Write a snapshot beside the others, publish it by replacing CURRENT, and return its manifest.

    Everything is written and fsynced in a temp folder first, so a crash at any point leaves the
    live snapshot and CURRENT as they were.
    """
    lengths = {rows_of(arrays[name], dtype) for name, dtype in ROW_ARRAYS.items()}
    if len(lengths) != 1:
        raise SnapshotError(f"row arrays differ in length: {sorted(lengths)}")
    if max(lengths) > MAX_ROWS:
        raise SnapshotError(f"{max(lengths)} rows: a snapshot holds at most {MAX_ROWS}")
    with locked(root):
        remove_stale_tmp(root)
        seq = max([*list_seqs(root), current_seq(root) or 0], default=0) + 1
        tmp = root / f"{TMP_PREFIX}{seq}-{os.getpid()}"
        try:
            tmp.mkdir()
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "seq": seq,
                "built_at": int(time.time()),
                "grid": grid.params(),
                **meta,
                "files": write_files(tmp, arrays, tables, extra or {}),
            }
            (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            _publish(root, tmp, seq, keep)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise storage_error(root, f"snapshot {seq}", exc) from exc
    return manifest


def _publish(root: Path, tmp: Path, seq: int, keep: int) -> None:
    """Make a complete, fsynced-file folder snapshot `seq` and point CURRENT at it (the caller holds the lock)."""
    fsync_path(tmp / "manifest.json")
    fsync_path(tmp)
    os.rename(tmp, root / str(seq))
    try:
        fsync_path(root)
        _point_current(root, seq)
    except OSError:
        if current_seq(root) != seq:  # never left looking like a published snapshot
            shutil.rmtree(root / str(seq), ignore_errors=True)
        raise
    prune(root, keep)


def install_pulled(root: Path, tmp: Path, seq: int, keep: int = 5) -> None:
    """Publish a snapshot folder fetched from an origin (every file written and checked) as seq, the way a
    build publishes: rename, then CURRENT."""
    with locked(root):
        if (root / str(seq)).exists():
            shutil.rmtree(root / str(seq))  # a copy that failed verification when it was pulled before
        _publish(root, tmp, seq, keep)


def prune(root: Path, keep: int) -> list[int]:
    """Delete all but the `keep` newest snapshots, never the live one; return the seqs removed."""
    live = current_seq(root)
    removable = [s for s in list_seqs(root) if s != live]
    doomed = removable[: max(len(removable) - max(keep - 1, 0), 0)]
    for seq in doomed:
        shutil.rmtree(root / str(seq), ignore_errors=True)
    return doomed


def open_current(root: Path, verify: bool = True) -> Snapshot:
    """Open the snapshot CURRENT points at."""
    seq = current_seq(root)
    if seq is None:
        raise SnapshotError(f"{root}: no CURRENT snapshot; run `geo-snapshot build` first")
    return open_snapshot(root / str(seq), verify=verify)


def rollback(root: Path, to_seq: int | None = None) -> int:
    """Point CURRENT at an older verified snapshot (default: the newest one before the live one), or at any
    snapshot already here that `to_seq` names (how a host follows its origin to a seq it has)."""
    with locked(root):
        live = current_seq(root)
        seqs = list_seqs(root)
        if to_seq is None:
            older = [s for s in seqs if live is None or s < live]
            if not older:
                raise SnapshotError(f"{root}: no snapshot older than {live} to roll back to")
            to_seq = older[-1]
        if to_seq not in seqs:
            raise SnapshotError(f"{root}: no snapshot {to_seq}; have {seqs}")
        open_snapshot(root / str(to_seq), verify=True)
        _point_current(root, to_seq)
    return to_seq
