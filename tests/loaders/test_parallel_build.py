"""Builds on several threads with the packed sort: the same snapshot for any number of workers, any order of
the source's POIs and any memory budget; stable_order is np.lexsort's order; bad rows are told in the source's
order however the chunks were shared among the workers."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from geo_service.snapshot.folder import open_current
from geo_service.snapshot.format import ROW_ARRAYS
from loaders.cli import main
from loaders.sources import files
from loaders.spill import stable_order
from tests.conftest import build_into

SPANS = [1, 2, 7, 1_000, 2**31, 2**40, 2**62]  # many ties, few, and ranges too wide to pack beside the rest


@pytest.mark.parametrize("seed", range(8))
def test_stable_order_is_lexsorts_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (0, 1, 2, 3, 50, 5_000):
        for _ in range(10):
            keys = []
            for _ in range(int(rng.integers(1, 4))):
                span = int(rng.choice(SPANS))
                low = -span // 2 if rng.random() < 0.3 else 0
                key = rng.integers(low, low + span, n, endpoint=True)
                keys.append(key.astype(np.int32) if span < 2**31 and rng.random() < 0.5 else key)
            expected = np.lexsort(tuple(reversed(keys))) if n else np.arange(0)
            assert np.array_equal(stable_order(keys), expected), [k[:8] for k in keys]


def test_stable_order_takes_over_from_lexsort_only_where_a_key_is_too_wide() -> None:
    rng = np.random.default_rng(7)
    n = 100_000
    cells, task = rng.integers(0, 2**40, n), rng.integers(0, 30_000, n)  # packs: 17 + 15 + a few bits
    poi_id = rng.integers(10**17, 10**18, n)  # 60 bits: lexsort's, with the groups found so far
    for keys in ([cells, task], [cells, task, poi_id], [poi_id, cells]):
        assert np.array_equal(stable_order(keys), np.lexsort(tuple(reversed(keys))))


@pytest.fixture(scope="module")
def shuffled(synth_100k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic 10^5 POIs with their lines in a random order: no longer in poi_id order."""
    folder = tmp_path_factory.mktemp("shuffled") / "data"
    shutil.copytree(synth_100k, folder)
    header, *lines = (folder / "pois.csv").read_text(encoding="utf-8").splitlines()
    order = np.random.default_rng(3).permutation(len(lines))
    (folder / "pois.csv").write_text("\n".join([header, *(lines[i] for i in order)]) + "\n", encoding="utf-8")
    return folder


def _arrays(out: Path) -> dict[str, bytes]:
    folder = out / "1"
    return {name: (folder / name).read_bytes() for name in [*(f"{n}.npy" for n in ROW_ARRAYS), "tasks.json"]}


@pytest.mark.parametrize(("source", "options"), [
    ("synth", ("--workers", "1")),
    ("synth", ("--workers", "3", "--memory-mb", "1")),
    ("shuffled", ("--workers", "2")),
    ("shuffled", ("--workers", "2", "--memory-mb", "1")),
    ("shuffled", ("--workers", "1", "--memory-mb", "1")),
])
def test_the_snapshot_is_the_same_for_any_workers_memory_and_order_of_the_pois(
        synth_100k: Path, shuffled: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, source: str,
        options: tuple[str, ...]) -> None:
    reference = tmp_path_factory.getbasetemp() / "parallel-reference"
    if not reference.exists():
        build_into(synth_100k, reference, "--workers", "2")  # in poi_id order, in memory: one run, no lexsort
    out = tmp_path / "snaps"
    build_into(synth_100k if source == "synth" else shuffled, out, *options)
    assert _arrays(out) == _arrays(reference)
    built, expected = open_current(out).manifest, open_current(reference).manifest
    assert built["counts"] == expected["counts"] and built["screening"] == expected["screening"]
    assert (built["build"]["runs_spilled"] > 4) == ("--memory-mb" in options)
    assert built["build"]["workers"] == int(options[1])


def test_bad_rows_are_told_in_the_sources_order_when_the_workers_share_many_chunks(
        synth_100k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "data"
    shutil.copytree(synth_100k, folder)
    header, *lines = (folder / "pois.csv").read_text(encoding="utf-8").splitlines()
    bad_lines = sorted(int(i) for i in np.random.default_rng(5).choice(len(lines), 70, replace=False))
    for k, i in enumerate(bad_lines):
        lines[i] = f"x{k}," + lines[i].split(",", 1)[1]
    (folder / "pois.csv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    monkeypatch.setattr(files, "_BLOCK_BYTES", 64 << 10)  # ~2,000 POIs a chunk: about 50 chunks
    told = {}
    for workers in ("1", "2"):
        assert main(["build", "--source", str(folder), "--out", str(tmp_path / "snaps"), "--quiet", "--workers",
                     workers]) == 2
        told[workers] = capsys.readouterr().err
    assert told["2"] == told["1"]
    rows = [int(row) for row in re.findall(r"pois\.csv:(\d+): poi_id: not an integer", told["2"])]
    assert rows == [i + 2 for i in bad_lines[:50]]  # the first fifty, in order (line 1 is the header)
    assert "70 bad row(s)" in told["2"] and "... and 20 more" in told["2"]
    assert not (tmp_path / "snaps" / "CURRENT").exists()
