"""create_app: wiring only. Every resource is a cleanup context; all state lives under AppKeys."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress

import aiohttp
from aiohttp import web

from geo_service.claims import CappedPlayers, ClaimRules
from geo_service.handlers import ROUTES
from geo_service.jwt_tokens import verifier_of
from geo_service.keys import (
    capped_key,
    http_key,
    jwt_key,
    ledger_check_key,
    ledger_key,
    load_key,
    metrics_key,
    puller_key,
    rng_key,
    rules_key,
    settings_key,
    snapshot_key,
    status_key,
    watcher_key,
)
from geo_service.ledger import Ledger, LedgerCheck, LedgerError, Seed, open_ledger
from geo_service.ledger.rates import rate_milli
from geo_service.nearby import Levels, Lookup
from geo_service.nearby.live import SnapshotHolder, Watcher
from geo_service.prizes import deliveries_ctx
from geo_service.settings import ServiceSettings
from geo_service.snapshot.format import TaskRow
from geo_service.snapshot.origin import open_origin
from geo_service.snapshot.pull import Puller, pulling
from geo_service.status_poller import StatusPoller
from geo_service.web.load import LoadMonitor
from geo_service.web.metrics import Metrics
from geo_service.web.routing import Guard, add_guarded_routes

log = logging.getLogger("geodrop.service")
# Health and metrics must answer even when the service sheds load: they are how operators see it.
_NEVER_SHED = frozenset({"/healthz", "/metrics"})


async def snapshot_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load the live snapshot (if any), then watch CURRENT (SIGHUP forces a check), pull new ones from the
    origin if there is one, and prepare the status of each task-window edge ahead of it."""
    watcher = app[watcher_key]
    outcome = await watcher.refresh()
    if outcome["seq"] is None:
        log.warning("no snapshot to serve yet; answering 503 until one is published",
                    extra={"snapshots": str(app[settings_key].snapshots), "error": outcome["error"]})
    tasks = [asyncio.create_task(watcher.run(), name="snapshot-watcher"),
             asyncio.create_task(app[snapshot_key].prepare_edges(), name="status-edges")]
    loop = asyncio.get_running_loop()
    with suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, watcher.wake)
    async with pulling(app.get(puller_key)):
        yield
    with suppress(NotImplementedError, RuntimeError):
        loop.remove_signal_handler(signal.SIGHUP)
    for task in tasks:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the ledger (it connects lazily, so a database that is down does not stop /v1/nearby) and keep
    checking that its server meets the ledger's requirements: claims wait for a first answer, given here
    for up to claim_timeout_s before serving starts."""
    ledger = app[ledger_key]
    with suppress(TimeoutError):
        await asyncio.wait_for(app[ledger_check_key].look(ledger), app[settings_key].claim_timeout_s)
    check = asyncio.create_task(app[ledger_check_key].run(ledger), name="ledger-check")
    yield
    check.cancel()
    with suppress(asyncio.CancelledError):
        await check
    await ledger.close()


def seeds_of(tasks: Sequence[TaskRow]) -> list[Seed]:
    """Return the prize counters a snapshot's tasks need, as the ledger first makes them."""
    return [(t["task_id"], p["prize_type"], p["quota"], rate_milli(p["rate_per_s"])) for t in tasks for p in t["prizes"]]


async def seed_counters(ledger: Ledger, lookup: Lookup) -> None:
    """Create the counters of a snapshot's tasks before it goes live (a no-op for existing ones)."""
    try:
        await ledger.seed(seeds_of(lookup.snapshot.tasks))
    except LedgerError as exc:
        # Nearby must not depend on the ledger: serve the snapshot; its new tasks answer
        # no_prize_left until a later load seeds them.
        log.warning("could not seed prize counters", extra={"seq": lookup.seq, "error": str(exc)})


async def status_ctx(app: web.Application) -> AsyncIterator[None]:
    """Poll the collector for task status, if one is configured."""
    poller = app[status_key]
    task = asyncio.create_task(poller.run(), name="status-poller") if poller.url else None
    yield
    if task is not None:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's one outgoing HTTP client. The JWKS is fetched now, unawaited (a JWKS that is down must not hold
    serving back); a fetch in flight is stopped before the client closes."""
    async with aiohttp.ClientSession() as session:
        app[http_key] = session
        verifier = app.get(jwt_key)
        if verifier is not None:
            verifier.warm(session)
        yield
        if verifier is not None:
            await verifier.close()


async def load_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[load_key].probe_lag(), name="lag-probe")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def create_app(settings: ServiceSettings) -> web.Application:
    """Return the geo_service application; nothing is opened until it starts."""
    app = web.Application()
    holder = SnapshotHolder()
    app[settings_key] = settings
    app[snapshot_key] = holder
    ledger = open_ledger(settings.ledger_dsn, settings.record_db)
    app[ledger_key] = ledger
    app[ledger_check_key] = LedgerCheck(unsafe_ok=settings.ledger_unsafe_ok)
    if settings.ledger_unsafe_ok:
        log.warning("ledger_unsafe_ok: claims settle even where the ledger's server lacks its guarantees; "
                    "a throwaway test box only", extra={"ledger": ledger.kind})
    app[rng_key] = random.Random()
    app[rules_key] = ClaimRules(settings.catch_radius_m, settings.win_cap, settings.max_speed_mps, settings.player_win_cap)
    app[capped_key] = CappedPlayers(settings.capped_players_max)
    app[watcher_key] = watcher = Watcher(holder, settings.snapshots, settings.stage_dir, settings.poll_interval_s,
                                         on_load=lambda lookup: seed_counters(ledger, lookup),
                                         levels=Levels(settings.level_few_below, settings.level_last_below))
    if settings.origin:
        app[puller_key] = Puller(open_origin(settings.origin, settings.origin_endpoint, settings.origin_timeout_s),
                                 settings.snapshots, settings.origin_poll_s, on_pulled=watcher.wake,
                                 max_bytes=settings.origin_max_bytes)
    app[load_key] = load = LoadMonitor(settings)
    app[metrics_key] = metrics = Metrics()
    app[status_key] = StatusPoller(settings.collector.rstrip("/"), holder, settings.status_poll_s)
    verifier = verifier_of(settings)
    if verifier is not None:
        app[jwt_key] = verifier
    app.cleanup_ctx.extend([http_ctx, load_ctx, ledger_ctx, deliveries_ctx, snapshot_ctx, status_ctx])
    add_guarded_routes(app.router, ROUTES, Guard(metrics, load, settings.max_query_bytes, _NEVER_SHED))
    return app
