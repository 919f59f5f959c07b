"""The snapshot format: sorted flat arrays plus a manifest; written and opened memory-mapped, verified.

Layout of a snapshot folder <seq>/:
    manifest.json   format, version, seq, grid, counts, screening, sha256 of every file
    *.npy           the row arrays, sorted by (cell, task), opened with mmap_mode="r"
    tasks.json      the task table (rows point into it by position)
    districts.json  the district table
folder.py publishes such folders in a snapshots folder; this module knows one folder at a time.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import orjson

from geo_service.snapshot.grid import Grid, GridError, grid_from_params

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
# A seq is at most this many ASCII digits: any such number fits an int64, and anything longer is garbage.
MAX_SEQ_DIGITS = 18
_SHA256 = re.compile(r"[0-9a-f]{64}")  # as hexdigest() writes it


class PrizeRow(TypedDict):
    """A prize of a task in tasks.json."""

    prize_type: str
    quota: int
    weight: float
    rate_per_s: float | None


class TaskRow(TypedDict):
    """A row of tasks.json: the task, its prizes by type, and what the build found of its POIs."""

    task_id: int
    name: str
    district_code: int
    poi_set_id: int
    starts_at: int  # epoch seconds
    ends_at: int
    enabled: bool
    stagger_s: int  # seconds between the openings of successive player groups (0: all open at starts_at)
    stagger_groups: int  # player groups (1: none); group g opens at starts_at + g * stagger_s
    prizes: list[PrizeRow]
    pois: int  # its rows in the snapshot
    outside_district: int  # of those, the POIs outside its district


class DistrictRow(TypedDict):
    """A row of districts.json."""

    code: int
    name: str
    parent_code: int | None


Manifest = dict[str, Any]  # manifest.json: format, version, seq, grid, counts, screening, files


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
    manifest: Manifest
    grid: Grid
    cells: npt.NDArray[np.int64]
    task_index: npt.NDArray[np.int32]
    poi_ids: npt.NDArray[np.int64]
    lats: npt.NDArray[np.int32]  # micro-degrees (degrees() gives degrees)
    lngs: npt.NDArray[np.int32]
    poi_order: npt.NDArray[np.int32]
    tasks: list[TaskRow]
    districts: list[DistrictRow]

    @property
    def seq(self) -> int:
        return int(self.manifest["seq"])

    def degrees(self, rows: Any) -> tuple[Any, Any]:
        """Return (lat, lng) in degrees of a row position or an index array of them."""
        return self.lats[rows] / MICRO, self.lngs[rows] / MICRO


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# A row array to write: the values, or an .npy file of them on the snapshots' filesystem, moved in.
RowArray = np.ndarray | Path


def rows_of(array: RowArray, dtype: np.dtype[Any]) -> int:
    if isinstance(array, np.ndarray):
        return len(array)
    found = np.load(array, mmap_mode="r", allow_pickle=False)
    if found.dtype != dtype or found.ndim != 1:
        raise SnapshotError(f"{array}: expected rows of {dtype}, got {found.shape} {found.dtype}")
    return len(found)


def write_files(folder: Path, arrays: Mapping[str, RowArray], tables: Mapping[str, Any],
                 extra: Mapping[str, bytes]) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for name, dtype in ROW_ARRAYS.items():
        path, array = folder / f"{name}.npy", arrays[name]
        rows = rows_of(array, dtype)
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
        fsync_path(path)
        info.update(bytes=path.stat().st_size, sha256=_sha256(path))
    return files


def read_manifest(folder: Path) -> Manifest:
    """Return a snapshot folder's manifest after checking its format and version."""
    try:
        raw = (folder / "manifest.json").read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{folder}: no manifest.json") from None
    return parse_manifest(raw, f"{folder}/manifest.json")


def parse_seq(text: str) -> int | None:
    """Return the seq a CURRENT file or a snapshot folder's name spells, or None if it spells none: ASCII decimal
    digits only (str.isdigit() alone also takes "²", which int() then refuses), at most MAX_SEQ_DIGITS of them."""
    return int(text) if 0 < len(text) <= MAX_SEQ_DIGITS and text.isascii() and text.isdigit() else None


def parse_manifest(raw: bytes, where: str, seq: int | None = None) -> Manifest:
    """Return a manifest's content after checking its format, version and the shape of every field read from it
    (seq, which must be `seq` when given, built_at, deliveries, each file's bytes, sha256 and rows): a malformed
    one, from a damaged disk or an origin, is a SnapshotError naming the field, never a KeyError or TypeError
    further on. `where` names it."""
    try:
        manifest = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"{where}: not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"{where}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise SnapshotError(f"{where}: format version {manifest.get('version')!r}; this release reads version {VERSION} "
                            "only: rebuild the snapshot with this release's geo-snapshot build (and publish it again)")
    _check(where, "seq", manifest.get("seq"), _whole(manifest.get("seq")), "a whole number")
    _check(where, "seq", manifest["seq"], seq is None or manifest["seq"] == seq, f"{seq}, the seq CURRENT names")
    built_at = manifest.get("built_at")
    _check(where, "built_at", built_at, isinstance(built_at, int | float) and not isinstance(built_at, bool),
           "a number (epoch seconds)")
    deliveries = manifest.get("deliveries", {})
    _check(where, "deliveries", deliveries, isinstance(deliveries, dict)
           and all(isinstance(d, dict) for d in deliveries.values()), "an object of objects")
    files: Any = manifest.get("files")
    _check(where, "files", files, isinstance(files, dict), "an object")
    required = {f"{n}.npy" for n in ROW_ARRAYS} | set(TABLES)
    if not required <= set(files) <= required | set(OPTIONAL):
        raise SnapshotError(f"{where}: lists files {sorted(files)}, expected {sorted(required)} and any of {list(OPTIONAL)}")
    for name, info in files.items():
        _check(where, f"files.{name}", info, isinstance(info, dict), "an object")
        _check(where, f"files.{name}.bytes", info.get("bytes"), _whole(info.get("bytes")), "a whole number")
        sha256 = info.get("sha256")
        _check(where, f"files.{name}.sha256", sha256, isinstance(sha256, str) and _SHA256.fullmatch(sha256) is not None,
               "64 lowercase hex digits")
        if name.endswith(".npy"):
            _check(where, f"files.{name}.rows", info.get("rows"), _whole(info.get("rows")), "a whole number")
    return manifest


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check(where: str, field: str, value: Any, ok: bool, wanted: str) -> None:
    if not ok:
        raise SnapshotError(f"{where}: field {field} must be {wanted}; got {repr(value)[:60]}")


def verify_file(path: Path, info: Mapping[str, Any]) -> None:
    """Check a snapshot file against its manifest entry (size, SHA-256)."""
    if not path.is_file() or path.stat().st_size != info["bytes"]:
        raise SnapshotError(f"{path}: missing or not {info['bytes']} bytes")
    if _sha256(path) != info["sha256"]:
        raise SnapshotError(f"{path}: checksum mismatch")


def _verify_files(folder: Path, manifest: Manifest) -> None:
    for name, info in manifest["files"].items():
        verify_file(folder / name, info)


def _open_rows(folder: Path, manifest: Manifest) -> dict[str, np.ndarray]:
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


def read_tables(folder: Path, check: bool = True) -> tuple[list[TaskRow], list[DistrictRow]]:
    """Return a snapshot folder's task and district tables (no arrays mapped), with `check` every row checked: a
    table whose checksums hold can still be malformed (a broken build, a hostile origin), and what loads it must
    not crash. Without, for a copy of a snapshot already checked when it went live."""
    try:
        tasks = orjson.loads((folder / "tasks.json").read_bytes())
        districts = orjson.loads((folder / "districts.json").read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SnapshotError(f"{folder}: unreadable tables: {exc}") from None
    for task in tasks if isinstance(tasks, list) else ():
        if isinstance(task, dict):  # a snapshot built before staggered openings: none
            task.setdefault("stagger_s", 0)
            task.setdefault("stagger_groups", 1)
    if not check:
        return tasks, districts
    _check_rows(f"{folder}/tasks.json", tasks, _TASK_FIELDS)
    for task in tasks:
        _check_rows(f"{folder}/tasks.json task {task['task_id']} prizes", task["prizes"], _PRIZE_FIELDS)
    _check_rows(f"{folder}/districts.json", districts, _DISTRICT_FIELDS)
    _check_values(f"{folder}/tasks.json", tasks)
    return tasks, districts


def _check_values(where: str, tasks: list[TaskRow]) -> None:
    """Refuse values the build never writes and the ledger cannot take: a task id below 1 or twice, a prize type
    twice in a task, a negative quota, a weight or rate that is negative or not finite, a rate above 10^9 a second."""
    seen: set[int] = set()
    for i, task in enumerate(tasks):
        if task["task_id"] < 1 or task["task_id"] in seen:
            raise SnapshotError(f"{where}: row {i}, field task_id: {task['task_id']} is below 1 or given twice")
        seen.add(task["task_id"])
        if not (0 <= task["stagger_s"] <= MAX_STAGGER_S and 1 <= task["stagger_groups"] <= MAX_STAGGER_GROUPS):
            raise SnapshotError(f"{where}: row {i}: stagger_s or stagger_groups out of range")
        types = [p["prize_type"] for p in task["prizes"]]
        for p in task["prizes"]:
            rate = p["rate_per_s"]
            if (p["quota"] < 0 or not (math.isfinite(p["weight"]) and p["weight"] >= 0) or types.count(p["prize_type"]) > 1
                    or not p["prize_type"].isprintable()
                    or (rate is not None and not (math.isfinite(rate) and 0 <= rate <= MAX_RATE_PER_S))):
                raise SnapshotError(f"{where}: task {task['task_id']}, prize {p['prize_type'][:40]!r}: quota below 0, "
                                    f"weight or rate_per_s out of range (rate at most {MAX_RATE_PER_S:g}/s), given "
                                    "twice, or a type with control characters")


_NONE = type(None)
MAX_RATE_PER_S = 1e9  # the most a prize may be issued a second: what the ledgers and live changes take
MAX_STAGGER_S, MAX_STAGGER_GROUPS = 3_600, 60  # an hour between groups' openings at most, and 60 groups
_TASK_FIELDS: dict[str, tuple[type, ...]] = {
    "task_id": (int,), "name": (str,), "district_code": (int,), "poi_set_id": (int,), "starts_at": (int,),
    "ends_at": (int,), "enabled": (bool,), "stagger_s": (int,), "stagger_groups": (int,), "prizes": (list,), "pois": (int,),
    "outside_district": (int,)}
_PRIZE_FIELDS: dict[str, tuple[type, ...]] = {
    "prize_type": (str,), "quota": (int,), "weight": (int, float), "rate_per_s": (int, float, _NONE)}
_DISTRICT_FIELDS: dict[str, tuple[type, ...]] = {"code": (int,), "name": (str,), "parent_code": (int, _NONE)}


def _check_rows(where: str, rows: Any, fields: Mapping[str, tuple[type, ...]]) -> None:
    """Refuse a table that is not a list of objects holding each field with its type (whole numbers in int64)."""
    if not isinstance(rows, list):
        raise SnapshotError(f"{where}: not a list of rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise SnapshotError(f"{where}: row {i} is not an object")
        for name, kinds in fields.items():
            value = row.get(name)
            wrong = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
            if wrong or (type(value) is int and not -(2**63) <= value < 2**63):
                kind = " or ".join("a whole number in int64" if k is int else k.__name__ for k in kinds)
                raise SnapshotError(f"{where}: row {i}, field {name}: must be {kind}; got {str(value)[:40]!r}")


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
    tasks, districts = read_tables(folder, check=verify)
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
