"""The dispatcher process: its channels' runners, and /healthz and /metrics for operators."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from delivery.channels import Channel, Channels
from delivery.dispatcher import MAX_UNRECORDED, ChannelRunner, owner_id
from delivery.settings import DeliverySettings
from geo_service.ledger import PlanRunner, open_records
from geo_service.ledger.deliveries import DeliveryStore
from geo_service.web.metrics import Metrics
from geo_service.web.responses import json_response
from geo_service.web.routing import QUERY_LIMIT_BYTES, Guard, Route, add_guarded_routes

log = logging.getLogger("geodrop.delivery")
HEALTHY_LEASE_AGE_S = 5.0  # a channel that has not leased for this long is stuck (its database calls fail)


@dataclass(frozen=True, slots=True)
class Dispatcher:
    runners: tuple[ChannelRunner, ...]
    runners_db: tuple[PlanRunner, ...]  # one record-database connection pool per class: fast, slow


def selected(channels: Channels, names: list[str]) -> list[Channel]:
    """Return the channels a dispatcher serves: those named (each must exist), or all."""
    return [channels.named(n) for n in names] if names else list(channels.channels)


def make_dispatcher(settings: DeliverySettings, channels: Channels) -> Dispatcher:
    """Return the runners of the selected channels; raise ChannelsError if a secret is missing."""
    serve = selected(channels, settings.channel_names())
    secrets = {c.name: c.secret() for c in serve}
    pools = {kind: open_records(settings.ledger, settings.record_db) for kind in sorted({c.kind for c in serve})}
    owner = owner_id()
    runners = tuple(ChannelRunner(c, DeliveryStore(pools[c.kind]), secrets[c.name], owner) for c in serve)
    return Dispatcher(runners, tuple(pools.values()))


@asynccontextmanager
async def dispatching(dispatcher: Dispatcher) -> AsyncIterator[asyncio.Event]:
    """Run every runner until the block ends; then let calls in flight finish and record them, and close."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop), name=f"channel-{r.channel.name}") for r in dispatcher.runners]
    try:
        yield stop
    finally:
        stop.set()
        for task, outcome in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True)):
            if isinstance(outcome, Exception):
                log.error("a channel stopped on an error", extra={"task": task.get_name(), "error": repr(outcome)})
        for pool in dispatcher.runners_db:
            await pool.close()


def health(dispatcher: Dispatcher) -> dict[str, object]:
    now = time.time()
    channels = {r.channel.name: {
        "class": r.channel.kind, "rate_per_s": r.health.rate_milli / 1000, "pace_per_s": r.health.pace_milli / 1000,
        "paused": r.health.paused, "in_flight": r.in_flight, "unrecorded": r.unrecorded,
        "lease_age_s": round(now - r.health.last_lease_at, 3) if r.health.last_lease_at else None,
        "failures": r.health.failures, "last_error": r.health.last_error, **dict(r.health.counts)}
        for r in dispatcher.runners}
    stuck = [r.channel.name for r in dispatcher.runners if not r.health.last_lease_at
             or now - r.health.last_lease_at > HEALTHY_LEASE_AGE_S or r.unrecorded >= MAX_UNRECORDED]
    return {"ok": not stuck, "stuck": stuck, "channels": channels}


async def healthz(request: web.Request) -> web.Response:
    body = health(request.app[dispatcher_key])
    return json_response(body, status=200 if body["ok"] else 503)


_COUNTS = (("sent", "Deliveries leased and sent."), ("delivered", "Deliveries the partner confirmed."),
           ("retried", "Calls to be sent again (timeout, reset, 5xx, 429/503, garbage)."),
           ("parked", "Deliveries parked: the player has no account with the partner yet."),
           ("failed", "Deliveries the partner refused (4xx): the dead-letter list."),
           ("slowed", "Times the channel slowed down (429, 503, timeouts)."),
           ("late", "Leases that came back after their slice and were given back unsent."))


def render_metrics(dispatcher: Dispatcher) -> str:
    lines: list[str] = []
    for name, help_text in _COUNTS:
        lines += [f"# HELP geodrop_delivery_{name}_total {help_text}", f"# TYPE geodrop_delivery_{name}_total counter"]
        lines += [f'geodrop_delivery_{name}_total{{channel="{r.channel.name}"}} {r.health.counts[name]}'
                  for r in dispatcher.runners]
    gauges = (("pace_per_s", "The channel's pace now (drops when the partner chokes).", lambda r: r.health.pace_milli / 1000),
              ("rate_per_s", "The channel's configured (or live-set) rate.", lambda r: r.health.rate_milli / 1000),
              ("in_flight", "Calls open now.", lambda r: r.in_flight),
              ("unrecorded", "Answers not yet written to the record database.", lambda r: r.unrecorded),
              ("paused", "1 while the channel is paused.", lambda r: int(r.health.paused)),
              ("db_failures", "Record-database calls that failed.", lambda r: r.health.failures))
    for name, help_text, value in gauges:
        kind = "counter" if name == "db_failures" else "gauge"
        lines += [f"# HELP geodrop_delivery_{name} {help_text}", f"# TYPE geodrop_delivery_{name} {kind}"]
        lines += [f'geodrop_delivery_{name}{{channel="{r.channel.name}"}} {value(r):g}' for r in dispatcher.runners]
    return "\n".join(lines) + "\n"


async def metrics(request: web.Request) -> web.Response:
    text = render_metrics(request.app[dispatcher_key]) + request.app[metrics_key].render({"process": "dispatcher"}, {})
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


ROUTES: list[Route] = [("GET", "/healthz", healthz), ("GET", "/metrics", metrics)]
dispatcher_key = web.AppKey("dispatcher", Dispatcher)
metrics_key = web.AppKey("metrics", Metrics)


def create_app(dispatcher: Dispatcher) -> web.Application:
    """Return the dispatcher's app: its runners run while it serves /healthz and /metrics."""
    app = web.Application()
    app[dispatcher_key] = dispatcher
    app[metrics_key] = Metrics()

    async def run(app: web.Application) -> AsyncIterator[None]:
        async with dispatching(dispatcher):
            yield

    app.cleanup_ctx.append(run)
    add_guarded_routes(app.router, ROUTES, Guard(app[metrics_key], None, QUERY_LIMIT_BYTES, frozenset({"/healthz", "/metrics"})))
    return app
