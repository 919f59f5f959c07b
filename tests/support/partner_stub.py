"""The partner stub: the demo partner (delivery/partner.py) on a real loopback port, with faults put in front of
the contract per channel on the test's word. Its log (who sent what when, which effects it applied) is the
independent record the delivery tests check exactly-once and pacing against."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from delivery.partner import Partner

SECRET = "stub-signing-secret-0123456789"
GARBAGE = ("not json", "huge", "no reference", "redirect", "list", "empty")


@dataclass
class Faults:
    hang_s: float = 0.0  # answer only after this long (the dispatcher's timeout comes first)
    limit_per_s: float = 0.0  # above this rate (a 100 ms-slice bucket): 429
    unavailable: bool = False  # 503 with Retry-After: 1
    reset_every: int = 0  # every Nth request: the connection is dropped unanswered
    garbage_every: int = 0  # every Nth request: a garbage answer (cycling GARBAGE)
    garbage_after_apply: bool = False  # the garbage comes after the effect was applied


class Stub(Partner):
    def __init__(self, channels: list[str], accounts_required: frozenset[str] = frozenset()) -> None:
        super().__init__(dict.fromkeys(channels, SECRET), accounts_required)
        self.faults = {c: Faults() for c in channels}
        self._seen: Counter[str] = Counter()
        self._kinds = itertools.cycle(GARBAGE)
        self._slices: Counter[tuple[str, int]] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()

    async def answer(self, request: web.Request, channel: str, delivery_id: str, user_id: str) -> web.StreamResponse:
        response = await self._faulty(request, channel, delivery_id, user_id)
        self.statuses[(channel, response.status)] += 1
        return response

    async def _faulty(self, request: web.Request, channel: str, delivery_id: str, user_id: str) -> web.StreamResponse:
        f = self.faults[channel]
        self._seen[channel] += 1
        n = self._seen[channel]
        if f.hang_s:
            await asyncio.sleep(f.hang_s)
        if f.limit_per_s:
            key = (channel, int(time.time() * 10))
            self._slices[key] += 1
            if self._slices[key] > f.limit_per_s / 10:
                return web.json_response({"status": "slow_down"}, status=429)
        if f.unavailable:
            return web.json_response({"status": "unavailable"}, status=503, headers={"Retry-After": "1"})
        if f.reset_every and n % f.reset_every == 0:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if f.garbage_every and n % f.garbage_every == 0:
            if f.garbage_after_apply:
                await super().answer(request, channel, delivery_id, user_id)
            return self._garbage(next(self._kinds))
        return await super().answer(request, channel, delivery_id, user_id)

    @staticmethod
    def _garbage(kind: str) -> web.Response:
        if kind == "not json":
            return web.Response(text="<html>delivered!</html>", content_type="text/html")
        if kind == "huge":
            return web.Response(body=b'{"status": "delivered", "reference": "' + b"x" * 1_000_000 + b'"}',
                                content_type="application/json")
        if kind == "no reference":
            return web.json_response({"status": "delivered"})
        if kind == "redirect":
            return web.Response(status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"})
        if kind == "list":
            return web.json_response(["delivered"])
        return web.Response(status=200)

    def duplicates(self) -> list[str]:
        """Delivery ids whose effect was applied more than once: must be none."""
        return [d for d, n in Counter(d for _, _, d in self.log.applied).items() if n > 1]

    def applied(self, channel: str | None = None) -> set[str]:
        return {d for _, c, d in self.log.applied if channel is None or c == channel}

    def received_times(self, channel: str) -> list[float]:
        return [t for t, c, _ in self.log.received if c == channel]


@asynccontextmanager
async def serving(stub: Stub) -> AsyncIterator[str]:
    """Serve the stub on a free loopback port; yield its base URL. The test process's heap (every module the suite
    imports) is frozen out of the collector meanwhile: a full collection of it stalls the stub's loop for tens of
    milliseconds, which would show in its receive times as calls crowding one 100 ms slice."""
    gc.freeze()
    runner = web.AppRunner(stub.app(), access_log=None, shutdown_timeout=1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        gc.unfreeze()
