"""geo-snapshot import, held by a round trip: generated data folders (numeric and text zone ids, unicode
names, multipolygons, holes, empty optional fields) imported into MariaDB and built from there give the
snapshot the folder gives directly, array by array and table by table; what an import cannot carry is
refused."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geo_service.snapshot.folder import open_current
from geo_service.snapshot.format import ROW_ARRAYS
from loaders.cli import main
from tests.conftest import MYSQL_DSN

NAMES = st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=24).filter(str.strip)


def _box(lng: float, lat: float, size: float) -> list[list[float]]:
    return [[lng, lat], [lng + size, lat], [lng + size, lat + size], [lng, lat + size], [lng, lat]]


@st.composite
def districts(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One to three districts side by side near Shenzhen: boxes, some with a hole, some in two parts."""
    out = []
    for k in range(draw(st.integers(1, 3))):
        lng = 113.8 + k * 0.1
        shell = _box(lng, 22.5, 0.08)
        rings = [shell, _box(lng + 0.03, 22.53, 0.01)] if draw(st.booleans()) else [shell]
        geometry: dict[str, Any] = {"type": "Polygon", "coordinates": rings}
        if draw(st.booleans()):
            geometry = {"type": "MultiPolygon", "coordinates": [rings, [_box(lng, 22.6, 0.02)]]}
        parent = draw(st.sampled_from([440300, None]))
        out.append({"type": "Feature", "geometry": geometry,
                    "properties": {"code": 440301 + k, "name": draw(NAMES), "parent_code": parent}})
    return out


@st.composite
def folders(draw: st.DrawFn) -> dict[str, Any]:
    ds = draw(districts())
    zone_ids = draw(st.lists(st.one_of(st.integers(1, 10**6), st.text("abcxyz-_09", min_size=1, max_size=10)),
                             max_size=3, unique_by=str))
    zones = [{"type": "Feature", "properties": {"id": z, "reason": draw(st.sampled_from(["", "school", "河道 river"]))},
              "geometry": {"type": "Polygon", "coordinates": [_box(113.8 + 0.1 * (k % len(ds)) + 0.05, 22.55, 0.01),
                                                              _box(113.8 + 0.1 * (k % len(ds)) + 0.053, 22.553, 0.002)]}}
             for k, z in enumerate(zone_ids)]
    n_tasks = draw(st.integers(1, 4))
    tasks = [[t, draw(NAMES), ds[t % len(ds)]["properties"]["code"], 1 + t % 2,
              draw(st.sampled_from(["2020-01-01T00:00:00Z", "1577836800"])),
              draw(st.sampled_from(["2099-01-01T00:00:00+08:00", "4070908800"])), draw(st.sampled_from(["1", "0", ""])),
              draw(st.sampled_from(["", "0", "120"])), draw(st.sampled_from(["", "3"]))]
             for t in range(1, n_tasks + 1)]
    prizes = [[t, p, draw(st.integers(0, 1000)), draw(st.sampled_from([1, 2.5])), draw(st.sampled_from(["", 5, 0.5]))]
              for t in range(1, n_tasks + 1) for p in draw(st.lists(st.sampled_from(["cash", "券 coupon"]), min_size=1,
                                                                      max_size=2, unique=True))]
    points = draw(st.lists(st.tuples(st.integers(0, 99_999), st.integers(0, 119_999)), min_size=5, max_size=60,
                           unique=True))
    pois = [[1000 + i, 1 + i % 2, round(22.5 + a / 1e6, 6), round(113.8 + b / 1e6 * 3, 6)] for i, (a, b) in enumerate(points)]
    return {"districts": ds, "zones": zones, "tasks": tasks, "prizes": prizes, "pois": pois}


def write(folder: Path, data: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "districts.geojson").write_bytes(orjson.dumps({"type": "FeatureCollection", "features": data["districts"]}))
    if data["zones"]:
        (folder / "exclusions.geojson").write_bytes(orjson.dumps({"type": "FeatureCollection", "features": data["zones"]}))
    for name, header, rows in (
            ("tasks.csv", ["task_id", "name", "district_code", "poi_set_id", "starts_at", "ends_at", "enabled", "stagger_s",
                           "stagger_groups"], data["tasks"]),
            ("task_prizes.csv", ["task_id", "prize_type", "quota", "weight", "rate_per_s"], data["prizes"]),
            ("pois.csv", ["poi_id", "poi_set_id", "lat", "lng"], data["pois"])):
        with (folder / name).open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])


@pytest.fixture
def mariadb(mysql_conn: pymysql.connections.Connection) -> str:
    return MYSQL_DSN


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=folders())
def test_a_folder_imported_into_mariadb_builds_the_snapshot_the_folder_builds(
        mariadb: str, tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any]) -> None:
    tmp = tmp_path_factory.mktemp("roundtrip")
    write(tmp / "data", data)
    assert main(["build", "--source", str(tmp / "data"), "--out", str(tmp / "a"), "--quiet"]) == 0
    assert main(["import", "--source", str(tmp / "data"), "--mysql", mariadb, "--quiet"]) == 0
    assert main(["build", "--source", mariadb, "--out", str(tmp / "b"), "--quiet"]) == 0
    a, b = open_current(tmp / "a"), open_current(tmp / "b")
    for name in ROW_ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.tasks, a.districts) == (b.tasks, b.districts)
    assert (a.path / "districts.geojson").read_bytes() == (b.path / "districts.geojson").read_bytes()
    assert (a.manifest["counts"], a.manifest["screening"]) == (b.manifest["counts"], b.manifest["screening"])
    assert a.manifest["counts"]["zones"] == len(data["zones"])  # every zone arrived with its geometry


def test_an_import_refuses_what_its_columns_cannot_hold_and_leaves_the_tables_as_they_were(
        mariadb: str, mysql_conn: pymysql.connections.Connection, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import SAMPLE

    assert main(["import", "--source", str(SAMPLE), "--mysql", mariadb, "--quiet"]) == 0
    folder = tmp_path / "data"
    data = {"districts": [{"type": "Feature", "properties": {"code": 440301, "name": "d"},
                           "geometry": {"type": "Polygon", "coordinates": [_box(113.8, 22.5, 0.1)]}}],
            "zones": [{"type": "Feature", "properties": {"id": "z" * 65, "reason": ""},
                       "geometry": {"type": "Polygon", "coordinates": [_box(113.82, 22.52, 0.01)]}}],
            "tasks": [[1, "t" * 201, 440301, 1, "1577836800", "4070908800", "1"]],
            "prizes": [[1, "cash", 5, 1, ""]], "pois": [[1, 1, 22.55, 113.85]]}
    write(folder, data)
    assert main(["import", "--source", str(folder), "--mysql", mariadb, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'exclusions.geojson'}:1: id: 65 characters; the MySQL column holds 64" in err
    assert f"{folder / 'tasks.csv'}:2: name: 201 characters; the MySQL column holds 200" in err
    mysql_conn.commit()
    with mysql_conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM districts")
        assert cur.fetchone()[0] == 9  # the sample's, untouched
