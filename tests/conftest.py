"""Shared fixtures: real data folders, snapshots built by the real builder, real MariaDB, real servers."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from geo_service.app import create_app
from geo_service.config import load_settings
from geo_service.ledger.plans import LEDGER_TABLES
from geo_service.ledger.records import RECORD_TABLES
from geo_service.settings import ServiceSettings
from loaders.cli import main as snapshot_cli
from tests.support.parts import missing
from tests.support.redis_nodes import REDIS_SERVER, RedisDeployment, redis_available, start_redis

LEDGER_KINDS = ["sqlite", "mysql", "redis", "redis+cluster"]

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
        missing(f"MariaDB at 127.0.0.1:3306 ({exc})", "start it to run this test")
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def synth_100k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic data folder of 10^5 POIs with one task disabled and one not started yet."""
    from loaders.synth import write_synthetic
    from tests.support.builders import set_csv_field

    folder = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic(folder, 100_000, seed=42, progress=lambda stage, n: None)
    set_csv_field(folder / "tasks.csv", 3, "enabled", "0")
    set_csv_field(folder / "tasks.csv", 12, "starts_at", "2099-01-01T00:00:00Z")
    set_csv_field(folder / "tasks.csv", 12, "ends_at", "2099-02-01T00:00:00Z")
    return folder


def _redis(cluster: bool) -> Iterator[RedisDeployment]:
    if not redis_available():
        missing(REDIS_SERVER, "install Debian's redis-server to run this test")
    deployment = start_redis(cluster=cluster)
    try:
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(scope="session")
def redis_single() -> Iterator[RedisDeployment]:
    """A throwaway redis-server on a free loopback port (AOF, fsync always), for the whole session."""
    yield from _redis(cluster=False)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisDeployment]:
    """A throwaway cluster of 3 masters on free loopback ports, for the whole session."""
    yield from _redis(cluster=True)


def fresh_ledger(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the DSN of an empty ledger of this kind: a SQLite file, the real MariaDB with its ledger tables
    dropped, or a throwaway Redis node or cluster flushed."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    if kind == "mysql":
        drop_ledger_tables(request.getfixturevalue("mysql_conn"))
        return MYSQL_DSN
    deployment: RedisDeployment = request.getfixturevalue("redis_cluster" if kind == "redis+cluster" else "redis_single")
    deployment.flush()
    return deployment.dsn


def drop_ledger_tables(conn: pymysql.connections.Connection) -> None:
    with conn.cursor() as cur:
        for table in (*LEDGER_TABLES, *RECORD_TABLES):
            cur.execute(f"DROP TABLE IF EXISTS {table}")
    conn.commit()


@pytest.fixture(params=["sqlite", "mysql"])
def ledger_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty SQL ledger: what SQL-reading assertions run against."""
    return fresh_ledger(request.param, request, tmp_path)


@pytest.fixture(params=LEDGER_KINDS)
def any_ledger_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ledger of every kind: SQLite, MariaDB, one Redis node, a 3-master Redis Cluster."""
    return fresh_ledger(request.param, request, tmp_path)


def build_into(source: Path, out: Path, *extra: str) -> None:
    """Build and publish a snapshot with the real CLI, asserting it succeeded."""
    assert snapshot_cli(["build", "--source", str(source), "--out", str(out), "--quiet", *extra]) == 0


MakeClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def make_settings(**overrides: Any) -> ServiceSettings:
    return load_settings(ServiceSettings, "GEODROP_SERVICE_", None, {}, overrides)


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[MakeClient]:
    """Start create_app(settings) on a loopback port (ledger in tmp_path); every client is closed at the end."""
    clients: list[TestClient[Any, Any]] = []

    async def start(snapshots: Path, **overrides: Any) -> TestClient[Any, Any]:
        overrides.setdefault("data_dir", tmp_path / f"var{len(clients)}")
        return await _serve(create_app(make_settings(snapshots=snapshots, **overrides)), clients)

    yield start
    for client in clients:
        await _close(client)


@pytest.fixture
async def make_collector() -> AsyncIterator[Callable[..., Awaitable[TestClient[Any, Any]]]]:
    """Start the collector's create_app on a loopback port; closed at the end."""
    from collector.app import create_app as create_collector
    from collector.settings import CollectorSettings

    clients: list[TestClient[Any, Any]] = []

    async def start(snapshots: Path, ledger: str, **overrides: Any) -> TestClient[Any, Any]:
        settings = load_settings(CollectorSettings, "GEODROP_COLLECTOR_", None, {},
                                 {"snapshots": snapshots, "ledger": ledger, **overrides})
        return await _serve(create_collector(settings), clients)

    yield start
    for client in clients:
        await _close(client)


async def _serve(app: Any, clients: list[TestClient[Any, Any]]) -> TestClient[Any, Any]:
    """Start an app on a loopback port and remember its client for closing."""
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    clients.append(client)
    return client


async def _close(client: TestClient[Any, Any]) -> None:
    """Close a test server; if it hangs, show every task's stack instead of hanging the suite."""
    import asyncio

    try:
        await asyncio.wait_for(client.close(), timeout=60)
    except TimeoutError:
        for task in asyncio.all_tasks():
            task.print_stack()
        raise


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests last: pytest-playwright's session-wide sync API keeps an event loop running in
    the main thread from its first test to the end, where no asyncio test could start its own."""
    items.sort(key=lambda item: "page" in getattr(item, "fixturenames", ()))


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("GEODROP_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's browser is Debian's Chromium (no browser can be downloaded here)."""
    if not Path(CHROMIUM).exists():
        missing(CHROMIUM, "install Debian's chromium to run the browser tests")
    # Without the background-networking flags Chromium keeps dialling hosts this closed network refuses.
    flags = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--enable-unsafe-swiftshader"]
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": flags}
