"""The grid against the brute-force great-circle oracle, for both grid kinds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geo_service.snapshot.grid import Grid, GridError, H3Grid, SquareGrid, grid_from_params
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
def test_square_window_is_5_rows_of_5_to_7_distinct_cells(lat: float) -> None:
    grid = SquareGrid(cell_m=100.0, radius=2)
    sizes = set()
    for qlat in lat + np.arange(grid.band_rows) * grid.row_height_deg:  # every row position in a band
        for lng in np.linspace(-179.99995, 179.99995, 101):
            cells = grid.window_cells(float(qlat), float(lng))
            center = grid.cell_of(float(qlat), float(lng))
            rows: dict[int, int] = {}  # row -> cells in it
            for c in cells:
                row = c // grid.band_rows // grid.max_cols * grid.band_rows + c % grid.band_rows
                rows[row] = rows.get(row, 0) + 1
            center_row = center // grid.band_rows // grid.max_cols * grid.band_rows + center % grid.band_rows
            assert len(cells) == len(set(cells)) and center in cells
            assert sorted(rows) == list(range(center_row - 2, center_row + 3))
            # The centre's band: 5 columns; another band with a different column count: those
            # overlapping the centre cell's longitudes, one to three, widened by 2.
            assert all(n == 5 if row // grid.band_rows == center_row // grid.band_rows else n in (5, 6, 7)
                       for row, n in rows.items())
            sizes.add(len(cells))
    # Both kinds of window were met, but at the equator, where neighbouring bands share a column count.
    assert 25 in sizes and (len(sizes) > 1) == (lat != 0.0)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "-".join(f"{v}" for v in g.params().values()))
def test_the_window_depends_on_the_centre_cell_alone(grid: Grid) -> None:
    rng = np.random.default_rng(11)
    lats, lngs = rng.uniform(-85.0, 85.0, 3000), rng.uniform(-180.0, 180.0, 3000)
    lats[:6], lngs[:6] = [85.0, -85.0, 0.0, 10.0, 10.0, 60.0], [180.0, -180.0, 179.99999, -179.99999, 0.0, 179.9999]
    for lat, lng in zip(lats.tolist(), lngs.tolist()):
        center, spans = grid.window(lat, lng)
        by_cell = grid.cell_window(grid.cell_of(lat, lng))
        assert by_cell[0] == center and by_cell[1].tolist() == spans.tolist()


@pytest.mark.parametrize("cell", [-1, 2**62, 10**18])
def test_a_number_that_is_no_cell_of_the_grid_is_refused(grid: Grid, cell: int) -> None:
    with pytest.raises(GridError, match="cell"):
        grid.cell_window(cell)


def test_a_square_cell_beyond_the_served_band_is_refused() -> None:
    grid = SquareGrid()
    with pytest.raises(GridError, match="served band"):
        grid.cell_window(grid.cells_of(np.array([89.0]), np.array([10.0]))[0].item())


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
