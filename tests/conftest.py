"""Shared fixtures: real data folders, real snapshots built by the real builder, real MariaDB."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from loaders.cli import main as snapshot_cli

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
MYSQL_DSN = os.environ.get("GEODROP_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")


@pytest.fixture
def sample_data(tmp_path: Path) -> Path:
    """A private copy of data/sample that a test may edit."""
    folder = tmp_path / "sample"
    shutil.copytree(SAMPLE, folder)
    return folder


@pytest.fixture(scope="session")
def sample_snapshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshots folder holding one build of data/sample (read-only for tests)."""
    out = tmp_path_factory.mktemp("snapshots")
    assert snapshot_cli(["build", "--source", str(SAMPLE), "--out", str(out), "--quiet"]) == 0
    assert (out / "CURRENT").read_text().strip() == "1"
    return out


@pytest.fixture
def mysql_conn() -> Iterator[pymysql.connections.Connection]:
    """A connection to the real MariaDB; under CI a missing server fails the test, elsewhere skips it."""
    try:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database="test", connect_timeout=3)
    except pymysql.err.MySQLError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"MariaDB at 127.0.0.1:3306 is required under CI: {exc}")
        pytest.skip(f"MariaDB at 127.0.0.1:3306 not reachable ({exc}); start it to run this test")
    try:
        yield conn
    finally:
        conn.close()
