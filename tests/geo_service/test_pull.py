"""Snapshots shipped from an origin: nginx serving a folder, and an S3 API (moto's server) on loopback; origins
that send garbage, too much, or stall."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from geo_service.keys import puller_key
from geo_service.snapshot.folder import current_seq
from geo_service.snapshot.format import SnapshotError, open_snapshot, parse_manifest, read_manifest
from geo_service.snapshot.origin import FolderOrigin, Origin, OriginError, current_of, open_origin, publish
from geo_service.snapshot.pull import Puller, pulling
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

    async def counted(name: str, limit: int) -> bytes | None:
        looks.append(name)
        return await read(name, limit)

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
    await reader.fetch("1/lats.npy", dest, len(whole))
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


async def publish_seq(folder: Path, builds: Path, seq: int) -> None:
    """Publish a build's seq into an origin folder, as `geo-snapshot publish` does."""
    await publish(FolderOrigin(folder), builds / str(seq), read_manifest(builds / str(seq)))


def puller_running() -> bool:
    """Whether pull.pulling's task is alive (a puller that died would be done)."""
    return any(t.get_name() == "snapshot-puller" and not t.done() for t in asyncio.all_tasks())


async def at(root: Path, seq: int, puller: Puller) -> None:
    """Wait until the host's folder is at seq and its puller reports no error."""
    async def there() -> bool:
        return current_seq(root) == seq and puller.health.last_error is None

    await until(there)


Breakage = Callable[[Path, Path], None]  # (origin folder, builds): makes what the origin serves bad


def current(text: bytes) -> Breakage:
    def breakage(folder: Path, builds: Path) -> None:
        (folder / "CURRENT").write_bytes(text)

    return breakage


def seq2(edit: Callable[[dict[str, Any]], Any] = lambda m: None, raw: bytes | None = None, longer: str = "") -> Breakage:
    """Seq 2's files at the origin under its manifest changed by `edit` (or replaced by `raw`), one file `longer`
    than the manifest says, and CURRENT naming seq 2."""
    def breakage(folder: Path, builds: Path) -> None:
        shutil.copytree(builds / "2", folder / "2")
        manifest = orjson.loads((builds / "2" / "manifest.json").read_bytes())
        edit(manifest)
        (folder / "2" / "manifest.json").write_bytes(orjson.dumps(manifest) if raw is None else raw)
        if longer:
            with (folder / "2" / longer).open("ab") as f:
                f.write(b"and more")
        (folder / "CURRENT").write_bytes(b"2\n")

    return breakage


def seq2_tasks(rows: Any) -> Breakage:
    """Seq 2 with a tasks.json of `rows` (or of what `rows` makes of the build's) that its manifest vouches for:
    checksums hold, the table does not."""
    def breakage(folder: Path, builds: Path) -> None:
        built = orjson.loads((builds / "2" / "tasks.json").read_bytes())
        raw = orjson.dumps(rows(built) if callable(rows) else rows)

        def vouch(manifest: dict[str, Any]) -> None:
            manifest["files"]["tasks.json"].update(bytes=len(raw), sha256=hashlib.sha256(raw).hexdigest())

        seq2(vouch)(folder, builds)
        (folder / "2" / "tasks.json").write_bytes(raw)

    return breakage


def _first_prize(**changes: Any) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def edit(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        tasks[0]["prizes"][0].update(changes)
        return tasks

    return edit


BREAKAGES: dict[str, tuple[Breakage, str]] = {  # id: (breakage, what last_error says)
    "current-superscript": (current("²\n".encode()), "CURRENT is not a seq"),
    "current-letters": (current(b"abc\n"), "CURRENT is not a seq"),
    "current-empty": (current(b""), "CURRENT is not a seq"),
    "current-huge": (current(b"1" + b"0" * 30 + b"\n"), "CURRENT is not a seq"),
    "current-binary": (current(bytes(range(256))), "CURRENT: longer than 64 bytes"),
    "manifest-not-json": (seq2(raw=b"{"), "not JSON"),
    "manifest-a-list": (seq2(raw=b"[]"), "not a geodrop-snapshot manifest"),
    "manifest-too-big": (seq2(lambda m: m.update(padding="x" * (1 << 20))), "longer than 1048576 bytes"),
    "files-a-list": (seq2(lambda m: m.update(files=list(m["files"]))), "field files must be an object"),
    "entry-without-bytes": (seq2(lambda m: m["files"]["cells.npy"].pop("bytes")), "files.cells.npy.bytes"),
    "bytes-negative": (seq2(lambda m: m["files"]["lats.npy"].update(bytes=-1)), "files.lats.npy.bytes"),
    "bytes-a-string": (seq2(lambda m: m["files"]["tasks.json"].update(bytes="12")), "files.tasks.json.bytes"),
    "bad-sha256": (seq2(lambda m: m["files"]["cells.npy"].update(sha256="abc")), "files.cells.npy.sha256"),
    "seq-not-currents": (seq2(lambda m: m.update(seq=3)), "field seq must be 2, the seq CURRENT names"),
    "body-longer-than-manifest": (seq2(longer="tasks.json"), "2/tasks.json: longer than the"),
    "above-max-bytes": (seq2(lambda m: m["files"]["cells.npy"].update(bytes=1 << 40)), "above origin_max_bytes"),
    # Checksums that hold over tables that do not: refused before CURRENT names them, not left to crash a loader.
    "tasks-empty-rows": (seq2_tasks([{}] * 3), "row 0, field task_id"),
    "tasks-not-rows": (seq2_tasks([1, 2, 3]), "row 0 is not an object"),
    "task-id-past-int64": (seq2_tasks([{"task_id": 2**63 + 5}]), "field task_id: must be a whole number in int64"),
    # Well typed, but what the ledger cannot take (1e300 a second overflowed SQLite and left its write lock held).
    "rate-1e300": (seq2_tasks(_first_prize(rate_per_s=1e300)), "rate at most 1e+09/s"),
    "quota-negative": (seq2_tasks(_first_prize(quota=-1)), "quota below 0"),
    "task-id-twice": (seq2_tasks(lambda t: [t[0], t[0]]), "is below 1 or given twice"),
}


@pytest.mark.parametrize("world", ["http"], indirect=True)
@pytest.mark.parametrize("case", list(BREAKAGES))
async def test_a_malformed_origin_is_refused_and_the_next_good_publish_taken(
        world: World, builds: Path, tmp_path: Path, case: str) -> None:
    breakage, said = BREAKAGES[case]
    folder, host_root = Path(world.publish_to), tmp_path / "host"
    await publish_seq(folder, builds, 1)
    # A password in the URL: no message may show it.
    puller = Puller(world.origin(world.pull_from.replace("://", "://puller:s3cret@")), host_root, 0.05)
    async with pulling(puller):
        await at(host_root, 1, puller)
        breakage(folder, builds)

        async def refused() -> bool:
            return puller.health.refused >= 1 and said in (puller.health.last_error or "")

        await until(refused)
        assert puller_running() and "s3cret" not in str(puller.health.last_error)
        assert current_seq(host_root) == 1 and not (host_root / "2").exists()
        open_snapshot(host_root / "1", verify=True)  # the live one is whole
        await publish_seq(folder, builds, 3)
        await at(host_root, 3, puller)
        assert puller_running()


@pytest.mark.parametrize(("name", "how"), [("CURRENT", "stall"), ("2/manifest.json", "drip"), ("2/cells.npy", "stall"),
                                           ("2/lats.npy", "drip")])
async def test_a_stalled_or_dripping_origin_times_out_and_the_next_good_publish_is_taken(
        builds: Path, tmp_path: Path, name: str, how: str) -> None:
    folder, host_root = tmp_path / "origin", tmp_path / "host"
    stalled: dict[str, str] = {}
    released = asyncio.Event()

    async def serve(request: web.Request) -> web.StreamResponse:
        path = folder / request.match_info["name"]
        if not path.is_file():
            return web.Response(status=404)
        body = path.read_bytes()
        if request.match_info["name"] not in stalled:
            return web.Response(body=body)
        answer = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await answer.prepare(request)  # the headers go out; then nothing, or a byte now and then
        for i in range(len(body) if stalled[request.match_info["name"]] == "drip" else 0):
            if released.is_set():
                break
            await answer.write(body[i:i + 1])
            await asyncio.sleep(0.05)
        await released.wait()
        return answer

    app = web.Application()
    app.router.add_get("/{name:.+}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    await publish_seq(folder, builds, 1)
    puller = Puller(open_origin(f"http://puller:s3cret@127.0.0.1:{server.port}", timeout_s=0.3), host_root, 0.05)
    try:
        async with pulling(puller):
            await at(host_root, 1, puller)
            stalled[name] = how
            await publish_seq(folder, builds, 2)

            async def failed() -> bool:
                return puller.health.failures >= 1 and f"/{name}: " in (puller.health.last_error or "")

            await until(failed)
            assert puller_running() and puller.health.refused == 0 and current_seq(host_root) == 1
            assert "s3cret" not in str(puller.health.last_error)
            if how == "drip":  # bytes keep coming, so only the deadline on the whole answer ends it
                assert "no complete answer within" in str(puller.health.last_error)
            stalled.clear()
            await publish_seq(folder, builds, 3)
            await at(host_root, 3, puller)
            assert puller_running()
    finally:
        released.set()
        await server.close()


async def test_a_fifo_at_a_folder_origin_is_refused_at_the_open_and_the_next_publish_taken(
        builds: Path, tmp_path: Path) -> None:
    folder, host_root = tmp_path / "origin", tmp_path / "host"
    await publish_seq(folder, builds, 1)
    puller = Puller(FolderOrigin(folder, timeout_s=0.3), host_root, 0.05)
    async with pulling(puller):
        await at(host_root, 1, puller)
        seq2()(folder, builds)
        (folder / "2" / "tasks.json").unlink()
        os.mkfifo(folder / "2" / "tasks.json")  # opened for reading, a FIFO blocks until a writer comes: never

        async def said() -> bool:
            return "not a regular file" in (puller.health.last_error or "")

        await until(said)
        assert puller_running() and current_seq(host_root) == 1
        await publish_seq(folder, builds, 3)
        await at(host_root, 3, puller)


async def test_a_folder_origins_stuck_operation_is_given_up_on_and_the_next_fails_fast_until_it_returns(
        tmp_path: Path) -> None:
    # What a stalled NFS mount does to a read: it does not return. The puller's deadline gives up on it; the thread
    # cannot be stopped, so the next operation says so at once instead of queueing behind it.
    origin, released = FolderOrigin(tmp_path), threading.Event()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(origin._io(lambda: released.wait(10)), 0.1)
    with pytest.raises(OriginError, match="has not returned for"):
        await origin._io(lambda: 1)
    released.set()
    deadline = time.monotonic() + 5
    while True:  # bounded by the deadline
        try:
            assert await origin._io(lambda: 2) == 2
            break
        except OriginError:
            assert time.monotonic() < deadline, "the origin never recovered after its stuck operation returned"
            await asyncio.sleep(0.02)


async def test_an_unexpected_error_is_reported_and_pulling_goes_on(
        builds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, host_root = tmp_path / "origin", tmp_path / "host"
    await publish_seq(folder, builds, 1)
    puller = Puller(FolderOrigin(folder), host_root, 0.05)
    read = puller.origin.read

    async def broken(name: str, limit: int) -> bytes | None:
        raise KeyError("a bug")

    monkeypatch.setattr(puller.origin, "read", broken)
    async with pulling(puller):
        task = next(t for t in asyncio.all_tasks() if t.get_name() == "snapshot-puller")

        async def failed() -> bool:
            return puller.health.failures >= 2 and puller.health.last_error == "KeyError: 'a bug'"

        await until(failed)
        assert puller_running()
        monkeypatch.setattr(puller.origin, "read", read)
        await at(host_root, 1, puller)
    assert task.cancelled()  # a cancel still stops it


@pytest.mark.parametrize("world", ["http"], indirect=True)
async def test_a_refusal_shows_in_healthz_and_metrics_and_the_service_pulls_on(
        make_client: MakeClient, world: World, builds: Path, tmp_path: Path) -> None:
    client = await host(make_client, world, tmp_path)
    await asyncio.to_thread(publish_cli, world, builds, 1)
    await until(lambda: _serves(client, 1))
    (Path(world.publish_to) / "CURRENT").write_text("²\n")

    async def refused() -> bool:
        health = (await (await client.get("/healthz")).json())["origin"]
        return bool(health["refused"] >= 1 and "CURRENT is not a seq" in (health["last_error"] or ""))

    await until(refused)
    metrics = await (await client.get("/metrics")).text()
    assert any(line.startswith("geodrop_pull_refused_total{") and float(line.split()[-1]) >= 1
               for line in metrics.splitlines())
    assert puller_running() and await served_seq(client) == 1
    await asyncio.to_thread(publish_cli, world, builds, 3)
    await until(lambda: _serves(client, 3))


async def test_an_origin_answer_longer_than_asked_is_refused(world: World, builds: Path, tmp_path: Path) -> None:
    writer = world.origin(world.publish_to)
    await writer.put("CURRENT", b"1" * 100)
    await writer.put("1/tasks.json", builds / "1" / "tasks.json")
    await writer.close()
    size = (builds / "1" / "tasks.json").stat().st_size
    readers = [world.origin(world.pull_from)] + ([FolderOrigin(Path(world.publish_to))] if world.kind == "http" else [])
    for reader in readers:
        with pytest.raises(SnapshotError, match="CURRENT: longer than 64 bytes"):
            await current_of(reader)
        dest = tmp_path / "tasks.json"
        dest.unlink(missing_ok=True)
        with pytest.raises(SnapshotError, match=f"tasks.json: longer than the {size - 1} bytes its manifest says"):
            await reader.fetch("1/tasks.json", dest, size - 1)
        assert dest.stat().st_size < size
        await reader.close()


def test_a_malformed_manifest_is_a_snapshot_error_naming_the_field(builds: Path) -> None:
    good = read_manifest(builds / "1")
    assert parse_manifest(orjson.dumps(good), "m", 1) == good
    fields = [("seq",), ("built_at",), ("deliveries",), ("files",), ("files", "cells.npy"), ("files", "cells.npy", "bytes"),
              ("files", "cells.npy", "sha256"), ("files", "cells.npy", "rows"), ("files", "tasks.json", "bytes")]
    junks: tuple[Any, ...] = (None, True, -1, 2.5, "x", [], {}, {"a": 1})
    refused = 0
    for path in fields:
        for junk in junks:
            manifest = copy.deepcopy(good)
            *parents, last = path
            node = manifest
            for key in parents:
                node = node[key]
            node[last] = junk
            try:  # a SnapshotError naming the field, or a manifest that is fine: nothing else
                parse_manifest(orjson.dumps(manifest), "m", 1)
            except SnapshotError as exc:
                assert path[-1] in str(exc), (path, junk, exc)
                refused += 1
    assert refused >= len(fields) * 6
