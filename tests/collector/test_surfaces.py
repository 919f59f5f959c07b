"""The collector's surfaces against what a page, a script or a crowd sends: its headers, the admin session that
keeps the token out of the page, the cap on streams."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from collector.keys import feed_key
from collector.security import COOKIE, CSP, SESSION_HEADER, session_expiry, session_value
from tests.conftest import SAMPLE, build_into
from tests.support.ledgers import sql_rows
from tests.support.processes import Process, collector, running_pair, service
from tests.test_error_shape import assert_error_shape

ADMIN = "surface-admin-token"
KILL = "/v1/admin/tasks/44030500"


@pytest.mark.parametrize("path", ["/", "/static/dashboard.js", "/v1/districts", "/v1/nowhere", "/v1/tasks/%C2%B2/pois"])
async def test_every_answer_carries_the_csp_and_the_usual_headers(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path, path: str) -> None:
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}")
    resp = await client.get(path)
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP and "frame-ancestors 'none'" in CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["X-Frame-Options"] == "DENY"


async def test_the_admin_token_buys_an_httponly_session_that_only_same_origin_requests_can_use(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    client = await make_collector(sample_snapshots, ledger, admin_token=ADMIN, admin_session_s=60)
    refused = await client.post("/v1/admin/session", headers={"Authorization": "Bearer wrong"})
    assert_error_shape(401, refused.headers, await refused.json(), "invalid_token")
    assert COOKIE not in refused.cookies
    opened = await client.post("/v1/admin/session", headers={"Authorization": f"Bearer {ADMIN}"})
    assert opened.status == 200
    cookie = opened.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/v1/admin"
    assert int(cookie["max-age"]) == 60 and ADMIN not in cookie.value
    # The client's jar now sends the cookie. Without the header (what a cross-site form could send) it is not enough.
    bare = await client.post(KILL, json={"enabled": False})
    assert bare.status == 401
    assert sql_rows(ledger, "SELECT * FROM task_flags") == []
    ok = await client.post(KILL, json={"enabled": False}, headers={SESSION_HEADER: "1"})
    assert ok.status == 200 and (await ok.json())["enabled"] is False
    assert sql_rows(ledger, "SELECT task_id, enabled FROM task_flags") == [(44030500, 0)]
    closed = await client.delete("/v1/admin/session")
    assert closed.status == 200
    after = await client.post(KILL, json={"enabled": True}, headers={SESSION_HEADER: "1"})
    assert after.status == 401
    assert sql_rows(ledger, "SELECT task_id, enabled FROM task_flags") == [(44030500, 0)]


@pytest.mark.parametrize("value", [
    session_value(ADMIN, int(time.time()) - 1),  # expired
    session_value("another-token", int(time.time()) + 600),  # made under another token (the token was changed)
    f"{int(time.time()) + 10**6}.{session_value(ADMIN, int(time.time()) + 600).split('.')[1]}",  # expiry moved
    "", "x", "1.", ".abc", "²" * 3 + ".00", "9" * 40 + ".00",
])
async def test_a_forged_expired_or_garbled_session_opens_nothing(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path, value: str) -> None:
    assert session_expiry(ADMIN, value, time.time()) is None
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}", admin_token=ADMIN)
    client.session.cookie_jar.update_cookies({COOKIE: value})
    resp = await client.post(KILL, json={"enabled": False}, headers={SESSION_HEADER: "1"})
    assert_error_shape(401, resp.headers, await resp.json(), "invalid_token")


async def test_a_stray_byte_in_the_token_or_the_cookie_is_a_401_not_a_500(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}", admin_token=ADMIN)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    for header in (b"Authorization: Bearer \xff\xfe", b"Cookie: geodrop_admin=1.\xff\r\nX-Geodrop-Session: 1"):
        writer.write(b"POST " + KILL.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + header + b"\r\n\r\n{}")
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode().split("\r\n")
        assert int(head[0].split()[1]) == 401
        length = next(int(h.split(":")[1]) for h in head if h.lower().startswith("content-length"))
        await reader.readexactly(length)
    writer.close()


async def test_streams_past_the_cap_get_a_503_with_retry_after_and_the_rest_of_the_collector_answers(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}", stream_max_subscribers=3)
    held = [await client.get("/v1/stream") for _ in range(3)]
    assert all(r.status == 200 for r in held)
    refused = await client.get("/v1/stream")
    assert_error_shape(503, refused.headers, await refused.json(), "overloaded")
    assert int(refused.headers["Retry-After"]) > 0
    status = await client.get("/v1/tasks/status")
    assert status.status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'geodrop_collector_streams_refused_total{process="collector"} 1\n' in metrics
    held[0].close()  # one goes away: its place is free again
    deadline = time.monotonic() + 5
    while (again := await client.get("/v1/stream")).status != 200:  # bounded by the deadline
        again.close()
        assert time.monotonic() < deadline, "a closed stream's place was not freed"
        await asyncio.sleep(0.05)
    for r in [*held[1:], again]:
        r.close()


async def _open_streams(port: int, n: int) -> tuple[list[asyncio.StreamWriter], list[int]]:
    """Open n idle /v1/stream connections; return the writers of those held open and every answer's status."""
    held, statuses = [], []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        status = int((await asyncio.wait_for(reader.readline(), 10)).split()[1])
        statuses.append(status)
        if status == 200:
            held.append(writer)
        else:
            writer.close()
    return held, statuses


def test_a_thousand_idle_streams_leave_status_polls_and_the_dashboard_working(tmp_path: Path) -> None:
    snaps, ledger = tmp_path / "snaps", f"sqlite:///{tmp_path / 'l.sqlite3'}"
    build_into(SAMPLE, snaps)
    col = collector(snaps, ledger, "--stream-heartbeat-s", "60")
    svc = service(snaps, tmp_path / "var", "--status-poll-s", "0.2", workers=1)
    # The collector starts with a soft limit of 256 open files, as some hosts give: it must lift it itself.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    col.preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    with running_pair(svc, col):
        held, statuses = asyncio.run(_hold_and_probe(col.port, svc, col))
        assert statuses.count(200) == 500 and statuses.count(503) == 500  # stream_max_subscribers, then refused
        assert held["status"] == 200 and held["page"] == 200 and held["districts"] == 200
        assert held["service_status_age_s"] is not None and held["service_status_age_s"] < 2.0


async def _hold_and_probe(port: int, svc: Process, col: Process) -> tuple[dict[str, Any], list[int]]:
    writers, statuses = await _open_streams(port, 1000)
    try:
        await asyncio.sleep(1.0)  # several status polls of the service happen while the streams are held
        probe = {name: await asyncio.to_thread(_status_of, f"{col.url}{path}")
                 for name, path in (("status", "/v1/tasks/status"), ("page", "/"), ("districts", "/v1/districts"))}
        probe["service_status_age_s"] = (await asyncio.to_thread(svc.health))["status"]["age_s"]
        return probe, statuses
    finally:
        for w in writers:
            w.close()


def _status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_a_stream_that_is_never_read_stays_counted_and_ends_by_its_deadline(
        make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}", stream_max_subscribers=1,
                                  stream_max_s=30.0, stream_heartbeat_s=1.5)
    feed = client.server.app[feed_key]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.port))
    await asyncio.get_running_loop().sock_sendall(sock, b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        deadline = time.monotonic() + 5
        while feed.subscribers < 1:  # bounded by the deadline
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        big = {"code": 1, "name": "x" * 100_000}
        feed.publish([big] * 100)  # 10 MB: the socket fills and the handler waits in a write
        await asyncio.sleep(0.3)
        started = time.monotonic()
        feed.publish([big] * 300)  # the queue overflows: the feed lets the subscriber go
        assert feed.dropped == 1
        assert feed.subscribers == 1  # its handler still holds the socket: it still counts
        refused = await client.get("/v1/stream")
        assert refused.status == 503
        mine = sock.getsockname()[1]
        assert _established(client.port, mine) == 1
        while feed.subscribers or _established(client.port, mine):  # bounded: a write may wait a heartbeat, then it ends
            await asyncio.sleep(0.05)
            assert time.monotonic() - started < 5.0, "the unread stream held its place or its socket"
    finally:
        sock.close()
    again = await client.get("/v1/stream")
    assert again.status == 200
    again.close()


def _established(server_port: int, client_port: int) -> int:
    """Whether the server still holds its end of the connection from client_port (the kernel's table: what the
    process holds, whatever it counts)."""
    rows = [r.split() for r in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for r in rows if r[1].endswith(f":{server_port:04X}") and r[2].endswith(f":{client_port:04X}")
               and r[3] == "01")
