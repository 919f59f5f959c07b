"""Sorting more rows than memory holds: sorted runs spilled to a temp folder, read back by ranges of key values.

A table is a set of equal-length columns. Each run is sorted by its key column first. Reading it back,
the key's value space is cut into consecutive ranges of about `max_rows` rows each (from every run's
index, its key at every INDEX_STRIDE-th row); a range is the concatenation of one contiguous slice per run
(a binary search on the sorted key), so every row is read once, and sorting each range in turn gives the whole table in order.
Equal keys always fall in one range.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from geo_service.snapshot.folder import TMP_PREFIX

Columns = dict[str, np.ndarray]
SPILL_PREFIX = f"{TMP_PREFIX}build-"
LOCK = ".lock"
T = TypeVar("T")
INDEX_STRIDE = 64  # a run keeps every 64th key in memory (1/8 byte a row) to find where a range starts in it


@dataclass
class SpillFolder:
    """A build's temp folder, and the runs and open files it holds from there."""

    path: Path
    held: list[dict[str, Any] | list[Any]] = field(default_factory=list)

    def runs(self, name: str, keys: tuple[str, ...], tail_in_order: bool = False) -> Runs:
        """A new table of sorted runs whose files live here."""
        runs = Runs(self.path, name, keys, tail_in_order)
        self.held.append(runs.runs)
        return runs

    def keep(self, files: dict[str, Any]) -> dict[str, Any]:
        """Register files open here, to be let go with the folder."""
        self.held.append(files)
        return files

    def release(self) -> None:
        """Close and drop every open file and run of the folder's, so their disk space and memory are free once
        they are removed, even while a traceback still holds the frames that used them."""
        for held in self.held:
            for value in held.values() if isinstance(held, dict) else ():
                if isinstance(value, NpyAppender):
                    value.abandon()
            held.clear()


@contextmanager
def spill_folder(root: Path) -> Iterator[SpillFolder]:
    """A private temp folder in the snapshots folder (the same filesystem: outputs move into the snapshot by
    rename), flocked while the build runs so that another writer's clean-up of dead builds' folders
    (snapshot.remove_stale_tmp) leaves it alone; removed when the build ends, however it ends but SIGKILL."""
    root.mkdir(parents=True, exist_ok=True)
    folder = SpillFolder(Path(tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=root)))
    try:
        with (folder.path / LOCK).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield folder
    finally:
        folder.release()
        shutil.rmtree(folder.path, ignore_errors=True)


class NpyAppender:
    """An .npy file of a known length written front to back: its header, then the values in order, so a
    sorted table goes to disk as it is produced, with plain writes (a full disk is an OSError)."""

    def __init__(self, path: Path, dtype: np.dtype[Any], rows: int) -> None:
        self.path, self.dtype, self.rows, self.written = path, dtype, rows, 0
        self._file = path.open("wb")
        np.lib.format.write_array_header_1_0(self._file, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                          "fortran_order": False, "shape": (rows,)})

    def append(self, values: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.written += len(values)

    def abandon(self) -> None:
        """Close the file of a build that failed (what a full disk left in its buffer is dropped)."""
        with contextlib.suppress(OSError):
            self._file.close()

    def close(self) -> Path:
        """Close the file; return its path once it holds every row it promised."""
        self._file.close()
        if self.written != self.rows:
            raise ValueError(f"{self.path}: {self.written} rows written of {self.rows}")
        return self.path


def ahead(items: Iterator[T], pool: Executor) -> Iterator[T]:
    """Yield what `items` yields, each next one made in `pool` while the caller works on this one."""
    coming = pool.submit(next, items, None)
    try:
        while (item := coming.result()) is not None:
            coming = pool.submit(next, items, None)
            yield item
    finally:  # a caller that stops early waits for the one in flight: nothing runs on after the build
        futures.wait([coming])


@dataclass(frozen=True, slots=True)
class OnDisk:
    """A spilled run's column: a raw file read by ranges, never mapped. Pages touched through a mapping, and the
    cached neighbours the kernel maps around each fault, would stay in the process's resident set (and its
    peak RSS) until the run is dropped: a strided sample through a mapping brings in the whole column."""

    path: Path
    dtype: np.dtype[Any]
    length: int

    def __len__(self) -> int:
        return self.length

    @classmethod
    def write(cls, path: Path, values: np.ndarray) -> OnDisk:
        """Write a column; a disk that refuses any of it is an OSError (numpy's tofile ignores a failed close)."""
        with path.open("wb") as f:
            f.write(np.ascontiguousarray(values).data)
        return cls(path, values.dtype, len(values))

    def read(self, start: int, stop: int) -> np.ndarray:
        values = np.fromfile(self.path, self.dtype, stop - start, offset=start * self.dtype.itemsize)
        if len(values) != stop - start:
            raise OSError(errno.EIO, f"{self.path}: {len(values)} rows read of {stop - start}")
        return values


def _read(values: np.ndarray | OnDisk, start: int, stop: int) -> np.ndarray:
    """values[start:stop] as an array of its own."""
    return values.read(start, stop) if isinstance(values, OnDisk) else values[start:stop]


def stable_order(keys: list[np.ndarray]) -> np.ndarray:
    """Return np.lexsort's permutation for integer `keys` given most significant first (ties keep their order).

    numpy sorts plain int64 values several times faster than it argsorts them, and far faster than lexsort's
    stable passes, so each key is packed into one int64 with what orders the rows so far: the first with the
    row's position, each next one between its row's group of equal keys so far and its place in that group.
    A key whose range does not fit beside them (an 18-digit poi_id) is left to lexsort with the groups found so
    far, which gives the same order.
    """
    n = len(keys[0])
    if n < 2:
        return np.arange(n)
    perm: np.ndarray | None = None  # the rows in order of the keys so far (None: their own order)
    starts = np.zeros(1, np.int64)  # where each group of rows equal in the keys so far starts, in perm's order
    groups: np.ndarray | None = None  # each row's group, in perm's order (None: all in one)
    for i, key in enumerate(keys):
        values = key if perm is None else key[perm]
        low = int(values.min())
        key_bits = (int(values.max()) - low).bit_length()
        within_bits = int(np.diff(starts, append=n).max() - 1).bit_length()
        group_bits = (len(starts) - 1).bit_length()
        if group_bits + key_bits + within_bits > 63 or values.dtype == np.uint64:
            rest = [values, *(k if perm is None else k[perm] for k in keys[i + 1 :])]
            tail = np.lexsort((*reversed(rest), *(() if groups is None else (groups,))))
            return tail if perm is None else perm[tail]
        packed = values.astype(np.int64)  # a copy, in the widest type: a narrow key's range may not fit its own
        del values
        packed -= low
        packed <<= within_bits
        place = np.arange(n, dtype=np.int64)  # a row's place in its group
        if groups is not None:
            place -= starts[groups]
            groups <<= key_bits + within_bits
            packed |= groups
        packed |= place
        del place, groups
        packed.sort()
        at = packed & ((1 << within_bits) - 1)
        if i:
            at += starts[packed >> (key_bits + within_bits)]
        perm = at if perm is None else perm[at]
        del at
        if i == len(keys) - 1:
            break
        packed >>= within_bits  # (group, key): equal values make the next groups
        change = np.empty(n, np.bool_)
        change[0] = True
        np.not_equal(packed[1:], packed[:-1], out=change[1:])
        del packed
        starts = np.flatnonzero(change)
        groups = np.cumsum(change, dtype=np.int64)
        groups -= 1
    assert perm is not None
    return perm


def sort_columns(columns: Columns, keys: tuple[str, ...], tail_in_order: bool = False) -> Columns:
    """Return the columns sorted by `keys`, most significant first. With `tail_in_order` the rows already
    come in order of the last key, so a stable sort by the others gives the same order, cheaper."""
    perm = stable_order([columns[k] for k in (keys[:-1] if tail_in_order else keys)])
    return {name: column[perm] for name, column in columns.items()}


@dataclass
class Runs:
    """The sorted runs of one table, on disk or, for a table that fits, in memory; each with its key column at
    every INDEX_STRIDE-th row, in memory, to cut ranges by."""

    folder: Path
    name: str
    keys: tuple[str, ...]  # the sort order; keys[0] is what ranges are cut by
    tail_in_order: bool = False  # rows are added in order of the last key (a source row, a position)
    runs: list[dict[str, np.ndarray | OnDisk]] = field(default_factory=list)
    index: list[np.ndarray] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(run[self.keys[0]]) for run in self.runs)

    @property
    def spilled(self) -> int:
        return sum(isinstance(run[self.keys[0]], OnDisk) for run in self.runs)

    def add(self, columns: Columns, spill: bool) -> None:
        """Sort `columns` into a new run, written to disk when `spill`."""
        self._keep([self._run(columns, len(self.runs), spill)])

    def add_many(self, parts: list[Columns], spill: bool, pool: Executor) -> None:
        """Add each part as a run, sorted (and written) side by side in `pool`; the runs keep the parts' order."""
        first = len(self.runs)
        self._keep(list(pool.map(lambda numbered: self._run(numbered[1], first + numbered[0], spill), enumerate(parts))))

    def _keep(self, made: list[tuple[dict[str, np.ndarray | OnDisk], np.ndarray]]) -> None:
        for run, index in made:
            self.runs.append(run)
            self.index.append(index)

    def _run(self, columns: Columns, number: int, spill: bool) -> tuple[dict[str, np.ndarray | OnDisk], np.ndarray]:
        ordered = sort_columns(columns, self.keys, self.tail_in_order)
        index = ordered[self.keys[0]][::INDEX_STRIDE].copy()
        if not spill:
            return dict(ordered), index
        run: dict[str, np.ndarray | OnDisk] = {}
        for column, values in ordered.items():
            run[column] = OnDisk.write(self.folder / f"{self.name}-{number:05d}-{column}", values)
        return run, index

    def _position(self, number: int, bound: int) -> int:
        """Return the first row of a run whose key is at least `bound`: between two keys of its index, one
        block of the key column read."""
        column, index = self.runs[number][self.keys[0]], self.index[number]
        at = int(np.searchsorted(index, bound, "left"))  # index[at - 1] < bound <= index[at]
        lo, hi = max(at - 1, 0) * INDEX_STRIDE, min(at * INDEX_STRIDE, len(column))
        return lo + int(np.searchsorted(_read(column, lo, hi), bound, "left"))

    def ranges(self, max_rows: int) -> Iterator[Columns]:
        """Yield every row once, sorted, in consecutive ranges of key values of about `max_rows` rows (a
        range holds every row of its key values, so one key held by more rows makes a larger range)."""
        if len(self.runs) == 1 and not self.spilled:  # one run in memory is sorted already: a build that fits sorts once
            yield {name: _read(values, 0, len(values)) for name, values in self.runs[0].items()}
            return
        if not self.runs:
            return
        sample = np.sort(np.concatenate(self.index))  # each key stands for INDEX_STRIDE rows
        step = max(1, max_rows // INDEX_STRIDE)
        bounds = np.unique(sample[step::step]).tolist()
        starts = [0] * len(self.runs)
        # The runs are looked up at each step, never held here: SpillFolder.release can let them go.
        for bound in [*bounds, None]:
            ends = [len(run[self.keys[0]]) if bound is None else self._position(number, bound)
                    for number, run in enumerate(self.runs)]
            # Runs are concatenated in the order they were added, which keeps the last key in order.
            yield sort_columns({column: np.concatenate([_read(run[column], a, b) for run, a, b in zip(self.runs, starts, ends)])
                                for column in self.runs[0]}, self.keys, self.tail_in_order)
            starts = ends
