"""Answers that cache: levels instead of counts, ETags of what an answer shows, the cell-keyed form and
the grid a client computes cells from."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest

from geo_service.nearby import Levels, Lookup, TaskOverride, encode_answer
from geo_service.snapshot.folder import open_current
from geo_service.snapshot.grid import Grid, H3Grid
from tests.conftest import REPO, SAMPLE, MakeClient, build_into
from tests.support.builders import claim_poi, write_claims_data
from tests.support.processes import service

NOW_S = 1_790_000_000
EXTRA = {"next_poll_ms": 5000, "status_age_s": 0.5}


@pytest.mark.parametrize(("remaining", "level"), [
    (None, None), (0, "none"), (-1, "none"), (1, "last"), (9, "last"), (10, "few"), (99, "few"), (100, "plenty"),
    (10**9, "plenty")])
def test_levels_split_at_their_thresholds(remaining: int | None, level: str | None) -> None:
    assert Levels(few_below=100, last_below=10).of(remaining) == level


@pytest.fixture(scope="module")
def forty_tasks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tasks 1..40 on lines 100 m apart west to east (task 40 is 3.9 km from task 1), and their snapshots."""
    root = tmp_path_factory.mktemp("forty")
    data, snaps = root / "data", root / "snaps"
    write_claims_data(data, {"cash": 500, "coupon": 500}, pois=3, tasks=40)
    build_into(data, snaps)
    return data, snaps


def test_the_tag_moves_with_what_the_answer_shows_and_nothing_else(forty_tasks: tuple[Path, Path]) -> None:
    data, snaps = forty_tasks
    lookup = Lookup(open_current(snaps))
    _, lat, lng = claim_poi(1, 0)

    def shown(overrides: dict[int, TaskOverride], of: Lookup = lookup) -> tuple[bytes, int]:
        return encode_answer(of, of.table.status(NOW_S, overrides), lat, lng, 300, EXTRA)

    full = {t: TaskOverride(remaining={"cash": 500, "coupon": 500}) for t in range(1, 42)}
    body, base = shown(full)
    in_window = {t["task_id"] for t in orjson.loads(body)["tasks"]}
    assert 1 in in_window and 40 not in in_window
    # Claims elsewhere, and counts that stay inside their level, leave the tag (and the bytes) as they were.
    assert shown({**full, 40: TaskOverride(remaining={"cash": 3, "coupon": 0})}) == (body, base)
    assert shown({**full, 40: TaskOverride(enabled=False)}) == (body, base)
    assert shown({**full, 1: TaskOverride(remaining={"cash": 100, "coupon": 321})}) == (body, base)
    # A level crossed, a task switched off or exhausted, a new snapshot: the tag moves.
    few = shown({**full, 1: TaskOverride(remaining={"cash": 99, "coupon": 500})})[1]
    assert few != base
    assert shown({**full, 1: TaskOverride(remaining={"cash": 10, "coupon": 500})})[1] == few
    last = shown({**full, 1: TaskOverride(remaining={"cash": 9, "coupon": 500})})[1]
    off = shown({**full, 1: TaskOverride(enabled=False)})[1]
    gone = shown({**full, 1: TaskOverride(remaining={"cash": 0, "coupon": 0})})[1]
    assert len({base, few, last, off}) == 4 and gone == off
    build_into(data, snaps)  # the same data again: seq 2
    again = Lookup(open_current(snaps))
    assert again.seq == lookup.seq + 1 and shown(full, again)[1] != base
    levels = [p["level"] for t in orjson.loads(shown({**full, 1: TaskOverride(remaining={"cash": 9})})[0])["tasks"]
              if t["task_id"] == 1 for p in t["prizes"]]
    assert levels == ["last", None]  # a prize the collector does not report: unknown, not empty


async def test_answers_say_their_version_and_levels_and_may_be_kept_a_poll(make_client: MakeClient,
                                                                           sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots, next_poll_ms=3000)
    resp = await client.get("/v1/nearby", params={"lat": "22.5329", "lng": "113.9305"})
    body = await resp.json()
    assert resp.status == 200 and body["answer_version"] == 2 and body["tasks"]
    # Without a collector nothing says what is left: the level is unknown, and no count is shown.
    assert all(set(p) == {"prize_type", "level"} and p["level"] is None for t in body["tasks"] for p in t["prizes"])
    assert resp.headers["Cache-Control"] == "public, max-age=3"
    again = await client.get("/v1/nearby", params={"lat": "22.5329", "lng": "113.9305"},
                             headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304 and again.headers["Cache-Control"] == "public, max-age=3"
    assert again.headers["ETag"] == resp.headers["ETag"] and again.headers["X-Next-Poll-Ms"] == "3000"


async def test_a_cell_is_answered_as_every_point_in_it_is(make_client: MakeClient, sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots)
    snap = open_current(sample_snapshots)
    rng = np.random.default_rng(8)
    for i in rng.choice(len(snap.cells), 40):
        lat, lng = (float(x) + rng.normal(0, 0.002) for x in snap.degrees(i))
        by_point = await client.get("/v1/nearby", params={"lat": f"{lat:.6f}", "lng": f"{lng:.6f}"})
        point_body = await by_point.json()
        by_cell = await client.get(f"/v1/cells/{point_body['center_cell']}")
        assert by_cell.status == 200 and by_cell.headers["ETag"] == by_point.headers["ETag"]
        assert await by_cell.json() == point_body
        cached = await client.get(f"/v1/cells/{point_body['center_cell']}", headers={"If-None-Match": by_point.headers["ETag"]})
        assert cached.status == 304


@pytest.mark.parametrize(("cell", "status", "field"), [
    ("abc", 400, "cell"), ("-5", 400, "cell"), ("1" * 20, 400, "cell"), ("12.5", 400, "cell"),
    ("1", 404, "cell"), (str(2**62), 404, "cell")])
async def test_what_is_no_cell_is_refused_with_the_error_shape(make_client: MakeClient, sample_snapshots: Path,
                                                               cell: str, status: int, field: str) -> None:
    client = await make_client(sample_snapshots)
    resp = await client.get(f"/v1/cells/{cell}")
    body = await resp.json()
    assert resp.status == status and body["error"]["status"] == status and body["error"]["field"] == field


@pytest.fixture
def rebuilt(tmp_path: Path) -> Path:
    """The sample built twice into one folder: its live snapshot is seq 2, on the same grid as seq 1."""
    for _ in range(2):
        build_into(SAMPLE, tmp_path / "rebuilt")
    return tmp_path / "rebuilt"


async def test_a_cell_named_with_another_grids_key_is_refused_and_the_key_outlives_a_snapshot(
        make_client: MakeClient, sample_snapshots: Path, rebuilt: Path) -> None:
    client = await make_client(sample_snapshots)
    grid = await (await client.get("/v1/grid")).json()
    cell = (await (await client.get("/v1/nearby", params={"lat": "22.5329", "lng": "113.9305"})).json())["center_cell"]
    named = await client.get(f"/v1/cells/{cell}", params={"grid": grid["key"]})
    assert named.status == 200
    for other in ("0" * 8, "x" * 64):
        resp = await client.get(f"/v1/cells/{cell}", params={"grid": other})
        body = await resp.json()
        assert (resp.status, body["error"]["code"], body["error"]["field"]) == (409, "grid_changed", "grid")
        assert resp.headers["Cache-Control"] == "no-store"  # an edge must not keep the refusal
    later = await (await (await make_client(rebuilt)).get("/v1/grid")).json()
    assert (later["seq"], later["key"]) == (2, grid["key"]) and grid["seq"] == 1  # a new snapshot, the same grid


def _readme_cell_code() -> Any:
    """The client code the README shows, run as it is written."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "def cell_of(" in block)
    scope: dict[str, Any] = {}
    exec(code, scope)  # noqa: S102 - the README's own snippet, held to the service's cell_of
    return scope["cell_of"]


def _edge_points(grid: Grid, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Random points, the served band's edges, the antimeridian and, on a square grid, points a hair from
    row, band and column boundaries."""
    points = [(float(a), float(b)) for a, b in zip(rng.uniform(-85, 85, 3000), rng.uniform(-180, 180, 3000))]
    points += [(lat, lng) for lat in (-85.0, 85.0, 0.0, -0.0, 22.5) for lng in (-180.0, 180.0, -179.9999999, 179.9999999, 0.0)]
    if not isinstance(grid, H3Grid):
        height = grid.row_height_deg  # type: ignore[attr-defined]
        for row in rng.integers(0, grid.n_rows, 500).tolist():  # type: ignore[attr-defined]
            edge = row * height - 90.0
            if abs(edge) < 84.9:
                points += [(np.nextafter(edge, -90.0), 113.9), (edge, 113.9), (np.nextafter(edge, 90.0), -179.99999)]
        lat = 40.0
        n = int(grid.band_cols[int((lat + 90.0) / height) // grid.band_rows])  # type: ignore[attr-defined]
        for col in rng.integers(0, n, 500).tolist():
            edge = col / n * 360.0 - 180.0
            points += [(lat, float(np.nextafter(edge, -180.0))), (lat, edge), (lat, float(np.nextafter(edge, 180.0)))]
    return [(float(a), float(b)) for a, b in points if -180.0 <= b <= 180.0]


@pytest.fixture(params=[(), ("--grid", "h3", "--h3-res", "9")], ids=["square", "h3"])
def any_grid_snapshots(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The sample built on the default square grid, and on H3."""
    build_into(SAMPLE, tmp_path / "snaps", *request.param)
    return tmp_path / "snaps"


async def test_the_readme_client_computes_the_cells_the_service_does(make_client: MakeClient,
                                                                     any_grid_snapshots: Path) -> None:
    snaps = any_grid_snapshots
    client = await make_client(snaps)
    resp = await client.get("/v1/grid", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200 and resp.headers["Vary"] == "Accept-Encoding" and resp.headers["Content-Encoding"] == "gzip"
    published = orjson.loads(await resp.read())  # the client inflates it
    grid = open_current(snaps).grid
    assert published["kind"] == grid.params()["kind"]
    plain = await client.get("/v1/grid", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and orjson.loads(await plain.read()) == published
    assert (await client.get("/v1/grid", headers={"If-None-Match": resp.headers["ETag"]})).status == 304
    cell_of = _readme_cell_code()
    points = _edge_points(grid, np.random.default_rng(13))
    assert len(points) > 3000
    wrong = [(lat, lng) for lat, lng in points if cell_of(lat, lng, published) != grid.cell_of(lat, lng)]
    assert not wrong, wrong[:5]


def test_two_workers_give_one_etag_for_one_window(sample_snapshots: Path, tmp_path: Path) -> None:
    process = service(sample_snapshots, tmp_path / "var").start()
    try:
        process.wait_ready(workers=2)

        async def ask() -> tuple[set[str], set[int]]:
            # Fresh connections, so the kernel spreads them over both workers' sockets.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                tags, workers = set(), set()
                for _ in range(60):
                    async with session.get(f"{process.url}/v1/nearby?lat=22.5329&lng=113.9305") as resp:
                        tags.add(resp.headers["ETag"])
                    async with session.get(f"{process.url}/healthz") as resp:
                        workers.add((await resp.json())["worker_id"])
                return tags, workers

        tags, workers = asyncio.run(ask())
        assert workers == {0, 1} and len(tags) == 1
    finally:
        process.stop()
