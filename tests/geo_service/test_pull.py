"""Snapshots shipped from an origin: nginx serving a folder, and an S3 API (moto's server) on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from geo_service.keys import puller_key
from geo_service.snapshot.folder import current_seq
from geo_service.snapshot.format import open_snapshot
from geo_service.snapshot.origin import Origin, open_origin, publish
from geo_service.snapshot.pull import Puller
from loaders.cli import main as snapshot_cli
from tests.conftest import MakeClient, build_into
from tests.support.builders import set_csv_field, write_claims_data
from tests.support.nginx import Nginx, nginx_available, origin_server
from tests.support.parts import missing
from tests.support.s3 import CREDENTIALS, S3Server


@dataclass
class World:
    """An origin of one kind: where publish writes, where hosts pull from, and how to take it down."""

    kind: str
    publish_to: str
    pull_from: str
    endpoint: str
    server: Nginx | S3Server | None

    def origin(self, url: str) -> Origin:
        return open_origin(url, self.endpoint)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def start(self) -> None:
        if self.server is not None:
            self.server.start()


@pytest.fixture(params=["http", "s3"])
def world(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    if request.param == "http":
        if not nginx_available():
            missing("nginx", "install Debian's nginx-light to run this test")
        folder = tmp_path / "origin"
        folder.mkdir()
        server = origin_server(folder).start()
        yield World("http", str(folder), server.url, "", server)
        server.close()
        return
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    s3 = S3Server("geodrop").start()
    yield World("s3", "s3://geodrop/snaps", "s3://geodrop/snaps", s3.endpoint, s3)
    s3.stop()


@pytest.fixture
def builds(tmp_path: Path) -> Path:
    """A build host's snapshots folder holding seqs 1, 2 and 3 (task 1 renamed in each)."""
    data, out = tmp_path / "data", tmp_path / "build"
    write_claims_data(data, {"cash": 5}, pois=3)
    for seq in (1, 2, 3):
        set_csv_field(data / "tasks.csv", 2, "name", f"edition {seq}")
        build_into(data, out)
    return out


def publish_cli(world: World, builds: Path, seq: int) -> None:
    args = ["publish", "--snapshots", str(builds), "--to", world.publish_to, "--seq", str(seq)]
    assert snapshot_cli([*args, "--endpoint", world.endpoint] if world.endpoint else args) == 0


async def served_seq(client: Any) -> int | None:
    resp = await client.get("/v1/nearby?lat=22.5329&lng=113.9305")
    return int((await resp.json())["seq"]) if resp.status == 200 else None


async def until(predicate: Any, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def host(make_client: MakeClient, world: World, tmp_path: Path) -> Any:
    """A service host with an empty snapshots folder, pulling from the world's origin."""
    return await make_client(tmp_path / "host", origin=world.pull_from, origin_endpoint=world.endpoint,
                             origin_poll_s=0.1)


async def test_a_published_snapshot_is_pulled_checked_and_swapped_in(
        make_client: MakeClient, world: World, builds: Path, tmp_path: Path) -> None:
    client = await host(make_client, world, tmp_path)
    assert await served_seq(client) is None  # nothing published yet: 503
    await asyncio.to_thread(publish_cli, world, builds, 1)
    await until(lambda: _serves(client, 1))
    pulled = open_snapshot(tmp_path / "host" / "1", verify=True)
    assert pulled.manifest == open_snapshot(builds / "1").manifest
    origin = (await (await client.get("/healthz")).json())["origin"]
    assert origin["origin_seq"] == 1 and origin["local_seq"] == 1 and origin["pulls"] == 1
    assert origin["last_pull_bytes"] == sum(f["bytes"] for f in pulled.manifest["files"].values())
    metrics = await (await client.get("/metrics")).text()
    assert any(line.startswith("geodrop_origin_seq{") and line.endswith(" 1") for line in metrics.splitlines())


async def _serves(client: Any, seq: int) -> bool:
    return await served_seq(client) == seq


async def test_a_corrupt_copy_at_the_origin_is_refused_and_the_live_one_stays(
        make_client: MakeClient, world: World, builds: Path, tmp_path: Path) -> None:
    client = await host(make_client, world, tmp_path)
    puller: Puller = client.app[puller_key]
    puller.refused_retry_s = 0.5
    await asyncio.to_thread(publish_cli, world, builds, 1)
    await until(lambda: _serves(client, 1))
    bad = tmp_path / "bad-cells.npy"
    good = (builds / "2" / "cells.npy").read_bytes()
    bad.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # one byte off, the size unchanged
    origin = world.origin(world.publish_to)
    manifest = open_snapshot(builds / "2").manifest
    for name in manifest["files"]:
        await origin.put(f"2/{name}", bad if name == "cells.npy" else builds / "2" / name)
    await origin.put("2/manifest.json", builds / "2" / "manifest.json")
    await origin.put("CURRENT", b"2\n")

    async def refused() -> bool:
        health = (await (await client.get("/healthz")).json())["origin"]
        return bool(health["refused"] >= 1 and "checksum" in (health["last_error"] or ""))

    await until(refused)
    assert await served_seq(client) == 1 and current_seq(tmp_path / "host") == 1
    assert not (tmp_path / "host" / "2").exists()
    await origin.put("2/cells.npy", builds / "2" / "cells.npy")  # the origin is fixed: the next try takes it
    await until(lambda: _serves(client, 2))
    await origin.close()


async def test_an_upload_cut_before_its_current_moved_is_never_pulled(
        make_client: MakeClient, world: World, builds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await host(make_client, world, tmp_path)
    await asyncio.to_thread(publish_cli, world, builds, 1)
    await until(lambda: _serves(client, 1))
    origin = world.origin(world.publish_to)
    for name in open_snapshot(builds / "2").manifest["files"]:  # every file, even the manifest, but not CURRENT
        await origin.put(f"2/{name}", builds / "2" / name)
    await origin.put("2/manifest.json", builds / "2" / "manifest.json")
    await origin.close()
    # The host looks at the origin's CURRENT again and again after the upload, and stays where it is: counted at
    # the host's own reader of the origin, since a sleep alone passes as well when no poll happened at all.
    reader: Origin = client.app[puller_key].origin
    looks: list[str] = []
    read = reader.read

    async def counted(name: str) -> bytes | None:
        looks.append(name)
        return await read(name)

    monkeypatch.setattr(reader, "read", counted)
    for _ in range(300):  # bounded: 15 s
        if looks.count("CURRENT") >= 5:
            break
        await asyncio.sleep(0.05)
    assert looks.count("CURRENT") >= 5
    assert await served_seq(client) == 1
    assert sorted(p.name for p in (tmp_path / "host").iterdir() if not p.name.startswith(".")) == ["1", "CURRENT"]


async def test_an_origin_down_for_a_while_is_survived_and_caught_up_with(
        make_client: MakeClient, world: World, builds: Path, tmp_path: Path) -> None:
    client = await host(make_client, world, tmp_path)
    await asyncio.to_thread(publish_cli, world, builds, 1)
    await until(lambda: _serves(client, 1))
    world.stop()
    if world.kind == "http":  # the folder is still writable while its server is down
        await asyncio.to_thread(publish_cli, world, builds, 2)

    async def failing() -> bool:
        health = (await (await client.get("/healthz")).json())["origin"]
        return bool(health["failures"] >= 2 and health["last_error"])

    await until(failing)
    assert await served_seq(client) == 1  # serving all along
    world.start()
    if world.kind == "s3":  # moto comes back empty: publish again
        await asyncio.to_thread(publish_cli, world, builds, 2)
    await until(lambda: _serves(client, 2), seconds=40)  # the back-off doubles to at most 30 s
    assert (await (await client.get("/healthz")).json())["origin"]["last_error"] is None


async def test_a_rollback_at_the_origin_is_followed(
        make_client: MakeClient, world: World, builds: Path, tmp_path: Path) -> None:
    client = await host(make_client, world, tmp_path)
    for seq in (1, 2):
        await asyncio.to_thread(publish_cli, world, builds, seq)
        await until(lambda: _serves(client, seq))  # noqa: B023 - awaited inside the loop
    args = ["rollback", "--origin", world.publish_to] + (["--endpoint", world.endpoint] if world.endpoint else [])
    assert await asyncio.to_thread(snapshot_cli, args) == 0
    await until(lambda: _serves(client, 1))
    assert current_seq(tmp_path / "host") == 1


async def test_a_download_cut_short_resumes_where_it_stopped(world: World, builds: Path, tmp_path: Path) -> None:
    origin = world.origin(world.publish_to)
    manifest = open_snapshot(builds / "1").manifest
    await publish(origin, builds / "1", manifest)
    reader = world.origin(world.pull_from)
    whole = (builds / "1" / "lats.npy").read_bytes()
    half = len(whole) // 2
    dest = tmp_path / "lats.npy"
    dest.write_bytes(b"\x00" * half)  # a first half that differs from the origin's
    await reader.fetch("1/lats.npy", dest)
    got = dest.read_bytes()
    assert got[:half] == b"\x00" * half and got[half:] == whole[half:]  # only the rest came over the wire
    await origin.close()
    await reader.close()


async def test_two_workers_of_a_host_pull_a_snapshot_once(world: World, builds: Path, tmp_path: Path) -> None:
    await asyncio.to_thread(publish_cli, world, builds, 1)
    pullers = [Puller(world.origin(world.pull_from), tmp_path / "host", 0.1) for _ in range(2)]
    try:
        moved = await asyncio.gather(*(p.pull_once() for p in pullers))
        assert sum(p.health.pulls for p in pullers) == 1 and True in moved
        assert current_seq(tmp_path / "host") == 1
        open_snapshot(tmp_path / "host" / "1", verify=True)
    finally:
        for p in pullers:
            await p.origin.close()


async def test_an_http_origins_password_is_sent_as_a_header_and_never_shown() -> None:
    import base64

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from geo_service.snapshot.origin import OriginError, current_of, open_origin

    seen: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"puller:s3cr%t").decode():
            return web.Response(status=401)
        return web.Response(text="7\n") if request.match_info["name"] == "CURRENT" else web.Response(status=500)

    app = web.Application()
    app.router.add_get("/origin/{name}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    origin = open_origin(f"http://puller:s3cr%25t@127.0.0.1:{server.port}/origin")
    try:
        assert await current_of(origin) == 7  # the password went in the header (percent-decoded)
        assert seen == ["Basic " + base64.b64encode(b"puller:s3cr%t").decode()]
        assert "s3cr" not in origin.url and origin.url.startswith("http://puller:***@127.0.0.1:")
        with pytest.raises(OriginError) as failed:
            await origin.read("BROKEN")  # the server answers 500: the error names the origin
        assert "puller:***@" in str(failed.value) and "s3cr" not in str(failed.value)
    finally:
        await origin.close()
        await server.close()
