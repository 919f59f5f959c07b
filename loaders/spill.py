"""Sorting more rows than memory holds: sorted runs spilled to a temp folder, read back by ranges of key values.

A table is a set of equal-length columns. Each run is sorted by its key column first. Reading it back,
the key's value space is cut into consecutive ranges of about `max_rows` rows each (from a sample of
every run's keys); a range is the concatenation of one contiguous slice per run (a binary search on the
sorted key), so every row is read once, and sorting each range in turn gives the whole table in order.
Equal keys always fall in one range.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geo_service.snapshot import TMP_PREFIX

Columns = dict[str, np.ndarray]
SPILL_PREFIX = f"{TMP_PREFIX}build-"
LOCK = ".lock"
_SAMPLES = 200_000  # keys sampled across all runs to place the range bounds


@dataclass
class SpillFolder:
    """A build's temp folder and what it has mapped from there."""

    path: Path
    mapped: list[Columns | list[Columns]] = field(default_factory=list)

    def runs(self, name: str, keys: tuple[str, ...]) -> Runs:
        """A new table of sorted runs whose files live here."""
        runs = Runs(self.path, name, keys)
        self.mapped.append(runs.runs)
        return runs

    def keep(self, arrays: Columns) -> Columns:
        """Register arrays mapped from files here, to be let go with the folder."""
        self.mapped.append(arrays)
        return arrays

    def release(self) -> None:
        """Drop every mapping of the folder's files, so their disk space is free once they are removed, even
        while a traceback still holds the frames that used them."""
        for held in self.mapped:
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


def sort_columns(columns: Columns, keys: tuple[str, ...]) -> Columns:
    """Return the columns sorted by `keys`, most significant first (stable)."""
    perm = np.lexsort(tuple(columns[k] for k in reversed(keys)))
    return {name: column[perm] for name, column in columns.items()}


@dataclass
class Runs:
    """The sorted runs of one table, on disk (memory-mapped) or, for a table that fits, in memory."""

    folder: Path
    name: str
    keys: tuple[str, ...]  # the sort order; keys[0] is what ranges are cut by
    runs: list[Columns] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(run[self.keys[0]]) for run in self.runs)

    @property
    def spilled(self) -> int:
        return sum(isinstance(run[self.keys[0]], np.memmap) for run in self.runs)

    def add(self, columns: Columns, spill: bool) -> None:
        """Sort `columns` into a new run, written to disk when `spill` (and mapped back read-only)."""
        run = sort_columns(columns, self.keys)
        if spill:
            number = len(self.runs)
            for column, values in run.items():
                path = self.folder / f"{self.name}-{number:05d}-{column}.npy"
                np.save(path, values, allow_pickle=False)
                run[column] = np.load(path, mmap_mode="r")
        self.runs.append(run)

    def ranges(self, max_rows: int) -> Iterator[Columns]:
        """Yield every row once, in consecutive ranges of key values of about `max_rows` rows (a range
        holds every row of its key values, so one key held by more rows makes a larger range), each
        range's rows concatenated from the runs and not yet sorted."""
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
            yield {column: np.concatenate([run[column][a:b] for run, a, b in zip(self.runs, starts, ends)])
                   for column in self.runs[0]}
            starts = ends
