"""Builds on several threads with the packed sort: the same snapshot for any number of workers, any order of
the source's POIs and any memory budget; stable_order is np.lexsort's order; bad rows are told in the source's
order however the chunks were shared among the workers."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
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


def _key(rng: np.random.Generator, n: int) -> np.ndarray:
    """A key column of one of the kinds a table may sort by: int64 of any span, int32 or uint8 of their whole
    range, uint64 past int64."""
    kind = int(rng.integers(0, 4))
    if kind == 1:
        return rng.integers(-(2**31), 2**31, n).astype(np.int32)
    if kind == 2:
        return rng.integers(0, 256, n).astype(np.uint8)
    if kind == 3:
        return rng.integers(2**63 - 5, 2**64 - 1, n, dtype=np.uint64)
    span = int(rng.choice(SPANS))
    low = -span // 2 if rng.random() < 0.3 else 0
    return rng.integers(low, low + span, n, endpoint=True)


@pytest.mark.parametrize("seed", range(8))
def test_stable_order_is_lexsorts_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n in (0, 1, 2, 3, 50, 5_000):
        for _ in range(10):
            keys = [_key(rng, n) for _ in range(int(rng.integers(1, 4)))]
            expected = np.lexsort(tuple(reversed(keys))) if n else np.arange(0)
            assert np.array_equal(stable_order(keys), expected), [(k.dtype, k[:8]) for k in keys]


def test_stable_order_takes_over_from_lexsort_only_where_a_key_is_too_wide() -> None:
    rng = np.random.default_rng(7)
    n = 100_000
    cells, task = rng.integers(0, 2**40, n), rng.integers(0, 30_000, n)  # packs: 17 + 15 + a few bits
    poi_id = rng.integers(10**17, 10**18, n)  # 60 bits: lexsort's, with the groups found so far
    for keys in ([cells, task], [cells, task, poi_id], [poi_id, cells]):
        assert np.array_equal(stable_order(keys), np.lexsort(tuple(reversed(keys))))


def _rewrite_pois(source: Path, folder: Path, change: Callable[[list[str]], list[str]]) -> Path:
    """A copy of a data folder whose POI lines (header aside) are what `change` makes of them."""
    shutil.copytree(source, folder)
    header, *lines = (folder / "pois.csv").read_text(encoding="utf-8").splitlines()
    (folder / "pois.csv").write_text("\n".join([header, *change(lines)]) + "\n", encoding="utf-8")
    return folder


def _shuffle(lines: list[str], start: int = 0) -> list[str]:
    """The lines from `start` on in a random order: from there on, no longer in poi_id order."""
    tail = lines[start:]
    return lines[:start] + [tail[i] for i in np.random.default_rng(3).permutation(len(tail))]


def _wide_id(line: str) -> str:
    """An 18-digit poi_id, negative for the first half: wider than any packed key, in the same order."""
    poi_id, rest = line.split(",", 1)
    return f"{int(poi_id) * WIDEN - 5 * 10**16},{rest}"


WIDEN = 10**12


@pytest.fixture(scope="module")
def sources(synth_100k: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic 10^5 POIs as they are, shuffled, shuffled from halfway (runs sorted while the stream was in
    poi_id order, then not), and with 18-digit ids, some negative."""
    made = tmp_path_factory.mktemp("sources")
    return {"synth": synth_100k,
            "shuffled": _rewrite_pois(synth_100k, made / "shuffled", _shuffle),
            "half": _rewrite_pois(synth_100k, made / "half", lambda lines: _shuffle(lines, len(lines) // 2)),
            "wide": _rewrite_pois(synth_100k, made / "wide", lambda lines: _shuffle([_wide_id(x) for x in lines]))}


def _arrays(out: Path) -> dict[str, np.ndarray]:
    snap = open_current(out)
    return {name: np.asarray(getattr(snap, name)) for name in ROW_ARRAYS}


@pytest.fixture(scope="module")
def reference(synth_100k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic POIs in poi_id order, in memory: checked against np.lexsort and a sort by poi_id here, so the
    builds compared with it are compared with an order the build's own code did not make."""
    out = tmp_path_factory.mktemp("reference") / "snaps"
    build_into(synth_100k, out, "--workers", "2")
    arrays = _arrays(out)
    n = len(arrays["cells"])
    assert n > 100_000 and np.array_equal(np.lexsort((arrays["poi_ids"], arrays["task_index"], arrays["cells"])),
                                          np.arange(n))
    assert np.array_equal(arrays["poi_order"], np.argsort(arrays["poi_ids"], kind="stable"))
    return out


@pytest.mark.parametrize(("source", "options"), [
    ("synth", ("--workers", "1")),
    ("synth", ("--workers", "3", "--memory-mb", "1")),
    ("shuffled", ("--workers", "2")),
    ("shuffled", ("--workers", "2", "--memory-mb", "1")),
    ("shuffled", ("--workers", "1", "--memory-mb", "1")),
    ("half", ("--workers", "2", "--memory-mb", "1")),
    ("wide", ("--workers", "2", "--memory-mb", "1")),
    ("wide", ("--workers", "2")),
])
def test_the_snapshot_is_the_same_for_any_workers_memory_and_order_of_the_pois(
        sources: dict[str, Path], reference: Path, tmp_path: Path, source: str, options: tuple[str, ...]) -> None:
    out = tmp_path / "snaps"
    build_into(sources[source], out, *options)
    built, expected = _arrays(out), _arrays(reference)
    if source == "wide":  # the same order: the ids were mapped by an increasing function
        expected["poi_ids"] = expected["poi_ids"] * WIDEN - 5 * 10**16
    assert built.keys() == expected.keys()
    for name, values in expected.items():
        assert np.array_equal(built[name], values), name
    assert (out / "1" / "tasks.json").read_bytes() == (reference / "1" / "tasks.json").read_bytes()
    made, wanted = open_current(out).manifest, open_current(reference).manifest
    assert made["counts"] == wanted["counts"] and made["screening"] == wanted["screening"]
    assert (made["build"]["runs_spilled"] > 4) == ("--memory-mb" in options)
    assert made["build"]["workers"] == int(options[1])


def test_an_h3_build_is_the_same_spilled_on_three_workers_as_in_memory_on_one(sources: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    """H3 cell ids are ~2^59 (their range over the synthetic districts ~2^45): packed beside the rows' groups and
    places only once shifted by the smallest. (The 18-digit ids above are the key lexsort takes over.)"""
    one, three = tmp_path / "one", tmp_path / "three"
    build_into(sources["half"], one, "--grid", "h3", "--h3-res", "9", "--workers", "1")
    build_into(sources["half"], three, "--grid", "h3", "--h3-res", "9", "--workers", "3", "--memory-mb", "1")
    arrays = _arrays(one)
    assert np.array_equal(np.lexsort((arrays["poi_ids"], arrays["task_index"], arrays["cells"])),
                          np.arange(len(arrays["cells"])))
    assert int(arrays["cells"].min()) > 2**58
    spilled = _arrays(three)
    for name, values in arrays.items():
        assert np.array_equal(spilled[name], values), name
    assert open_current(three).manifest["build"]["runs_spilled"] > 4


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
