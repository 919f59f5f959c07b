"""A loopback TCP proxy in a thread of its own, for fault drills: put it between a process and a server,
then cut every connection (and refuse new ones), stall them (bytes go nowhere, nothing is closed: a
dead network), and let traffic through again."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

from tests.support.processes import free_port

_CHUNK = 64 << 10


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode = "open"  # open | cut | stalled
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            _reset(client_w)
            return
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(client_w)
            return
        self.connections += 1
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        finally:
            self._writers -= {client_w, server_w}
            for w in (client_w, server_w):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                if self.mode == "stalled":
                    continue  # swallowed: the peer waits for an answer that never comes
                writer.write(data)
                await writer.drain()
        writer.close()

    def cut(self) -> None:
        """Reset every connection and every new one until heal()."""
        async def cut() -> None:
            self.mode = "cut"
            for w in list(self._writers):
                _reset(w)
        self._call(cut())

    def stall(self) -> None:
        """Keep connections open but deliver nothing either way, and accept new ones into the same silence."""
        async def stall() -> None:
            self.mode = "stalled"
        self._call(stall())

    def heal(self) -> None:
        async def heal() -> None:
            self.mode = "open"
        self._call(heal())

    def stop(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                _reset(w)
        self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a failing network or a killed server does, not a polite FIN."""
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
