"""Brute-force great-circle distances: the independent oracle the grid and lookups are checked against."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# The same mean radius the grid uses; written out here, not imported, so the oracle stays independent.
EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat0: float, lng0: float, lat: npt.ArrayLike, lng: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return great-circle distances in metres from one point to many."""
    p0, p1 = np.radians(lat0), np.radians(np.asarray(lat, dtype=np.float64))
    dp = p1 - p0
    dl = np.radians(np.asarray(lng, dtype=np.float64) - lng0)
    a = np.sin(dp / 2) ** 2 + np.cos(p0) * np.cos(p1) * np.sin(dl / 2) ** 2
    metres: npt.NDArray[np.float64] = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return metres


def scatter_around(lat: float, lng: float, reach_m: float, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return n random points in a box reaching 1.5 x reach_m around (lat, lng), wrapping longitude."""
    dlat = 1.5 * reach_m / 111_000.0
    dlng = dlat / max(np.cos(np.radians(abs(lat) + dlat)), 1e-6)
    lats = np.clip(lat + rng.uniform(-dlat, dlat, n), -85.0, 85.0)
    lngs = (lng + rng.uniform(-dlng, dlng, n) + 540.0) % 360.0 - 180.0
    return lats, lngs
