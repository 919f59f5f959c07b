"""Sorting more rows than memory holds: sorted runs spilled to a temp folder, read back by ranges of key values.

A table is a set of equal-length columns. Each run is sorted by its key column first. Reading it back,
the key's value space is cut into consecutive ranges of about `max_rows` rows each (from a sample of
every run's keys); a range is the concatenation of one contiguous slice per run (a binary search on the
sorted key), so every row is read once, and sorting each range in turn gives the whole table in order.
Equal keys always fall in one range.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geo_service.snapshot.folder import TMP_PREFIX

Columns = dict[str, np.ndarray]
SPILL_PREFIX = f"{TMP_PREFIX}build-"
LOCK = ".lock"
_SAMPLES = 20_000  # keys sampled across all runs to place the range bounds (a few pages of each run read)


@dataclass
class SpillFolder:
    """A build's temp folder and what it has mapped from there."""

    path: Path
    mapped: list[dict[str, Any] | list[Columns]] = field(default_factory=list)

    def runs(self, name: str, keys: tuple[str, ...], tail_in_order: bool = False) -> Runs:
        """A new table of sorted runs whose files live here."""
        runs = Runs(self.path, name, keys, tail_in_order)
        self.mapped.append(runs.runs)
        return runs

    def keep(self, files: dict[str, Any]) -> dict[str, Any]:
        """Register arrays mapped from files here, or open files, to be let go with the folder."""
        self.mapped.append(files)
        return files

    def release(self) -> None:
        """Close and drop every mapping and open file of the folder's, so their disk space is free once they
        are removed, even while a traceback still holds the frames that used them."""
        for held in self.mapped:
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


def _read(values: np.ndarray, start: int, stop: int) -> np.ndarray:
    """values[start:stop] as a private array. A spilled run is read from its file, not through its mapping:
    pages touched through a mapping would stay in the process's resident set (and its peak RSS) until the
    run is dropped, however long ago they were used."""
    if not isinstance(values, np.memmap) or values.filename is None:
        return values[start:stop]
    return np.fromfile(values.filename, values.dtype, stop - start, offset=values.offset + start * values.itemsize)


def sort_columns(columns: Columns, keys: tuple[str, ...], tail_in_order: bool = False) -> Columns:
    """Return the columns sorted by `keys`, most significant first. With `tail_in_order` the rows already
    come in order of the last key, so a stable sort by the others gives the same order, cheaper."""
    by = keys[:-1] if tail_in_order else keys
    if len(by) == 1:
        perm = np.argsort(columns[by[0]], kind="stable")
    else:
        perm = np.lexsort(tuple(columns[k] for k in reversed(by)))
    return {name: column[perm] for name, column in columns.items()}


@dataclass
class Runs:
    """The sorted runs of one table, on disk (memory-mapped) or, for a table that fits, in memory."""

    folder: Path
    name: str
    keys: tuple[str, ...]  # the sort order; keys[0] is what ranges are cut by
    tail_in_order: bool = False  # rows are added in order of the last key (a source row, a position)
    runs: list[Columns] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(run[self.keys[0]]) for run in self.runs)

    @property
    def spilled(self) -> int:
        return sum(isinstance(run[self.keys[0]], np.memmap) for run in self.runs)

    def add(self, columns: Columns, spill: bool) -> None:
        """Sort `columns` into a new run, written to disk when `spill` (and mapped back read-only)."""
        run = sort_columns(columns, self.keys, self.tail_in_order)
        if spill:
            number = len(self.runs)
            for column, values in run.items():
                path = self.folder / f"{self.name}-{number:05d}-{column}.npy"
                np.save(path, values, allow_pickle=False)
                run[column] = np.load(path, mmap_mode="r")
        self.runs.append(run)

    def ranges(self, max_rows: int) -> Iterator[Columns]:
        """Yield every row once, sorted, in consecutive ranges of key values of about `max_rows` rows (a
        range holds every row of its key values, so one key held by more rows makes a larger range)."""
        if len(self.runs) == 1 and not self.spilled:  # one run in memory is sorted already: a build that fits sorts once
            yield dict(self.runs[0])
            return
        if not self.runs:
            return
        key = self.keys[0]
        stride = max(1, self.rows // _SAMPLES)
        sample = np.sort(np.concatenate([run[key][::stride] for run in self.runs]))
        step = max(1, max_rows // stride)
        bounds = np.unique(sample[step::step]).tolist()
        starts = [0] * len(self.runs)
        # The runs are looked up at each step, never held here: SpillFolder.release can let them go.
        for bound in [*bounds, None]:
            ends = [len(run[key]) if bound is None else int(np.searchsorted(run[key], bound, "left")) for run in self.runs]
            # Runs are concatenated in the order they were added, which keeps the last key in order.
            yield sort_columns({column: np.concatenate([_read(run[column], a, b) for run, a, b in zip(self.runs, starts, ends)])
                                for column in self.runs[0]}, self.keys, self.tail_in_order)
            starts = ends
