"""The spatial grids: equal-area square cells (default) and H3 hexagons, behind one protocol."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import h3.api.basic_int as h3
import numpy as np
import numpy.typing as npt

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius; the tests' great-circle oracle uses the same sphere
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
# Square cells lose ground width toward the poles without bound; past this band (which holds every
# populated place) a cell would stop being a square, so positions there are refused, not served.
MAX_ABS_LAT = 85.0
# A great circle is shorter than the parallel arc between the same two points, by under 1e-8 of
# the length at these scales; widening columns by this much keeps the reach guarantee exact.
_ARC_MARGIN = 1e-6

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class GridError(ValueError):
    """A position or grid parameter outside what the grid supports."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def check_position(lat: float, lng: float) -> None:
    """Raise GridError unless (lat, lng) is a finite WGS84 position inside the served band."""
    if not math.isfinite(lat) or not -90.0 <= lat <= 90.0:
        raise GridError("lat", f"must be a number in [-90, 90]; got {lat!r}")
    if not math.isfinite(lng) or not -180.0 <= lng <= 180.0:
        raise GridError("lng", f"must be a number in [-180, 180]; got {lng!r}")
    if abs(lat) > MAX_ABS_LAT:
        raise GridError("lat", f"is beyond the served band of ±{MAX_ABS_LAT}°; got {lat!r}")


def position_mask(lat: FloatArray, lng: FloatArray) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Return (lat_ok, lng_ok) masks: the vectorised form of check_position."""
    with np.errstate(invalid="ignore"):
        lat_ok = np.isfinite(lat) & (np.abs(lat) <= MAX_ABS_LAT)
        lng_ok = np.isfinite(lng) & (lng >= -180.0) & (lng <= 180.0)
    return lat_ok, lng_ok


class Grid(Protocol):
    """What the loader and the service need of a grid."""

    radius: int

    def cell_of(self, lat: float, lng: float) -> int: ...

    def cells_of(self, lat: FloatArray, lng: FloatArray) -> IntArray: ...

    def window_bounds(self, lat: float, lng: float) -> list[int]:
        """Return the window as sorted half-open id ranges, flattened: [lo0, hi0, lo1, hi1, ...]."""
        ...

    def window_cells(self, lat: float, lng: float) -> list[int]: ...

    @property
    def reach_m(self) -> float:
        """Every point within this great-circle distance of a query lies in its window."""
        ...

    def params(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class SquareGrid:
    """Rows of fixed latitude height; each row split into equal columns of at least cell_m ground width.

    A row's column count is taken at its poleward edge, so every column is at least cell_m wide
    everywhere in the row and a whole number of columns spans 360°: the window wraps cleanly
    across the antimeridian. Cell id = row * max_cols + col (row-major int64), so one row of a
    window is one or, across the antimeridian, two contiguous id ranges.
    """

    cell_m: float = 100.0
    radius: int = 2
    row_height_deg: float = field(init=False)
    n_rows: int = field(init=False)
    max_cols: int = field(init=False)
    row_cols: IntArray = field(init=False, repr=False, compare=False)
    _row_cols: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 10.0 <= self.cell_m <= 10_000.0:
            raise GridError("cell_m", f"must be in [10, 10000] metres; got {self.cell_m!r}")
        if not 1 <= self.radius <= 10:
            raise GridError("radius", f"must be in [1, 10] cells; got {self.radius!r}")
        height = self.cell_m / M_PER_DEG
        n_rows = math.ceil(180.0 / height)
        rows = np.arange(n_rows, dtype=np.float64)
        poleward = np.maximum(np.abs(rows * height - 90.0), np.abs((rows + 1) * height - 90.0))
        poleward = np.minimum(poleward, 90.0)
        width_m = 360.0 * M_PER_DEG * np.cos(np.radians(poleward))
        cols = np.floor(width_m / (self.cell_m * (1.0 + _ARC_MARGIN))).astype(np.int64)
        cols = np.maximum(cols, 1)
        object.__setattr__(self, "row_height_deg", height)
        object.__setattr__(self, "n_rows", n_rows)
        object.__setattr__(self, "max_cols", int(cols.max()))
        object.__setattr__(self, "row_cols", cols)
        # The scalar path reads a list: indexing a numpy array from Python costs ~10x more.
        object.__setattr__(self, "_row_cols", cols.tolist())

    @property
    def reach_m(self) -> float:
        return self.radius * self.cell_m

    def params(self) -> dict[str, Any]:
        return {"kind": "square", "cell_m": self.cell_m, "radius": self.radius}

    def _row(self, lat: float) -> int:
        return min(int((lat + 90.0) / self.row_height_deg), self.n_rows - 1)

    def cell_of(self, lat: float, lng: float) -> int:
        """Return the cell containing the point (O(1): two divisions and a table look-up)."""
        check_position(lat, lng)
        row = self._row(lat)
        n = self._row_cols[row]
        return row * self.max_cols + int((lng + 180.0) / 360.0 * n) % n

    def cells_of(self, lat: FloatArray, lng: FloatArray) -> IntArray:
        """Return the cells of many points; identical to cell_of point by point."""
        rows = np.minimum(((lat + 90.0) / self.row_height_deg).astype(np.int64), self.n_rows - 1)
        n = self.row_cols[rows]
        cols = ((lng + 180.0) / 360.0 * n).astype(np.int64) % n
        return rows * self.max_cols + cols

    def window_bounds(self, lat: float, lng: float) -> list[int]:
        # A plain list, not an array: this runs on every request and numpy's per-call cost on
        # ten numbers is larger than the arithmetic.
        check_position(lat, lng)
        row = self._row(lat)
        r = self.radius
        bounds: list[int] = []
        for wrow in range(max(row - r, 0), min(row + r, self.n_rows - 1) + 1):
            n = self._row_cols[wrow]
            base = wrow * self.max_cols
            c = int((lng + 180.0) / 360.0 * n) % n
            lo, hi = c - r, c + r + 1
            if 2 * r + 1 >= n:
                bounds += (base, base + n)
            elif lo < 0:
                bounds += (base, base + hi, base + n + lo, base + n)
            elif hi > n:
                bounds += (base, base + hi - n, base + lo, base + n)
            else:
                bounds += (base + lo, base + hi)
        return bounds

    def window_cells(self, lat: float, lng: float) -> list[int]:
        bounds = self.window_bounds(lat, lng)
        return [c for lo, hi in zip(bounds[::2], bounds[1::2]) for c in range(lo, hi)]


@dataclass(frozen=True, slots=True)
class H3Grid:
    """H3 hexagons at a fixed resolution; the window is grid_disk(cell, radius)."""

    res: int = 10
    radius: int = 2

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
        edge = h3.average_hexagon_edge_length(self.res, unit="m") / math.sqrt(2.0)
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

    def window_bounds(self, lat: float, lng: float) -> list[int]:
        return [b for c in self.window_cells(lat, lng) for b in (c, c + 1)]

    def window_cells(self, lat: float, lng: float) -> list[int]:
        return sorted(h3.grid_disk(self.cell_of(lat, lng), self.radius))


def grid_from_params(params: dict[str, Any]) -> Grid:
    """Rebuild the grid a snapshot's manifest describes."""
    kind = params.get("kind")
    if kind == "square":
        return SquareGrid(cell_m=float(params["cell_m"]), radius=int(params["radius"]))
    if kind == "h3":
        return H3Grid(res=int(params["h3_res"]), radius=int(params["radius"]))
    raise GridError("grid", f"unknown grid kind {kind!r}")
