"""The player's side the service serves: the player page (GET /play) and, under /static/, its files, the reference
client (geodrop-client.js and its .d.ts) and the vendored libraries (README: "The reference client")."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from geo_service.web.static import SHARED, StaticFiles

STATIC = Path(str(resources.files("geo_service").joinpath("static")))
FILES = StaticFiles(STATIC, SHARED)
play_page = FILES.page("play.html")
static_file = FILES.serve
