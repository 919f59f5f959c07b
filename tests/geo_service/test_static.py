"""Pages and static files (geo_service/web/static.py) as both services serve them: content-hashed names kept a year,
plain names revalidated, references rewritten to hashed names, gzip, the page's security headers, the error shape."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from geo_service.play import STATIC
from geo_service.web.static import CSP, IMMUTABLE, SHARED, hashed_name, read_assets
from tests.conftest import MakeClient
from tests.test_error_shape import assert_error_shape


def test_a_hash_goes_before_the_first_suffix() -> None:
    assert hashed_name("vendor/leaflet/leaflet.css", "abc") == "vendor/leaflet/leaflet.abc.css"
    assert hashed_name("geodrop-client.d.ts", "abc") == "geodrop-client.abc.d.ts"
    assert hashed_name("LICENSE", "abc") == "LICENSE.abc"


def test_references_are_rewritten_before_the_file_that_holds_them_is_hashed(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.js").write_text("export const a = 1;\n")
    (tmp_path / "b.js").write_text('import { a } from "/static/lib/a.js"; // and /static/missing.js stays\n')
    (tmp_path / "page.html").write_text('<script type="module" src="/static/b.js"></script>')
    assets = read_assets((tmp_path,))
    a, b, page = assets["lib/a.js"], assets["b.js"], assets["page.html"]
    assert f'"/static/{a.hashed_name}"' in b.body.decode() and "/static/missing.js" in b.body.decode()
    assert f'"/static/{b.hashed_name}"' in page.body.decode()
    assert b.hashed_name == f"b.{hashlib.sha256(b.body).hexdigest()[:12]}.js"  # the hash of what is served
    (tmp_path / "lib" / "a.js").write_text("export const a = 2;\n")
    again = read_assets((tmp_path,))
    assert again["b.js"].hashed_name != b.hashed_name and again["page.html"].body != page.body  # renamed down the line


def test_files_that_refer_to_each_other_in_a_circle_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.js").write_text('import "/static/b.js";')
    (tmp_path / "b.js").write_text('import "/static/a.js";')
    with pytest.raises(ValueError, match="circle"):
        read_assets((tmp_path,))


async def test_the_player_page_and_its_files_are_cached_by_name_and_carry_the_policy(
        make_client: MakeClient, sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots)
    page = await client.get("/play")
    assert page.status == 200 and page.headers["Cache-Control"] == "no-cache"
    assert page.headers["Content-Type"].startswith("text/html") and page.headers["Content-Security-Policy"] == CSP
    html = await page.text()
    names = re.findall(r'"/static/([^"]+)"', html)
    assert {re.sub(r"\.[0-9a-f]{12}\.", ".", n) for n in names} == {
        "vendor/leaflet/leaflet.css", "play.css", "geodrop-client.js", "vendor/leaflet/leaflet.js", "play.js"}
    assert "<script>" not in html and " style=" not in html  # nothing inline: the policy allows none
    for name in names:
        resp = await client.get(f"/static/{name}")
        assert resp.status == 200 and resp.headers["Cache-Control"] == IMMUTABLE, name
        assert resp.headers["Content-Security-Policy"] == CSP and resp.headers["X-Content-Type-Options"] == "nosniff"
    again = await client.get("/play", headers={"If-None-Match": page.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""


async def test_a_plain_name_is_revalidated_and_text_is_gzipped_when_asked(make_client: MakeClient,
                                                                          sample_snapshots: Path) -> None:
    client = await make_client(sample_snapshots)
    plain = await client.get("/static/geodrop-client.js", headers={"Accept-Encoding": "identity"})
    body = await plain.read()
    assert plain.headers["Cache-Control"] == "no-cache" and plain.headers["Content-Type"].startswith("text/javascript")
    assert body.startswith(b"// @ts-self-types=\"/static/geodrop-client.") and b"export const VERSION" in body
    assert plain.headers["X-TypeScript-Types"].startswith("/static/geodrop-client.")
    assert (await client.get("/static/geodrop-client.js", headers={"If-None-Match": plain.headers["ETag"]})).status == 304
    packed = await client.get("/static/geodrop-client.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert packed.headers["Content-Encoding"] == "gzip" and packed.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(await packed.read()) == body
    types = await client.get(plain.headers["X-TypeScript-Types"])
    assert types.status == 200 and "export declare class GeodropClient" in await types.text()


@pytest.mark.parametrize("name", ["nowhere.js", "../settings.py", "..%2F..%2Fpyproject.toml", "vendor/leaflet",
                                  "play.000000000000.js"])
async def test_what_is_no_file_is_a_404_in_the_error_shape(make_client: MakeClient, sample_snapshots: Path, name: str) -> None:
    client = await make_client(sample_snapshots)
    resp = await client.get(f"/static/{name}")
    assert_error_shape(404, resp.headers, await resp.json(), "not_found")


async def test_both_services_serve_the_vendored_libraries_from_one_place(
        make_client: MakeClient, make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    service = await make_client(sample_snapshots)
    collector = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}")
    leaflet = (SHARED / "vendor" / "leaflet" / "leaflet.js").read_bytes()
    for client in (service, collector):
        resp = await client.get("/static/vendor/leaflet/leaflet.js")
        assert await resp.read() == leaflet
    dashboard = await (await collector.get("/")).text()
    assert re.search(r'"/static/vendor/leaflet/leaflet\.[0-9a-f]{12}\.js"', dashboard)
    assert not (STATIC / "vendor").exists() and not (Path(str(STATIC)).parents[1] / "collector" / "static" / "vendor").exists()
