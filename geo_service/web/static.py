"""Pages and static files both services serve, and the headers that keep a page safe.

Every file of a StaticFiles' folders is served under /static/ at two names: its own (`play.js`) and its
content-hashed one (`play.<first 12 hex digits of its SHA-256>.js`). A hashed name never changes meaning, so it is
served `public, max-age=31536000, immutable`: a phone keeps it until the file changes, and then its name does. The
plain name is served `no-cache` with the same ETag (a revalidation is a 304), for what cannot know the hash: a
stylesheet's relative url(), an import written by hand. Pages, scripts and stylesheets name the files they load as
`/static/<plain name>`; those references are rewritten to hashed names as the files are read, before the file that
holds them is hashed itself, so a change to any file renames every file that leads to it. Text is gzipped once.
The files (package data, a few hundred KB) are read on first use, in a thread.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from aiohttp import web

from geo_service.web.errors import Handler, NotFound
from geo_service.web.responses import etag_matches

# No inline script or style, nothing from another origin; connect-src 'self' covers fetch and event streams.
# Leaflet and uPlot position their nodes through element.style, which CSP leaves alone.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                  "X-Frame-Options": "DENY", "Cross-Origin-Opener-Policy": "same-origin"}
# The vendored libraries (vendor/README.md), served by both services from here.
SHARED = Path(str(resources.files("geo_service.web").joinpath("static")))
IMMUTABLE = "public, max-age=31536000, immutable"
HASH_HEX = 12
_REFERENCE = re.compile(r"/static/([A-Za-z0-9_./-]+)")
_REWRITTEN = (".html", ".js", ".css")  # the files whose /static/ references are rewritten
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".ts": "application/typescript", ".md": "text/markdown", ".json": "application/json", ".svg": "image/svg+xml"}
_TEXT = ("text/", "application/typescript", "application/json", "image/svg+xml")


@dataclass(frozen=True, slots=True)
class Asset:
    """One file as served: its body (references rewritten), gzipped when that pays, and its hashed name."""

    body: bytes
    gzipped: bytes | None
    content_type: str
    hashed_name: str
    etag: str
    types_url: str = ""  # a script's declarations (X.d.ts beside X.js), for TypeScript tooling that reads the header


def hashed_name(name: str, digest: str) -> str:
    """Return `name` with the hash put before its first suffix: vendor/leaflet/leaflet.css -> ...leaflet.<hash>.css."""
    folder, _, base = name.rpartition("/")
    stem, dot, suffixes = base.partition(".")
    return f"{folder}{'/' if folder else ''}{stem}.{digest}{dot}{suffixes}"


def _content_type(name: str) -> str:
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def read_assets(folders: tuple[Path, ...]) -> dict[str, Asset]:
    """Read every file of the folders, rewrite references, hash; return the assets by their plain names."""
    raw: dict[str, bytes] = {}
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            name = path.relative_to(folder).as_posix()
            if name in raw:
                raise ValueError(f"two static files are named {name!r}")
            raw[name] = path.read_bytes()
    assets: dict[str, Asset] = {}

    def resolve(name: str, seen: tuple[str, ...]) -> Asset:
        if name in seen:
            raise ValueError(f"static files refer to each other in a circle: {' -> '.join((*seen, name))}")
        if name not in assets:
            body = raw[name]
            if name.endswith(_REWRITTEN):
                def hashed(match: re.Match[str]) -> str:
                    target = match[1]
                    return f"/static/{resolve(target, (*seen, name)).hashed_name}" if target in raw else match[0]
                body = _REFERENCE.sub(hashed, body.decode()).encode()
            digest = hashlib.sha256(body).hexdigest()[:HASH_HEX]
            kind = _content_type(name)
            packed = gzip.compress(body, 9, mtime=0) if kind.startswith(_TEXT) else None
            assets[name] = Asset(body, packed if packed is not None and len(packed) < len(body) else None, kind,
                                 hashed_name(name, digest), f'W/"{digest}"')
        return assets[name]

    for name in raw:
        resolve(name, ())
    return {name: replace(a, types_url=f"/static/{assets[types].hashed_name}")
            if name.endswith(".js") and (types := name[:-3] + ".d.ts") in assets else a for name, a in assets.items()}


class StaticFiles:
    """The files of some folders under /static/{name}, and pages made of them; read on first use."""

    def __init__(self, *folders: Path) -> None:
        self.folders = folders
        self._by_url: Mapping[str, tuple[Asset, bool]] | None = None  # plain or hashed name -> (asset, immutable)
        self._by_name: Mapping[str, Asset] = {}

    async def _files(self) -> Mapping[str, tuple[Asset, bool]]:
        if self._by_url is None:  # two first requests may both read: the same files, the same result
            assets = await asyncio.to_thread(read_assets, self.folders)
            self._by_name = assets
            self._by_url = {**{name: (a, False) for name, a in assets.items()},
                            **{a.hashed_name: (a, True) for a in assets.values()}}
        return self._by_url

    async def url(self, name: str) -> str:
        """Return the hashed URL of a file, by its plain name."""
        await self._files()
        return f"/static/{self._by_name[name].hashed_name}"

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """GET /static/{name}: a file at its hashed name (immutable) or its plain name (revalidated)."""
        found = (await self._files()).get(request.match_info["name"])
        if found is None:
            raise NotFound(f"no file {request.match_info['name'][:200]!r}")
        asset, immutable = found
        return _answer(request, asset, IMMUTABLE if immutable else "no-cache")

    def page(self, name: str) -> Handler:
        """Return a handler answering with the file `name` (a page: references hashed, no-cache, ETag)."""
        async def page(request: web.Request) -> web.StreamResponse:
            await self._files()
            return _answer(request, self._by_name[name], "no-cache")

        return page


def _answer(request: web.Request, asset: Asset, cache: str) -> web.Response:
    headers = {**SECURE_HEADERS, "Cache-Control": cache, "ETag": asset.etag}
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
    if asset.types_url:
        headers["X-TypeScript-Types"] = asset.types_url
    if etag_matches(request, asset.etag):
        return web.Response(status=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        body, headers["Content-Encoding"] = asset.gzipped, "gzip"
    return web.Response(body=body, headers={**headers, "Content-Type": _with_charset(asset.content_type)})


def _with_charset(kind: str) -> str:
    return f"{kind}; charset=utf-8" if kind.startswith(_TEXT) and kind != "image/svg+xml" else kind
