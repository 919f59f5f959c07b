"""The snapshot format: sorted flat arrays plus a manifest, written atomically and opened memory-mapped.

Layout of SNAPSHOTS_DIR:
    <seq>/manifest.json   format, version, seq, grid, counts, screening, sha256 of every file
    <seq>/*.npy           the row arrays, sorted by (cell, task), opened with mmap_mode="r"
    <seq>/tasks.json      the task table (rows point into it by position)
    <seq>/districts.json  the district table
    CURRENT               the live seq, replaced by rename
    .lock                 flock held while a writer allocates a seq and publishes
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from geo_service.grid import Grid, GridError, grid_from_params

FORMAT = "geodrop-snapshot"
# 2: coordinates as int32 micro-degrees and a 32-bit poi_order, 32 bytes a row (1: float64 and int64, 44).
VERSION = 2
# Row arrays: name -> dtype, one entry per (POI, task) row each. Separate plain arrays, not one
# packed record array: turning packed records into Python tuples costs ~10x more per row.
ROW_ARRAYS: dict[str, np.dtype[Any]] = {
    "cells": np.dtype("<i8"),
    "task_index": np.dtype("<i4"),
    "poi_ids": np.dtype("<i8"),
    "lats": np.dtype("<i4"),  # micro-degrees: exact to 1e-6 degree (about 11 cm)
    "lngs": np.dtype("<i4"),
    "poi_order": np.dtype("<i4"),  # row positions in poi_id order: finds a claimed POI by id
}
ROW_BYTES = sum(dtype.itemsize for dtype in ROW_ARRAYS.values())
MICRO = 1e6  # units of a stored coordinate in a degree
MAX_ROWS = 2**31 - 1  # what a 32-bit poi_order can point at
TABLES = ("tasks.json", "districts.json")
# Files a snapshot may carry beyond the required ones: the district outlines simplified for maps
# (the dashboard's), absent from snapshots built before it.
OPTIONAL = ("districts.geojson",)
TMP_PREFIX = ".tmp-"


class SnapshotError(Exception):
    """A snapshot that cannot be written, found or trusted."""


class StorageError(SnapshotError):
    """The disk refused a write (full, read-only, I/O error): nothing was published, CURRENT is unchanged."""


def storage_error(root: Path, what: str, exc: OSError,
                  consequence: str = "nothing was published and CURRENT is unchanged") -> StorageError:
    """Name what could not be written, where and why, for an operator to free space and run again."""
    where = f" ({exc.filename})" if exc.filename else ""
    try:  # numpy reports a short write without errno: the free space says whether the disk is full
        free = f"; {shutil.disk_usage(root).free / 2**20:.1f} MiB free on its disk"
    except OSError:
        free = ""
    return StorageError(f"{root}: could not write {what}: {exc.strerror or exc}{where}{free}; {consequence}")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An opened, verified snapshot: read-only memory-mapped rows and its small tables."""

    path: Path
    manifest: dict[str, Any]
    grid: Grid
    cells: npt.NDArray[np.int64]
    task_index: npt.NDArray[np.int32]
    poi_ids: npt.NDArray[np.int64]
    lats: npt.NDArray[np.int32]  # micro-degrees (degrees() gives degrees)
    lngs: npt.NDArray[np.int32]
    poi_order: npt.NDArray[np.int32]
    tasks: list[dict[str, Any]]
    districts: list[dict[str, Any]]

    @property
    def seq(self) -> int:
        return int(self.manifest["seq"])

    def degrees(self, rows: Any) -> tuple[Any, Any]:
        """Return (lat, lng) in degrees of a row position or an index array of them."""
        return self.lats[rows] / MICRO, self.lngs[rows] / MICRO


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def current_seq(root: Path) -> int | None:
    """Return the seq CURRENT points at, or None before the first publish."""
    try:
        text = (root / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        raise SnapshotError(f"{root / 'CURRENT'}: not a snapshot seq: {text[:40]!r}")
    return int(text)


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
    _fsync_path(root)


# A row array to write: the values, or an .npy file of them on the snapshots' filesystem, moved in.
RowArray = np.ndarray | Path


def _rows_of(array: RowArray, dtype: np.dtype[Any]) -> int:
    if isinstance(array, np.ndarray):
        return len(array)
    found = np.load(array, mmap_mode="r", allow_pickle=False)
    if found.dtype != dtype or found.ndim != 1:
        raise SnapshotError(f"{array}: expected rows of {dtype}, got {found.shape} {found.dtype}")
    return len(found)


def _write_files(folder: Path, arrays: Mapping[str, RowArray], tables: Mapping[str, Any],
                 extra: Mapping[str, bytes]) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for name, dtype in ROW_ARRAYS.items():
        path, array = folder / f"{name}.npy", arrays[name]
        rows = _rows_of(array, dtype)
        if isinstance(array, Path):
            os.replace(array, path)
        else:
            np.save(path, np.ascontiguousarray(array, dtype=dtype), allow_pickle=False)
        files[path.name] = {"dtype": dtype.str, "rows": rows}
    for name in TABLES:
        (folder / name).write_bytes(orjson.dumps(tables[name.removesuffix(".json")]))
        files[name] = {}
    for name, data in extra.items():
        if name not in OPTIONAL:
            raise SnapshotError(f"{name}: not a file a snapshot carries (those are {', '.join(OPTIONAL)})")
        (folder / name).write_bytes(data)
        files[name] = {}
    for name, info in files.items():
        path = folder / name
        _fsync_path(path)
        info.update(bytes=path.stat().st_size, sha256=_sha256(path))
    return files


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
) -> dict[str, Any]:
    """Write a snapshot beside the others, publish it by replacing CURRENT, and return its manifest.

    Everything is written and fsynced in a temp folder first, so a crash at any point leaves the
    live snapshot and CURRENT as they were.
    """
    lengths = {_rows_of(arrays[name], dtype) for name, dtype in ROW_ARRAYS.items()}
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
                "files": _write_files(tmp, arrays, tables, extra or {}),
            }
            (tmp / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            _publish(root, tmp, seq, keep)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise storage_error(root, f"snapshot {seq}", exc) from exc
    return manifest


def _publish(root: Path, tmp: Path, seq: int, keep: int) -> None:
    """Make a complete, fsynced-file folder snapshot `seq` and point CURRENT at it (the caller holds the lock)."""
    _fsync_path(tmp / "manifest.json")
    _fsync_path(tmp)
    os.rename(tmp, root / str(seq))
    try:
        _fsync_path(root)
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


def read_manifest(folder: Path) -> dict[str, Any]:
    """Return a snapshot folder's manifest after checking its format and version."""
    try:
        raw = (folder / "manifest.json").read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{folder}: no manifest.json") from None
    return parse_manifest(raw, f"{folder}/manifest.json")


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Return a manifest's content after checking its format, version and file list; `where` names it."""
    try:
        manifest = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"{where}: not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"{where}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise SnapshotError(f"{where}: format version {manifest.get('version')!r}; this release reads version {VERSION} "
                            "only: rebuild the snapshot with this release's geo-snapshot build (and publish it again)")
    required = {f"{n}.npy" for n in ROW_ARRAYS} | set(TABLES)
    listed = set(manifest.get("files", {}))
    if not required <= listed <= required | set(OPTIONAL):
        raise SnapshotError(f"{where}: lists files {sorted(listed)}, expected {sorted(required)} and any of {list(OPTIONAL)}")
    return manifest


def verify_file(path: Path, info: Mapping[str, Any]) -> None:
    """Check a snapshot file against its manifest entry (size, SHA-256)."""
    if not path.is_file() or path.stat().st_size != info["bytes"]:
        raise SnapshotError(f"{path}: missing or not {info['bytes']} bytes")
    if _sha256(path) != info["sha256"]:
        raise SnapshotError(f"{path}: checksum mismatch")


def _verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    for name, info in manifest["files"].items():
        verify_file(folder / name, info)


def _open_rows(folder: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, dtype in ROW_ARRAYS.items():
        info = manifest["files"][f"{name}.npy"]
        try:
            arr = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise SnapshotError(f"{folder}/{name}.npy: unreadable: {exc}") from None
        if arr.dtype != dtype or arr.ndim != 1 or len(arr) != info["rows"]:
            raise SnapshotError(f"{folder}/{name}.npy: expected {info['rows']} rows of {dtype}, got {arr.shape} {arr.dtype}")
        # A plain ndarray view of the same read-only mapping: np.memmap's subclass hooks make every
        # slice on the request path ~3x slower, and the mapping lives as long as the view does.
        arrays[name] = np.asarray(arr)
    return arrays


def read_tables(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return a snapshot folder's task and district tables (no arrays mapped)."""
    try:
        return orjson.loads((folder / "tasks.json").read_bytes()), orjson.loads((folder / "districts.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SnapshotError(f"{folder}: unreadable tables: {exc}") from None


def open_snapshot(folder: Path, verify: bool = True, checksums: bool = True) -> Snapshot:
    """Open a snapshot folder read-only; with verify, check checksums (unless a copy already checked them while
    it was made: staging.staged), shapes and order first."""
    manifest = read_manifest(folder)
    if verify and checksums:
        _verify_files(folder, manifest)
    try:
        grid = grid_from_params(manifest["grid"])
    except (GridError, KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{folder}/manifest.json: bad grid parameters: {exc}") from None
    arrays = _open_rows(folder, manifest)
    tasks, districts = read_tables(folder)
    if verify:
        cells, task_index = arrays["cells"], arrays["task_index"]
        if len(cells) > 1 and not bool(np.all(cells[1:] >= cells[:-1])):
            raise SnapshotError(f"{folder}/cells.npy: rows are not sorted by cell")
        if len(task_index) and not 0 <= int(task_index.min()) <= int(task_index.max()) < len(tasks):
            raise SnapshotError(f"{folder}/task_index.npy: points outside the {len(tasks)} tasks")
        by_poi = arrays["poi_order"]
        if len(by_poi) and not (0 <= int(by_poi.min()) and int(by_poi.max()) < len(cells)
                                and bool(np.all(np.diff(arrays["poi_ids"][by_poi]) >= 0))):
            raise SnapshotError(f"{folder}/poi_order.npy: not the rows in poi_id order")
    return Snapshot(folder, manifest, grid, tasks=tasks, districts=districts, **arrays)


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
