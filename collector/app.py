"""create_app for the collector: wiring only; the tick loop and the ledger are cleanup contexts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

from aiohttp import web

from collector.dashboard import ROUTES as DASHBOARD_ROUTES
from collector.deliveries import ROUTES as DELIVERY_ROUTES
from collector.deliveries import deliveries_ctx
from collector.feed import Feed
from collector.files import SnapshotFiles
from collector.handlers import ROUTES
from collector.keys import (
    feed_key,
    files_key,
    ledger_check_key,
    metrics_key,
    puller_key,
    service_key,
    settings_key,
    shipper_key,
    ticker_key,
    views_key,
)
from collector.security import ROUTES as SESSION_ROUTES
from collector.security import secure_headers
from collector.service import ServiceClient
from collector.settings import CollectorSettings
from collector.ticker import Ticker
from collector.views import ViewHolder
from geo_service.dsn import MySQLSettings, ship_part
from geo_service.ledger import LedgerCheck, open_ledger
from geo_service.ledger.records import RecordStore
from geo_service.ledger.redis import RedisLedger
from geo_service.ledger.ship import Shipper
from geo_service.snapshot.origin import open_origin
from geo_service.snapshot.pull import Puller, pulling
from geo_service.web.metrics import Metrics
from geo_service.web.routing import QUERY_LIMIT_BYTES, Guard, add_guarded_routes
from loaders.sources.mysql import MySQLSource


async def ticker_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the first tick before serving (so views exist when it can), then tick in the background, pulling
    new snapshots from the origin if there is one."""
    ticker = app[ticker_key]
    await ticker.tick()
    task = asyncio.create_task(ticker.run(), name="collector-ticker")
    async with pulling(app.get(puller_key)):
        yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await ticker.close()


async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keep checking the ledger's server against its requirements, and ship a Redis ledger's flow log
    into the record database when one is configured."""
    ledger = app[ticker_key].ledger
    tasks = [asyncio.create_task(app[ledger_check_key].run(ledger), name="ledger-check")]
    if shipper_key in app:
        tasks.append(asyncio.create_task(app[shipper_key].run(), name="flow-shipper"))
    yield
    for task in tasks:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    if shipper_key in app:
        await app[shipper_key].store.close()


async def service_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[service_key].close()


async def close_streams(app: web.Application) -> None:
    app[feed_key].close()


def create_app(settings: CollectorSettings) -> web.Application:
    """Return the collector application; nothing is opened until it starts."""
    app = web.Application()
    holder, feed = ViewHolder(), Feed()
    app[settings_key] = settings
    app[views_key] = holder
    app[feed_key] = feed
    app[metrics_key] = metrics = Metrics()
    ledger = open_ledger(settings.ledger, settings.record_db)
    app[ledger_check_key] = LedgerCheck()
    if isinstance(ledger, RedisLedger) and settings.record_db:
        app[shipper_key] = Shipper(ledger, RecordStore(MySQLSettings.from_dsn(settings.record_db)),
                                   part=ship_part(settings.ship_part))
    app[ticker_key] = Ticker(
        ledger=ledger, snapshots=settings.snapshots, holder=holder,
        floor_s=settings.tick_floor_s, ceiling_s=settings.tick_ceiling_s, slow_read_s=settings.slow_read_s,
        page_rows=settings.sweep_page_rows, sweep_every_s=settings.sweep_every_s, on_swap=feed.publish,
        source=MySQLSource.from_dsn(settings.source) if settings.source else None,
    )
    if settings.origin:
        app[puller_key] = Puller(open_origin(settings.origin, settings.origin_endpoint, settings.origin_timeout_s),
                                 settings.snapshots, settings.origin_poll_s, max_bytes=settings.origin_max_bytes)
    app[files_key] = SnapshotFiles(settings.snapshots, settings.data_dir / "mapped")
    app[service_key] = ServiceClient(settings.service)
    app.cleanup_ctx.extend([ticker_ctx, ledger_ctx, service_ctx, deliveries_ctx])
    app.on_shutdown.append(close_streams)
    app.on_response_prepare.append(secure_headers)
    routes = ROUTES + DASHBOARD_ROUTES + DELIVERY_ROUTES + SESSION_ROUTES
    add_guarded_routes(app.router, routes, Guard(metrics, None, QUERY_LIMIT_BYTES))
    return app
