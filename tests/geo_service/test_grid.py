"""The grid against the brute-force great-circle oracle, for both grid kinds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geo_service.grid import Grid, GridError, H3Grid, SquareGrid, grid_from_params
from tests.support.oracle import haversine_m, scatter_around

LATITUDES = [0.0, 22.0, 40.0, 53.0, 70.0]
GRIDS = [SquareGrid(cell_m=100.0, radius=2), SquareGrid(cell_m=250.0, radius=3), H3Grid(res=10, radius=2)]


@pytest.fixture(params=GRIDS, ids=lambda g: "-".join(f"{v}" for v in g.params().values()))
def grid(request: pytest.FixtureRequest) -> Grid:
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize("lat", LATITUDES)
def test_every_point_within_reach_lies_in_the_window(grid: Grid, lat: float) -> None:
    rng = np.random.default_rng(int(lat * 1000) + 7)
    near_total = 0
    for lng in rng.uniform(-180.0, 180.0, 40):
        qlat = lat + rng.uniform(-0.5, 0.5)
        window = set(grid.window_cells(qlat, lng))
        lats, lngs = scatter_around(qlat, lng, grid.reach_m, 2000, rng)
        near = haversine_m(qlat, lng, lats, lngs) <= grid.reach_m
        near_total += int(near.sum())
        missed = [(a, b) for a, b in zip(lats[near], lngs[near]) if grid.cell_of(a, b) not in window]
        assert not missed, f"window around ({qlat}, {lng}) misses {missed[:3]}"
    assert near_total > 10_000  # the scatter really probed the reach


@pytest.mark.parametrize("lat", LATITUDES)
def test_square_window_is_25_distinct_cells(lat: float) -> None:
    grid = SquareGrid(cell_m=100.0, radius=2)
    for lng in np.linspace(-179.99995, 179.99995, 101):
        cells = grid.window_cells(lat, float(lng))
        assert len(cells) == len(set(cells)) == 25
        assert grid.cell_of(lat, float(lng)) in cells


@pytest.mark.parametrize("lat", [22.0 + i * 0.0009 for i in range(10)])
def test_square_window_spans_at_most_two_bands(lat: float) -> None:
    grid = SquareGrid(cell_m=100.0, radius=2)
    _, spans = grid.window(lat, 114.0)
    bounds = spans[: len(spans) // 2].tolist()
    assert len(bounds) in (2, 4)
    cells = grid.window_cells(lat, 114.0)
    assert all(any(lo <= c < hi for lo, hi in zip(bounds[::2], bounds[1::2])) for c in cells)


def test_h3_window_is_the_disk() -> None:
    grid = H3Grid(res=10, radius=2)
    cells = grid.window_cells(22.53, 113.93)
    assert len(cells) == len(set(cells)) == 19  # 1 + 6 + 12 hexagons
    assert grid.cell_of(22.53, 113.93) in cells


def _ground_sides(grid: SquareGrid, lat: float, lng: float) -> tuple[float, float]:
    row = int((lat + 90.0) / grid.row_height_deg)
    n = int(grid.band_cols[row // grid.band_rows])
    south = row * grid.row_height_deg - 90.0
    west = math.floor((lng + 180.0) / 360.0 * n) * 360.0 / n - 180.0
    mid = south + grid.row_height_deg / 2
    width = float(haversine_m(mid, west, [mid], [west + 360.0 / n])[0])
    height = float(haversine_m(south, west, [south + grid.row_height_deg], [west])[0])
    return width, height


@pytest.mark.parametrize("cell_m", [50.0, 100.0, 1000.0])
def test_square_cells_have_equal_ground_sides_at_every_latitude(cell_m: float) -> None:
    grid = SquareGrid(cell_m=cell_m)
    # Rows at every position inside a band: the band shares the column count of its poleward row.
    lats = [lat + i * grid.row_height_deg for lat in LATITUDES + [-33.9, 80.0, 84.9] for i in range(grid.band_rows)]
    sides = [s for lat in lats for s in _ground_sides(grid, lat, 12.3)]
    assert max(sides) / min(sides) < 1.01
    assert all(abs(s - cell_m) / cell_m < 0.01 for s in sides)


def test_vectorised_cells_match_scalar_cell_of(grid: Grid) -> None:
    rng = np.random.default_rng(3)
    lats = rng.uniform(-85.0, 85.0, 20_000)
    lngs = rng.uniform(-180.0, 180.0, 20_000)
    lats[:4], lngs[:4] = [0.0, 85.0, -85.0, 22.5], [180.0, -180.0, 0.0, 113.9]
    expected = [grid.cell_of(a, b) for a, b in zip(lats.tolist(), lngs.tolist())]
    assert grid.cells_of(lats, lngs).tolist() == expected


def test_square_window_wraps_across_the_antimeridian() -> None:
    grid = SquareGrid()
    east = grid.window_cells(10.0, 179.9995)
    assert grid.cell_of(10.0, -179.9995) in east
    assert grid.cell_of(10.0, 180.0) == grid.cell_of(10.0, -180.0)
    center, spans = grid.window(10.0, 179.9995)
    bounds = spans[: len(spans) // 2].tolist()
    assert center == grid.cell_of(10.0, 179.9995)
    assert len(bounds) in (4, 8)  # each band's columns split in two ranges at the antimeridian
    assert all(lo < hi for lo, hi in zip(bounds[::2], bounds[1::2]))
    assert bounds == sorted(bounds)


@pytest.mark.parametrize(
    ("lat", "lng", "field"),
    [(91.0, 0.0, "lat"), (-90.5, 0.0, "lat"), (85.01, 0.0, "lat"), (math.nan, 0.0, "lat"),
     (0.0, 180.5, "lng"), (0.0, math.inf, "lng"), (0.0, -math.inf, "lng")],
)
def test_out_of_range_positions_are_refused(grid: Grid, lat: float, lng: float, field: str) -> None:
    with pytest.raises(GridError) as err:
        grid.cell_of(lat, lng)
    assert err.value.field == field


@pytest.mark.parametrize(
    "bad", [{"cell_m": 5.0}, {"cell_m": 2000.0}, {"radius": 0}, {"radius": 4, "band_rows": 8}, {"cell_m": 500.0, "band_rows": 20}]
)
def test_square_grid_refuses_bad_parameters(bad: dict[str, float]) -> None:
    with pytest.raises(GridError):
        SquareGrid(**bad)  # type: ignore[arg-type]


def test_grid_round_trips_through_its_params(grid: Grid) -> None:
    again = grid_from_params(grid.params())
    assert again.params() == grid.params()
    assert again.cell_of(22.5, 113.9) == grid.cell_of(22.5, 113.9)


def test_h3_ids_fit_int64_unchanged() -> None:
    import h3

    grid = H3Grid(res=15)
    cell = grid.cell_of(-33.9, 151.2)
    stored = np.array([cell], dtype=np.int64)
    assert h3.int_to_str(int(stored[0])) == h3.latlng_to_cell(-33.9, 151.2, 15)


def test_a_cells_outline_contains_the_points_of_that_cell_and_no_others(grid: Grid) -> None:
    from shapely.geometry import Point, Polygon

    rng = np.random.default_rng(12)
    for lat, lng in zip(rng.uniform(-84.9, 84.9, 300), rng.uniform(-179.9, 179.9, 300)):
        cell = grid.cell_of(float(lat), float(lng))
        ring = grid.cell_outline(cell)
        outline = Polygon(ring)
        assert ring[0] == ring[-1] and outline.is_valid
        assert outline.buffer(1e-9).contains(Point(lng, lat))
        # A point beyond the outline's easternmost vertex lies outside it, so in another cell.
        east = max(x for x, _ in ring) + 1e-6
        if east < 180.0:
            assert grid.cell_of(float(lat), east) != cell
