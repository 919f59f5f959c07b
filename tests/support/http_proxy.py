"""A loopback HTTP proxy in a thread of its own, for a browser's fault drills: a page loaded through it sends every
request through it, and the requests of one method and path can be made to fail as a network fails: answered 503
with Retry-After without reaching the server, or passed on and then cut (the server has answered, the browser's
connection is reset before the answer reaches it). Everything it saw is recorded. Each connection carries one request."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from geo_service.web.errors import error_body
from tests.support.processes import free_port

# Hop-by-hop headers, and what aiohttp's client sets itself or undoes (it inflates gzip: the body passed on is plain).
_DROPPED = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
            "accept-encoding", "upgrade", "te", "trailer", "date", "server"}


@dataclass
class Seen:
    method: str
    path: str
    body: bytes
    fault: str  # "" (passed on), "503" or "cut"


@dataclass
class HttpProxy:
    target: str  # the server's base URL
    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)
    _faults: dict[tuple[str, str], deque[str]] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, method: str, path: str, *faults: str) -> None:
        """Make the next requests of `method` to `path` fail in turn: "503" (answered here) or "cut" (answered by the
        server, then the connection reset); then they pass again."""
        self._loop.call_soon_threadsafe(self._faults.setdefault((method, path), deque()).extend, faults)

    def start(self) -> HttpProxy:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _listen(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        queue = self._faults.get((request.method, request.path))
        fault = queue.popleft() if queue else ""
        self.seen.append(Seen(request.method, request.path_qs, body, fault))
        if fault == "503":
            refused = web.Response(status=503, body=error_body(503, "overloaded", "the proxy says: try again later"),
                                   content_type="application/json", headers={"Retry-After": "1"})
            refused.force_close()
            return refused
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED}
        assert self._session is not None
        async with self._session.request(request.method, self.target + request.path_qs, headers=headers, data=body,
                                         allow_redirects=False) as upstream:
            answer = await upstream.read()
            if fault == "cut":  # the server has settled it; the browser never hears
                _reset(request.transport)
                return web.Response(status=204)
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROPPED}
            response = web.Response(status=upstream.status, body=answer if upstream.status != 304 else None, headers=kept)
        # One request a connection: Chromium sends a request again by itself when a kept-alive connection it reused
        # is reset, so a cut would never reach the page's script.
        response.force_close()
        return response


def _reset(transport: asyncio.BaseTransport | None) -> None:
    """Close with a TCP reset, as a failing network does, not a polite FIN."""
    assert isinstance(transport, asyncio.Transport)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
