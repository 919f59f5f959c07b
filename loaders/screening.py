"""Point-in-polygon screening with shapely's vectorised predicates: exclusion zones and districts."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

from loaders.records import Zone

Mask = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


def inside(geometry: BaseGeometry, lat: FloatArray, lng: FloatArray) -> Mask:
    """Return which points lie in the polygon or on its boundary.

    A bounding-box test first keeps shapely's per-point work to the few candidates, which matters
    when a small zone is screened against millions of POIs.
    """
    x0, y0, x1, y1 = geometry.bounds
    mask: npt.NDArray[np.bool_] = (lng >= x0) & (lng <= x1) & (lat >= y0) & (lat <= y1)
    candidates = np.flatnonzero(mask)
    if len(candidates):
        shapely.prepare(geometry)
        mask[candidates] = shapely.intersects_xy(geometry, lng[candidates], lat[candidates])
    return mask


def zone_index(zones: list[Zone], lat: FloatArray, lng: FloatArray) -> npt.NDArray[np.int32]:
    """Return, for each point, the index of the first zone listed that holds it, or -1 (the console shows which)."""
    which = np.full(len(lat), -1, dtype=np.int32)
    for i, zone in enumerate(zones):
        which[inside(zone.geometry, lat, lng) & (which < 0)] = i
    return which


def excluded(zones: list[Zone], lat: FloatArray, lng: FloatArray, counts: dict[str, int]) -> Mask:
    """Return which points fall in any exclusion zone; add each zone's catch to `counts`.

    A point in several zones is counted once, for the first zone listed.
    """
    which = zone_index(zones, lat, lng)
    caught = np.bincount(which + 1, minlength=len(zones) + 1)[1:]
    for zone, n in zip(zones, caught.tolist()):
        counts[zone.zone_id] = counts.get(zone.zone_id, 0) + n
    mask: Mask = which >= 0
    return mask
