"""The spatial grids: equal-area square cells (default) and H3 hexagons, behind one protocol."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import h3.api.basic_int as h3
import numba
import numpy as np
import numpy.typing as npt

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius; the tests' great-circle oracle uses the same sphere
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
# Square cells lose ground width toward the poles without bound; past this band (which holds every
# populated place) a cell would stop being a square, so positions there are refused, not served.
MAX_ABS_LAT = 85.0
MAX_ABS_LNG = 180.0
# A band's cells are widest at its equator-side edge, by tan(lat) * band height / R relative to its
# poleward edge: 2 km bands keep that under 0.4% up to 85°, 5 km under 1%.
_MAX_BAND_M = 2000.0
# A great circle is shorter than the parallel arc between the same two points, by under 1e-8 of
# the length at these scales; widening columns by this much keeps the reach guarantee exact.
_ARC_MARGIN = 1e-6

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# (center cell, spans): spans is [lo0, hi0, lo1, hi1, ...] sorted half-open id ranges then
# [k_lo0, k_hi0, ...]: range i holds the window's cells whose id % band_rows lies in
# [k_lo_i, k_hi_i], plus cells beside it. One array, because compiled passes read it.
Window = tuple[int, IntArray]


def distance_m(lat0: float, lng0: float, lat1: float, lng1: float) -> float:
    """Return the great-circle distance in metres (haversine on the EARTH_RADIUS_M sphere)."""
    p0, p1 = math.radians(lat0), math.radians(lat1)
    a = math.sin((p1 - p0) / 2) ** 2 + math.cos(p0) * math.cos(p1) * math.sin(math.radians(lng1 - lng0) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(a, 1.0)))


class GridError(ValueError):
    """A position or grid parameter outside what the grid supports."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def in_band(lat: float, lng: float) -> bool:
    """Whether (lat, lng) lies in the served band: the one test of it (NaN and infinities fail it)."""
    return -MAX_ABS_LAT <= lat <= MAX_ABS_LAT and -MAX_ABS_LNG <= lng <= MAX_ABS_LNG


def check_position(lat: float, lng: float) -> None:
    """Raise GridError unless (lat, lng) is a finite WGS84 position inside the served band, naming the field."""
    if in_band(lat, lng):
        return
    if not math.isfinite(lat) or not -90.0 <= lat <= 90.0:
        raise GridError("lat", f"must be a number in [-90, 90]; got {lat!r}")
    if not math.isfinite(lng) or not -MAX_ABS_LNG <= lng <= MAX_ABS_LNG:
        raise GridError("lng", f"must be a number in [-180, 180]; got {lng!r}")
    raise GridError("lat", f"is beyond the served band of ±{MAX_ABS_LAT}°; got {lat!r}")


def position_mask(lat: FloatArray, lng: FloatArray) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Return (lat_ok, lng_ok) masks: in_band over arrays (the build's vectorised form of the same test)."""
    with np.errstate(invalid="ignore"):
        lat_ok = np.isfinite(lat) & (np.abs(lat) <= MAX_ABS_LAT)
        lng_ok = np.isfinite(lng) & (np.abs(lng) <= MAX_ABS_LNG)
    return lat_ok, lng_ok


class Grid(Protocol):
    """What the loader and the service need of a grid."""

    @property
    def radius(self) -> int: ...

    @property
    def band_rows(self) -> int: ...

    def cell_of(self, lat: float, lng: float) -> int: ...

    def cells_of(self, lat: FloatArray, lng: FloatArray) -> IntArray: ...

    def window(self, lat: float, lng: float) -> Window:
        """Return the window: centre cell, id ranges to search, and which rows of each range count."""
        ...

    def window_cells(self, lat: float, lng: float) -> list[int]: ...

    def cell_window(self, cell: int) -> Window:
        """Return the window around a cell: the same as window() at every point of it. GridError if `cell`
        is not a cell of this grid inside the served band."""
        ...

    def client_params(self) -> dict[str, Any]:
        """What a client needs to compute cell ids itself (GET /v1/grid)."""
        ...

    @property
    def reach_m(self) -> float:
        """Every point within this great-circle distance of a query lies in its window."""
        ...

    def params(self) -> dict[str, Any]: ...

    def cell_outline(self, cell: int) -> list[tuple[float, float]]:
        """Return a cell's boundary as a closed (lng, lat) ring, for maps."""
        ...


@dataclass(frozen=True, slots=True)
class SquareGrid:
    """Rows of fixed latitude height, grouped in bands that share one column count.

    A band's column count is taken at its poleward edge, so every cell is at least cell_m wide
    everywhere in the band (and wider by under 0.1% at its other edge below 85°), and a whole
    number of columns spans 360°: windows wrap cleanly across the antimeridian.

    Cell id = (band * max_cols + col) * band_rows + row_in_band: band-major, then column, then row.
    The cells of a few adjacent columns across a whole band are then one contiguous id range, so a
    5x5 window is one or two ranges of the sorted cell array (two bands at most when band_rows >=
    2 * radius + 1) instead of five: fewer binary searches, and the rows found sit together in
    memory. Those ranges also hold the band's rows outside the window, which the caller drops by
    cell id.
    """

    cell_m: float = 100.0
    radius: int = 2
    band_rows: int = 0  # 0: the largest band (up to 8 rows) that keeps cells within 1% of square
    row_height_deg: float = field(init=False)
    n_rows: int = field(init=False)
    max_cols: int = field(init=False)
    band_cols: IntArray = field(init=False, repr=False, compare=False)
    _band_cols: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 10.0 <= self.cell_m <= 1000.0:
            raise GridError("cell_m", f"must be in [10, 1000] metres (use --grid h3 for coarser cells); got {self.cell_m!r}")
        if not 1 <= self.radius <= 10:
            raise GridError("radius", f"must be in [1, 10] cells; got {self.radius!r}")
        if self.band_rows == 0:
            object.__setattr__(self, "band_rows", max(2 * self.radius + 1, min(8, int(_MAX_BAND_M // self.cell_m))))
        if not 2 * self.radius + 1 <= self.band_rows <= 64 or self.band_rows * self.cell_m > _MAX_BAND_M * 2.5:
            raise GridError("band_rows", f"must be in [2 * radius + 1, 64] and span at most {_MAX_BAND_M * 2.5:g} m; "
                                         f"got {self.band_rows!r}")
        height = self.cell_m / M_PER_DEG
        n_rows = math.ceil(180.0 / height)
        edges = np.arange(0, n_rows + self.band_rows, self.band_rows, dtype=np.float64) * height - 90.0
        edges = np.minimum(edges, 90.0)
        poleward = np.maximum(np.abs(edges[:-1]), np.abs(edges[1:]))
        width_m = 360.0 * M_PER_DEG * np.cos(np.radians(poleward))
        cols = np.maximum(np.floor(width_m / (self.cell_m * (1.0 + _ARC_MARGIN))).astype(np.int64), 1)
        object.__setattr__(self, "row_height_deg", height)
        object.__setattr__(self, "n_rows", n_rows)
        object.__setattr__(self, "max_cols", int(cols.max()))
        object.__setattr__(self, "band_cols", cols)
        # The scalar path reads a list: indexing a numpy array from Python costs ~10x more.
        object.__setattr__(self, "_band_cols", cols.tolist())

    @property
    def reach_m(self) -> float:
        return self.radius * self.cell_m

    def params(self) -> dict[str, Any]:
        return {"kind": "square", "cell_m": self.cell_m, "radius": self.radius, "band_rows": self.band_rows}

    def cell_of(self, lat: float, lng: float) -> int:
        """Return the cell containing the point (O(1): a few divisions and a table look-up)."""
        check_position(lat, lng)
        row = min(int((lat + 90.0) / self.row_height_deg), self.n_rows - 1)
        band, k = divmod(row, self.band_rows)
        n = self._band_cols[band]
        return (band * self.max_cols + int((lng + 180.0) / 360.0 * n) % n) * self.band_rows + k

    def cells_of(self, lat: FloatArray, lng: FloatArray) -> IntArray:
        """Return the cells of many points; identical to cell_of point by point."""
        rows = np.minimum(((lat + 90.0) / self.row_height_deg).astype(np.int64), self.n_rows - 1)
        band, k = np.divmod(rows, self.band_rows)
        n = self.band_cols[band]
        cols = ((lng + 180.0) / 360.0 * n).astype(np.int64) % n
        cells: IntArray = (band * self.max_cols + cols) * self.band_rows + k
        return cells

    def window(self, lat: float, lng: float) -> Window:
        if not in_band(lat, lng):
            check_position(lat, lng)
        return square_window(lat, lng, self.row_height_deg, self.radius, self.band_rows, self.max_cols, self.band_cols)

    def window_cells(self, lat: float, lng: float) -> list[int]:
        return cells_in(self.window(lat, lng), self.band_rows)

    def cell_window(self, cell: int) -> Window:
        rest, k = divmod(cell, self.band_rows)
        band, col = divmod(rest, self.max_cols)
        row = band * self.band_rows + k
        first, last = (int((edge + 90.0) / self.row_height_deg) for edge in (-MAX_ABS_LAT, MAX_ABS_LAT))
        if cell < 0 or not first <= row <= last or col >= self._band_cols[band]:
            raise GridError("cell", f"is not a cell of this grid inside the served band of ±{MAX_ABS_LAT}°; got {cell}")
        return square_window_at(row, col, self.radius, self.band_rows, self.max_cols, self.band_cols)

    def client_params(self) -> dict[str, Any]:
        return {**self.params(), "row_height_deg": self.row_height_deg, "n_rows": self.n_rows,
                "max_cols": self.max_cols, "band_cols": self._band_cols}

    def cell_outline(self, cell: int) -> list[tuple[float, float]]:
        rest, k = divmod(cell, self.band_rows)
        band, col = divmod(rest, self.max_cols)
        south = (band * self.band_rows + k) * self.row_height_deg - 90.0
        north = min(south + self.row_height_deg, 90.0)
        n = self._band_cols[band]
        west, east = col / n * 360.0 - 180.0, (col + 1) / n * 360.0 - 180.0
        return [(west, south), (east, south), (east, north), (west, north), (west, south)]


@dataclass(frozen=True, slots=True)
class H3Grid:
    """H3 hexagons at a fixed resolution; the window is grid_disk(cell, radius)."""

    res: int = 10
    radius: int = 2
    band_rows: int = 1  # every cell is its own range: nothing beside the window to drop

    def __post_init__(self) -> None:
        if not 0 <= self.res <= 15:
            raise GridError("h3_res", f"must be in [0, 15]; got {self.res!r}")
        if not 1 <= self.radius <= 10:
            raise GridError("radius", f"must be in [1, 10] cells; got {self.radius!r}")

    @property
    def reach_m(self) -> float:
        # Hexagons k rings out have centres at least 1.5*k edges away, so a disk of radius k covers
        # (1.5k - 0.5) edges around any point of the centre cell. H3's smallest hexagons are about
        # half the average area, hence the 1/sqrt(2) on the average edge.
        edge = float(h3.average_hexagon_edge_length(self.res, unit="m")) / math.sqrt(2.0)
        return (1.5 * self.radius - 0.5) * edge

    def params(self) -> dict[str, Any]:
        return {"kind": "h3", "h3_res": self.res, "radius": self.radius}

    def cell_of(self, lat: float, lng: float) -> int:
        check_position(lat, lng)
        return int(h3.latlng_to_cell(lat, lng, self.res))

    def cells_of(self, lat: FloatArray, lng: FloatArray) -> IntArray:
        # h3-py 4 has no vectorised indexer; the C call per point is ~1 µs.
        to_cell, res = h3.latlng_to_cell, self.res
        cells = [to_cell(a, b, res) for a, b in zip(lat.tolist(), lng.tolist())]
        # H3 ids fit in 63 bits (the top bit is reserved 0), so int64 holds them unchanged.
        return np.array(cells, dtype=np.int64)

    def window(self, lat: float, lng: float) -> Window:
        return self._disk(self.cell_of(lat, lng))

    def window_cells(self, lat: float, lng: float) -> list[int]:
        return cells_in(self.window(lat, lng), self.band_rows)

    def cell_window(self, cell: int) -> Window:
        if not (0 < cell < 2**63 and h3.is_valid_cell(cell) and h3.get_resolution(cell) == self.res):
            raise GridError("cell", f"is not an H3 cell of resolution {self.res}; got {cell}")
        return self._disk(cell)

    def client_params(self) -> dict[str, Any]:
        return self.params()

    def _disk(self, center: int) -> Window:
        cells = sorted(h3.grid_disk(center, self.radius))
        return center, np.array([b for c in cells for b in (c, c + 1)] + [0, 0] * len(cells), dtype=np.int64)

    def cell_outline(self, cell: int) -> list[tuple[float, float]]:
        ring = [(lng, lat) for lat, lng in h3.cell_to_boundary(cell)]
        return [*ring, ring[0]]


def cells_in(window: Window, band_rows: int) -> list[int]:
    """Return the window's cells, in id order."""
    return span_cells(window[1], band_rows).tolist()  # type: ignore[no-any-return]


@numba.njit(nogil=True, cache=True)
def square_window(lat: float, lng: float, row_height_deg: float, r: int, b_rows: int, max_cols: int,
                  band_cols: IntArray) -> Window:  # pragma: no cover - compiled
    """Return the center cell and spans of the square window around a point in the served band."""
    row = int((lat + 90.0) / row_height_deg)
    n = band_cols[row // b_rows]
    return square_window_at(row, int((lng + 180.0) / 360.0 * n) % n, r, b_rows, max_cols, band_cols)


@numba.njit(nogil=True, cache=True)
def square_window_at(row: int, col: int, r: int, b_rows: int, max_cols: int,
                     band_cols: IntArray) -> Window:  # pragma: no cover - compiled
    """Return the center cell and spans of the square window around the cell at (row, col of its band).

    The window depends on the centre cell alone, so every point of a cell gets the same answer and a
    client can ask by cell: in a band whose column count differs from the centre's, it holds every
    column that overlaps the centre cell's longitudes (one to three), widened by r on each side.
    """
    center_band = row // b_rows
    n_center = band_cols[center_band]
    center = (center_band * max_cols + col) * b_rows + row - center_band * b_rows
    first_band, last_band = (row - r) // b_rows, (row + r) // b_rows
    # Rows row-r..row+r all exist: the served band of latitudes stops well short of the poles.
    bounds = np.empty(4 * (last_band - first_band + 1), np.int64)
    k_spans = np.empty_like(bounds)
    m = 0
    for band in range(first_band, last_band + 1):
        n = band_cols[band]
        first = band * b_rows
        k_lo, k_hi = max(row - r - first, 0), min(row + r - first, b_rows - 1)
        lo, hi = col * n // n_center - r, ((col + 1) * n - 1) // n_center + r + 1  # columns [lo, hi)
        if hi - lo >= n:
            cols = (0, n, 0, 0)
        elif lo >= 0 and hi <= n:
            cols = (lo, hi, 0, 0)
        elif lo < 0:  # the window wraps west across the antimeridian
            cols = (0, hi, n + lo, n)
        else:  # it wraps east
            cols = (0, hi - n, lo, n)
        for i in range(0, 4, 2):
            if cols[i + 1] > cols[i]:
                bounds[m], bounds[m + 1] = (band * max_cols + cols[i]) * b_rows, (band * max_cols + cols[i + 1]) * b_rows
                k_spans[m], k_spans[m + 1] = k_lo, k_hi
                m += 2
    spans = np.empty(2 * m, np.int64)
    spans[:m] = bounds[:m]
    spans[m:] = k_spans[:m]
    return center, spans


@numba.njit(nogil=True, cache=True)
def span_cells(spans: IntArray, band_rows: int) -> IntArray:  # pragma: no cover - compiled
    """Return the cells of a window's spans, in id order: each id range's columns, each column's k span."""
    half = spans.size // 2
    count = 0
    for i in range(0, half, 2):
        count += (spans[i + 1] - spans[i]) // band_rows * (spans[half + i + 1] - spans[half + i] + 1)
    cells = np.empty(count, np.int64)
    m = 0
    for i in range(0, half, 2):
        for col in range(spans[i], spans[i + 1], band_rows):
            for k in range(spans[half + i], spans[half + i + 1] + 1):
                cells[m] = col + k
                m += 1
    return cells


def grid_from_params(params: dict[str, Any]) -> Grid:
    """Rebuild the grid a snapshot's manifest describes."""
    kind = params.get("kind")
    if kind == "square":
        return SquareGrid(cell_m=float(params["cell_m"]), radius=int(params["radius"]), band_rows=int(params["band_rows"]))
    if kind == "h3":
        return H3Grid(res=int(params["h3_res"]), radius=int(params["radius"]))
    raise GridError("grid", f"unknown grid kind {kind!r}")
