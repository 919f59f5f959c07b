"""The HTTP error contract over every error path: status, JSON content type, and the three keys."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

import geo_service.handlers
from geo_service.app import create_app
from geo_service.nearby import encode_answer
from tests.conftest import SAMPLE, MakeClient, build_into, make_settings
from tests.support.processes import collector

N = "/v1/nearby"
CASES: list[tuple[str, str, str, int, str, str | None]] = [
    ("missing lat", "GET", f"{N}?lng=114", 400, "missing_param", "lat"),
    ("missing both", "GET", N, 400, "missing_param", "lat"),
    ("empty lat", "GET", f"{N}?lat=&lng=114", 400, "invalid_param", "lat"),
    ("non-numeric lng", "GET", f"{N}?lat=22.5&lng=east", 400, "invalid_param", "lng"),
    ("NaN", "GET", f"{N}?lat=nan&lng=114", 400, "invalid_param", "lat"),
    ("infinite", "GET", f"{N}?lat=22.5&lng=inf", 400, "invalid_param", "lng"),
    ("overflow", "GET", f"{N}?lat=1e999&lng=114", 400, "invalid_param", "lat"),
    ("lat out of range", "GET", f"{N}?lat=91&lng=114", 400, "invalid_param", "lat"),
    ("lng out of range", "GET", f"{N}?lat=22.5&lng=-180.5", 400, "invalid_param", "lng"),
    ("polar band", "GET", f"{N}?lat=86&lng=114", 400, "invalid_param", "lat"),
    ("repeated lat", "GET", f"{N}?lat=22.5&lat=22.6&lng=114", 400, "invalid_param", "lat"),
    ("long query", "GET", f"{N}?lat=22.5&lng=114&pad=" + "x" * 5000, 414, "query_too_long", None),
    ("POST nearby", "POST", f"{N}?lat=22.5&lng=114", 405, "method_not_allowed", None),
    ("DELETE nearby", "DELETE", f"{N}?lat=22.5&lng=114", 405, "method_not_allowed", None),
    ("unknown path", "GET", "/v2/nearby?lat=1&lng=1", 404, "not_found", None),
    ("path below a route", "GET", f"{N}/extra?lat=1&lng=1", 404, "not_found", None),
    ("newline in the path", "GET", "/v1/a%0Ab", 404, "not_found", None),
    ("GET reload", "GET", "/v1/admin/reload", 405, "method_not_allowed", None),
    ("reload without token", "POST", "/v1/admin/reload", 401, "invalid_token", None),
    ("cell of a Unicode digit", "GET", "/v1/cells/1%C2%B2", 400, "invalid_param", "cell"),
    ("cell past int64", "GET", "/v1/cells/" + "9" * 20, 400, "invalid_param", "cell"),
]


def assert_error_shape(status: int, headers: Any, body: dict[str, Any], code: str) -> None:
    assert headers["Content-Type"].startswith("application/json")
    error = body["error"]
    assert {"status", "code", "message"} <= set(error)
    assert error["status"] == status
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


@pytest.mark.parametrize(("method", "url", "status", "code", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_every_error_has_the_one_json_shape(
    make_client: MakeClient, sample_snapshots: Path, method: str, url: str, status: int, code: str, field: str | None
) -> None:
    client = await make_client(sample_snapshots, admin_token="s3cret")
    resp = await client.request(method, url)
    assert resp.status == status
    body = await resp.json()
    assert_error_shape(status, resp.headers, body, code)
    assert body["error"].get("field") == field


async def test_other_methods_name_the_allowed_one_and_strays_are_counted(
        make_client: MakeClient, sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots)
    head = await client.head(f"{N}?lat=22.5&lng=114")
    assert head.status == 405 and head.headers["Allow"] == "GET"
    post = await client.post("/healthz")
    assert post.status == 405 and post.headers["Allow"] == "GET"
    assert (await client.get("/nowhere")).status == 404
    text = await (await client.get("/metrics")).text()
    counted = {line.rsplit(" ", 1)[0].split("route=")[1]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line.startswith("geodrop_http_requests_total")}
    assert counted['"unmatched",status="405"}'] == 2
    assert counted['"unmatched",status="404"}'] == 1


async def test_unavailable_snapshot_has_the_shape(make_client: MakeClient, tmp_path: Path) -> None:
    client = await make_client(tmp_path)
    resp = await client.get(f"{N}?lat=22.5&lng=114")
    assert_error_shape(503, resp.headers, await resp.json(), "snapshot_unavailable")


async def test_an_unhandled_exception_is_a_generic_500_that_leaks_nothing(
        sample_snapshots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(make_settings(snapshots=sample_snapshots))
    calls = []

    def boom_once(*args: Any) -> tuple[bytes, int]:  # the first answer fails deep inside the handler
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("secret internals")
        return encode_answer(*args)

    monkeypatch.setattr(geo_service.handlers, "encode_answer", boom_once)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get(f"{N}?lat=22.5329&lng=113.9305")
        body = await resp.json()
        assert_error_shape(500, resp.headers, body, "internal_error")
        assert "secret" not in str(body)
        assert (await client.get(f"{N}?lat=22.5329&lng=113.9305")).status == 200  # still serving


COLLECTOR_CASES: list[tuple[str, str, str, int, str]] = [
    ("bad district code", "GET", "/v1/districts/44030x", 400, "invalid_param"),
    # str.isdigit() takes "²" and other Unicode digits, which int() refuses: these were 500s.
    ("district code of a Unicode digit", "GET", "/v1/districts/44030%C2%B2", 400, "invalid_param"),
    ("task id of a Unicode digit", "GET", "/v1/tasks/%C2%B2/pois", 400, "invalid_param"),
    ("task id past int64", "GET", "/v1/tasks/" + "9" * 19 + "/pois", 400, "invalid_param"),
    ("limit of a Unicode digit", "GET", "/v1/tasks/44030501/pois?limit=%C2%B2", 400, "invalid_param"),
    ("empty limit", "GET", "/v1/tasks/44030501/pois?limit=", 400, "invalid_param"),
    ("unknown district", "GET", "/v1/districts/999999", 404, "not_found"),
    ("previews without district", "GET", "/v1/previews", 400, "missing_param"),
    ("previews repeated district", "GET", "/v1/previews?district=440305&district=440306", 400, "invalid_param"),
    ("unknown path", "GET", "/v1/district", 404, "not_found"),
    ("newline in a static name", "GET", "/static/a%0Ab", 404, "not_found"),
    ("wrong method", "POST", "/v1/tasks/status", 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("method", "url", "status", "code"), [c[1:] for c in COLLECTOR_CASES],
                         ids=[c[0] for c in COLLECTOR_CASES])
async def test_every_collector_error_has_the_one_json_shape(
    make_collector: Any, sample_snapshots: Path, tmp_path: Path, method: str, url: str, status: int, code: str
) -> None:
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}")
    resp = await client.request(method, url)
    assert resp.status == status
    assert_error_shape(status, resp.headers, await resp.json(), code)


async def test_collector_openapi_describes_every_route(make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    from collector.dashboard import ROUTES as DASHBOARD
    from collector.deliveries import ROUTES as DELIVERIES
    from collector.handlers import ROUTES

    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}")
    spec = await (await client.get("/openapi.json")).json()
    for method, path, _ in ROUTES + DASHBOARD + DELIVERIES:
        assert method.lower() in spec["paths"][path.replace("{name:.+}", "{name}")], path
    assert (await client.get("/v1/previews?district=440305")).status == 200
    health = await (await client.get("/healthz")).json()
    assert health["tick"]["interval_s"] == 1.0 and health["view"]["seq"] == 1


@pytest.mark.parametrize("url", ["/v1/admin/tasks/%C2%B2", "/v1/admin/prizes/%C2%B2/cash", "/v1/admin/tasks/" + "9" * 19])
async def test_admin_routes_refuse_ids_that_are_no_ascii_number_in_the_one_shape(
    make_collector: Any, sample_snapshots: Path, tmp_path: Path, url: str
) -> None:
    token = "admin-" + "x" * 32
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}", admin_token=token)
    resp = await client.post(url, json={"enabled": False, "quota": 1}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 400
    body = await resp.json()
    assert_error_shape(400, resp.headers, body, "invalid_param")
    assert body["error"]["field"] == "task_id"


def test_a_request_line_past_aiohttps_default_gets_414_in_the_shape_from_the_running_collector(tmp_path: Path) -> None:
    # aiohttp answers a line over 8,190 bytes with a plain-text 400 before any handler: the collector reads lines up
    # to MAX_LINE_BYTES, so its guard answers a long query 414 in the one shape (Schemathesis found the plain 400).
    build_into(SAMPLE, tmp_path / "snaps")
    col = collector(tmp_path / "snaps", f"sqlite:///{tmp_path / 'l.sqlite3'}").start()
    try:
        col.wait_ready()
        request = urllib.request.Request(f"{col.url}/v1/probe?lat=1&lng=1&pad=" + "x" * 20_000)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 414
        assert_error_shape(414, refused.value.headers, orjson.loads(refused.value.read()), "query_too_long")
    finally:
        col.stop()
