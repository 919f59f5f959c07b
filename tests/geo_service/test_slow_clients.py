"""Fault drill: 2,000 idle keep-alive connections, a client dripping its request line a byte at a time and
one dripping a claim's body, beside normal polling, against two workers. Every normal poll succeeds;
the idle and dripping connections are closed by keepalive_timeout_s, no sooner and not much later."""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from geo_service.tokens import mint
from tests.conftest import SAMPLE, build_into
from tests.support.processes import Process, service

IDLE = 2000
TIMEOUT_S = 2.0
POLL = "/v1/nearby?lat=22.5329&lng=113.9305"
SECRET = "drip-secret"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Process]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE + 500 and hard != resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, IDLE * 2), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= IDLE + 500, "the test process needs room for its sockets"
    build_into(SAMPLE, tmp_path / "snaps")
    proc = service(tmp_path / "snaps", tmp_path / "var", "--keepalive-timeout-s", str(TIMEOUT_S),
                   "--token-secret", SECRET).start()
    try:
        proc.wait_ready(workers=2)
        yield proc
    finally:
        assert proc.stop() == 0


async def _idle_connection(port: int) -> asyncio.StreamReader:
    """One request answered over keep-alive, then silence: the reader sees EOF when the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {POLL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1])
    await reader.readexactly(length)
    reader._geodrop_writer = writer  # type: ignore[attr-defined]  # kept open (and closed) with its reader
    return reader


async def _closed_after(reader: asyncio.StreamReader, started: float) -> float:
    """Seconds from `started` until the server closed this connection (EOF or reset)."""
    try:
        await asyncio.wait_for(reader.read(), timeout=TIMEOUT_S * 5)
    except ConnectionError:
        pass
    return time.monotonic() - started


async def _drip(port: int, at_once: bytes, drip: bytes, every_s: float = 0.1) -> tuple[float, int, bytes]:
    """Send `at_once`, then `drip` a byte every `every_s`; return when the server answered or closed, how many
    dripped bytes got through, and what it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(at_once)
    started, sent, answer = time.monotonic(), 0, b""
    try:
        for byte in drip:  # bounded by len(drip)
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            try:
                answer = await asyncio.wait_for(reader.read(4096), timeout=every_s)
            except TimeoutError:
                continue
            break  # the server answered or closed: the drip is over
        if answer:
            answer += await asyncio.wait_for(reader.read(), timeout=5)
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started, sent, answer


async def test_idle_and_dripping_connections_are_closed_by_their_timeouts_and_polls_go_on(served: Process) -> None:
    port = served.port
    polls: Counter[object] = Counter()
    stop = asyncio.Event()

    async def poll() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while not stop.is_set():  # bounded by stop
                try:
                    async with session.get(f"{served.url}{POLL}") as resp:
                        polls[resp.status] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    polls[type(exc).__name__] += 1

    pollers = [asyncio.create_task(poll()) for _ in range(4)]
    opened = time.monotonic()
    idle = []
    for start in range(0, IDLE, 200):  # 200 at a time: a burst of 2,000 connects would overflow the accept backlog
        idle += await asyncio.gather(*(_idle_connection(port) for _ in range(start, min(start + 200, IDLE))))
    all_open = time.monotonic()
    request_line = f"GET {POLL} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    body = b'{"claim_id": "drip", "task_id": 1, "poi_id": 1, "lat": 22.5, "lng": 113.9}'
    token = mint("dripper", SECRET, int(time.time()) + 600)
    claim_head = (f"POST /v1/claims HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    closes = asyncio.gather(*(_closed_after(r, opened) for r in idle))
    header_drip, body_drip = await asyncio.gather(_drip(port, b"", request_line * 5), _drip(port, claim_head, body))
    lifetimes = await closes
    stop.set()
    await asyncio.gather(*pollers)

    # Normal polling never failed, beside all of it.
    assert set(polls) == {200} and polls[200] > 100, polls
    # Every idle connection was closed by the server after its keep-alive time, not before.
    assert min(lifetimes) >= TIMEOUT_S * 0.9
    assert max(lifetimes) <= (all_open - opened) + TIMEOUT_S + 3
    # The request line dripped for longer than the timeout: closed, unanswered, midway.
    took, sent, answer = header_drip
    assert TIMEOUT_S * 0.9 <= took <= TIMEOUT_S + 3 and sent < len(request_line) and answer == b"", header_drip
    # The claim's body dripped: its headers were read, the body never completed in time: 408, then closed.
    took, sent, answer = body_drip
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer, body_drip
    assert sent < len(body) and TIMEOUT_S * 0.9 <= took <= TIMEOUT_S + 3
    for reader in idle:
        reader._geodrop_writer.close()  # type: ignore[attr-defined]
