"""create_app for the collector: wiring only; the tick loop and the ledger are cleanup contexts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import suppress

from aiohttp import web

from collector.feed import Feed
from collector.handlers import ROUTES
from collector.keys import feed_key, metrics_key, settings_key, ticker_key, views_key
from collector.settings import CollectorSettings
from collector.ticker import Ticker
from collector.views import ViewHolder
from geo_service.errors import Handler, respond
from geo_service.ledger import open_ledger
from geo_service.metrics import Metrics, route_label
from loaders.sources.mysql import MySQLSource


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The error shape and metrics for every route."""
    started = time.perf_counter()
    response = await respond(request, handler)
    request.app[metrics_key].observe(route_label(request), response.status, time.perf_counter() - started)
    return response


async def ticker_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the first tick before serving (so views exist when it can), then tick in the background."""
    ticker = app[ticker_key]
    await ticker.tick()
    task = asyncio.create_task(ticker.run(), name="collector-ticker")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await ticker.close()


async def close_streams(app: web.Application) -> None:
    app[feed_key].close()


def create_app(settings: CollectorSettings) -> web.Application:
    """Return the collector application; nothing is opened until it starts."""
    app = web.Application(middlewares=[guard])
    holder, feed = ViewHolder(), Feed()
    app[settings_key] = settings
    app[views_key] = holder
    app[feed_key] = feed
    app[metrics_key] = Metrics()
    app[ticker_key] = Ticker(
        ledger=open_ledger(settings.ledger), snapshots=settings.snapshots, holder=holder,
        floor_s=settings.tick_floor_s, ceiling_s=settings.tick_ceiling_s, slow_read_s=settings.slow_read_s,
        page_rows=settings.sweep_page_rows, sweep_every_s=settings.sweep_every_s, on_swap=feed.publish,
        source=MySQLSource.from_dsn(settings.source) if settings.source else None,
    )
    app.cleanup_ctx.append(ticker_ctx)
    app.on_shutdown.append(close_streams)
    app.add_routes(ROUTES)
    return app
