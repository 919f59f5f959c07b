"""The compiled answer encoder writes the same bytes as orjson on answer(), or hands over to it."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import orjson
import pytest

from geo_service import nearby
from geo_service.nearby import Lookup, answer, encode_answer, encoder
from geo_service.nearby.encoder import COARSE_STRIDE, Layout, _first_at_least, _put_micro, address, encode_size
from geo_service.snapshot.folder import open_current
from geo_service.snapshot.format import PrizeRow, Snapshot, TaskRow
from geo_service.snapshot.grid import SquareGrid
from tests.conftest import SAMPLE, build_into
from tests.support.builders import claim_poi, set_csv_field, write_claims_data

NOW_S = 1_790_000_000


def _micro(micro: int) -> bytes:
    out = np.zeros(64, np.uint8)
    return out[: _put_micro(out, 0, micro)].tobytes()


def test_micro_degrees_are_written_as_orjson_writes_their_degrees() -> None:
    rng = random.Random(3)
    values = [0, 1, -1, 99, -99, 100, 500_000, -500_000, 180_000_000, -180_000_000, 90_000_000, 99_000_001, 22_500_000]
    values += [rng.randint(-180_000_000, 180_000_000) for _ in range(40_000)]
    for micro in values:
        written = _micro(micro)
        assert orjson.loads(written) == micro / 1e6, micro  # reads back as the double nearest micro / 10^6
        if abs(micro) >= 100 or micro == 0:  # below 1e-4 degree orjson writes an exponent, this a plain decimal
            assert written == orjson.dumps(micro / 1e6), micro


@pytest.mark.parametrize("size", [0, 1, COARSE_STRIDE - 1, COARSE_STRIDE, COARSE_STRIDE + 1, 5 * COARSE_STRIDE + 7])
def test_the_two_level_search_finds_what_a_plain_binary_search_finds(size: int) -> None:
    rng = np.random.default_rng(size)
    # Few distinct values, so runs of equal ids cross the coarse index's strides.
    cells = np.sort(rng.integers(0, max(size // 3, 1), size)).astype(np.int64)
    coarse = np.ascontiguousarray(cells[::COARSE_STRIDE])
    edges = [cells[::COARSE_STRIDE], cells[COARSE_STRIDE - 1 :: COARSE_STRIDE]]
    probes = np.concatenate([np.arange(-2, max(size // 3, 1) + 2), *edges])
    for cell in probes.tolist():
        assert _first_at_least(cells, coarse, cell) == np.searchsorted(cells, cell), cell


def test_only_contiguous_arrays_are_passed_by_address() -> None:
    array = np.arange(10, dtype=np.int64)
    assert address(array) == array.ctypes.data
    with pytest.raises(ValueError, match="contiguous"):
        address(array[::2])


@pytest.fixture(scope="module")
def synth_lookup(synth_100k: Path, tmp_path_factory: pytest.TempPathFactory) -> Lookup:
    out = tmp_path_factory.mktemp("synth-snaps")
    build_into(synth_100k, out)
    return Lookup(open_current(out))


@pytest.fixture(scope="module")
def h3_lookup(tmp_path_factory: pytest.TempPathFactory) -> Lookup:
    out = tmp_path_factory.mktemp("h3-snaps")
    build_into(SAMPLE, out, "--grid", "h3", "--h3-res", "9")
    return Lookup(open_current(out))


@pytest.mark.parametrize("max_pois", [300, 4])
def test_answers_are_byte_for_byte_those_of_orjson(synth_lookup: Lookup, h3_lookup: Lookup, sample_snapshots: Path,
                                                   max_pois: int) -> None:
    rng = np.random.default_rng(5)
    extras: list[dict[str, object]] = [{"next_poll_ms": 5000, "status_age_s": 1.25}, {}]
    for lookup in (synth_lookup, Lookup(open_current(sample_snapshots)), h3_lookup):
        status = lookup.table.status(NOW_S)
        snap = lookup.snapshot
        seen_tasks = truncated = 0
        for n, i in enumerate(rng.choice(len(snap.cells), 1000)):
            extra = extras[n % 2]
            lat, lng = (float(x) + rng.normal(0, 0.001) for x in snap.degrees(i))
            want = orjson.dumps({**answer(lookup, status, lat, lng, max_pois), **extra})
            body, tag = encode_answer(lookup, status, lat, lng, max_pois, extra)
            assert body == want
            # Asked by its cell, the answer and its tag are those of every point of the cell.
            cell = lookup.grid.cell_window(lookup.grid.cell_of(lat, lng))
            assert encode_answer(lookup, status, 0.0, 0.0, max_pois, extra, cell) == (body, tag)
            parsed = orjson.loads(want)
            seen_tasks += len(parsed["tasks"])
            truncated += parsed["truncated"]
        assert seen_tasks > 1000 and (truncated > 100) == (max_pois == 4)


def test_coordinates_with_more_decimals_are_rounded_at_build_and_counted(tmp_path: Path) -> None:
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 5}, pois=3)
    set_csv_field(data / "pois.csv", 3, "lat", "22.53290062345")  # task 1's second POI
    build_into(data, snaps)
    lookup = Lookup(open_current(snaps))
    assert lookup.snapshot.manifest["counts"]["coordinates_rounded"] == 1
    status = lookup.table.status(NOW_S)
    _, lat, lng = claim_poi(1, 0)
    body, _ = encode_answer(lookup, status, lat, lng, 300, {"next_poll_ms": 1})
    assert body == orjson.dumps({**answer(lookup, status, lat, lng, 300), "next_poll_ms": 1})
    assert 22.532901 in {p["lat"] for p in orjson.loads(body)["pois"]}  # to the nearest micro-degree


def test_tables_are_packed_by_name_with_each_arrays_declared_dtype() -> None:
    layout = Layout((("n", int), ("x", float), ("a", np.int32)))
    a = np.arange(3, dtype=np.int32)
    table = layout.pack(n=7, x=0.5, a=a)
    assert (layout.size, layout.slot("a")) == (4, 2)
    assert table.tolist() == [7, np.array([0.5]).view(np.int64)[0], a.ctypes.data, 3]
    with pytest.raises(TypeError, match="exactly"):
        layout.pack(n=7, a=a)
    with pytest.raises(TypeError, match="int32"):
        layout.pack(n=7, x=0.5, a=a.astype(np.int64))


def _widest_lookup(pois: int) -> tuple[Lookup, float, float]:
    """A snapshot in memory whose every number is written at its longest: ids from -2^63 (20 bytes), int32
    micro-degrees at -(2^31 - 1) (12 bytes), one task of a long name per POI, all in one cell."""
    grid = SquareGrid()
    lat, lng = 22.5329, 113.9305
    ids = np.arange(pois, dtype=np.int64) + np.iinfo(np.int64).min
    widest = np.full(pois, -(2**31 - 1), np.int32)
    tasks = [TaskRow(task_id=int(t), name="红" * 200, district_code=440305, poi_set_id=1, starts_at=0, ends_at=2**33,
                     enabled=True, stagger_s=0, stagger_groups=1,
                     prizes=[PrizeRow(prize_type="cash", quota=1, weight=1.0, rate_per_s=None)], pois=1,
                     outside_district=0) for t in ids]
    snapshot = Snapshot(Path("/nonexistent"), {"seq": 2**63 - 1}, grid, cells=np.full(pois, grid.cell_of(lat, lng), np.int64),
                        task_index=np.arange(pois, dtype=np.int32), poi_ids=ids, lats=widest, lngs=widest,
                        poi_order=np.arange(pois, dtype=np.int32), tasks=tasks, districts=[])
    return Lookup(snapshot), lat, lng


def test_the_widest_answer_fits_the_budget_derived_from_the_byte_pieces() -> None:
    lookup, lat, lng = _widest_lookup(40)
    status = lookup.table.status(NOW_S)
    body, _ = encode_answer(lookup, status, lat, lng, 40, {})
    want = orjson.dumps(answer(lookup, status, lat, lng, 40))
    assert body == want  # written as orjson writes it
    # The budget for this answer's own cells less orjson's length is exactly what the widest values leave
    # unused: the digits short of 20 in seq, centre and cell ids, and the commas after the last cell, POI
    # and task (ids and coordinates are at their widest, every view at the longest).
    parsed = orjson.loads(want)
    short = sum(encoder._INT_BYTES - len(str(n)) for n in [parsed["seq"], parsed["center_cell"], *parsed["cells"]])
    assert not parsed["truncated"] and len(parsed["tasks"]) == 40
    unused = short + 3 + max(encoder._CUT.size, encoder._WHOLE.size) - encoder._WHOLE.size
    assert encode_size(len(parsed["cells"]), 40, status.longest_view) - len(want) == unused
    # A POI at its longest, as orjson writes it, and its comma: what the budget gives each POI.
    widest = orjson.loads(body)["pois"][0]
    assert len(orjson.dumps(widest)) + 1 == encoder._POI_BYTES


def test_an_answer_larger_than_its_buffer_is_refused_not_written_past(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup, lat, lng = _widest_lookup(3)
    status = lookup.table.status(NOW_S)
    fits = len(encode_answer(lookup, status, lat, lng, 3, {})[0])
    fresh, _, _ = _widest_lookup(3)
    monkeypatch.setattr(nearby, "encode_size", lambda *_: fits - 1)
    with pytest.raises(OverflowError, match="buffer"):
        encode_answer(fresh, status, lat, lng, 3, {})
