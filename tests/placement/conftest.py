"""The console's test parts: drafts on SQLite and on the real MariaDB (a database of its own), operators, and a
task body to save."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from aiohttp.test_utils import TestClient

from geo_service.config import load_settings
from placement.app import create_app
from placement.auth import add_operator
from placement.settings import ConsoleSettings
from tests.conftest import SAMPLE, _close, _serve
from tests.support.parts import missing

CONSOLE_DB = "geodrop_console_test"
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789", "vic": "vic-token-0123456789"}
ROLES = {"alice": "admin", "bob": "admin", "vic": "viewer"}
DISTRICT = 440305  # 南山区: its POIs lie around (22.53, 113.93)


def fresh_mysql_draft() -> str:
    """An empty database of the console's own on the real MariaDB (the `test` database's source tables belong to
    the loaders' tests)."""
    try:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3)
    except pymysql.err.MySQLError as exc:
        missing(f"MariaDB at 127.0.0.1:3306 ({exc})", "start it to run this test")
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {CONSOLE_DB}")
        cur.execute(f"CREATE DATABASE {CONSOLE_DB} CHARACTER SET utf8mb4")
    conn.close()
    return f"mysql://root@127.0.0.1:3306/{CONSOLE_DB}"


def operators_file(folder: Path) -> Path:
    path = folder / "operators.json"
    for name, token in TOKENS.items():
        os.environ.pop("GEODROP_CONSOLE_NEW_TOKEN", None)
        add_operator(path, name, ROLES[name], token)
    return path


def draft_dsn(kind: str, folder: Path) -> str:
    return fresh_mysql_draft() if kind == "mysql" else f"sqlite:///{folder / 'draft.sqlite3'}"


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def points(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """n points inside 南山区, away from the sample's exclusion zones."""
    rng = random.Random(seed)
    return [{"lat": round(22.52 + rng.random() * 0.02, 6), "lng": round(113.92 + rng.random() * 0.02, 6)} for _ in range(n)]


def task_body(version: int = 0, name: str = "walk", pts: list[dict[str, Any]] | None = None, **task: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": version,
        "task": {"name": name, "district_code": DISTRICT, "starts_at": "2026-01-01T00:00:00+08:00",
                 "ends_at": "2027-12-31T00:00:00+08:00", "enabled": True, **task},
        "prizes": [{"prize_type": "cash", "quota": 100, "weight": 1, "rate_per_s": None},
                   {"prize_type": "coupon", "quota": 500, "weight": 3, "rate_per_s": 5}],
    }
    if pts is not None:
        body["points"] = pts
    return body


@pytest.fixture(params=["sqlite", "mysql"])
async def console(request: pytest.FixtureRequest, tmp_path: Path,
                  sample_snapshots: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """The console on a draft filled from the sample (SQLite, then MariaDB), publishing into a copy of the sample's
    snapshots; operators alice and bob (admins) and vic (viewer)."""
    import shutil

    snaps = tmp_path / "snaps"
    shutil.copytree(sample_snapshots, snaps)
    settings = load_settings(ConsoleSettings, "GEODROP_CONSOLE_", None, {}, {
        "draft": draft_dsn(request.param, tmp_path), "seed": str(SAMPLE), "snapshots": snaps,
        "operators": operators_file(tmp_path), "work_dir": tmp_path / "work"})
    clients: list[TestClient[Any, Any]] = []
    client = await _serve(create_app(settings), clients)
    yield client
    await _close(client)


@pytest.fixture
def mysql_draft() -> Iterator[str]:
    yield fresh_mysql_draft()
