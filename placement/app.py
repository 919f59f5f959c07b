"""create_app for the placement console: wiring only; the draft is opened (and seeded) as the app starts."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

from aiohttp import web

from delivery.channels import ChannelsError, load_channels
from geo_service.snapshot.folder import current_seq
from geo_service.snapshot.format import read_tables
from geo_service.web.metrics import Metrics
from geo_service.web.routing import QUERY_LIMIT_BYTES, Guard, add_guarded_routes
from geo_service.web.static import SECURE_HEADERS
from loaders.display import district_outlines
from loaders.errors import LoaderError
from placement import store
from placement.auth import OperatorBook
from placement.db import Db
from placement.folders import seed
from placement.handlers import ROUTES as DRAFT_ROUTES
from placement.keys import DraftState, book_key, db_key, settings_key, state_key
from placement.routes import ROUTES
from placement.settings import ConsoleSettings


async def draft_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the draft (creating its tables, filling an empty one from the seed folder), read its districts once,
    and stop running jobs at exit."""
    settings, db, state = app[settings_key], app[db_key], app[state_key]
    await db.create_tables()
    if settings.seed:
        await seed(db, Path(settings.seed))
    live = await asyncio.to_thread(current_seq, settings.snapshots)
    if live is not None:  # what was published before the console knew: the ledger may hold it all
        tasks, _ = await asyncio.to_thread(read_tables, settings.snapshots / str(live))
        await db.write(lambda cur: store.mark_published(cur, tasks))
    state.districts = await db.read(store.districts)
    outlines = await asyncio.to_thread(district_outlines, state.districts)
    state.outlines = await asyncio.to_thread(gzip.compress, outlines, 6, mtime=0)
    state.outlines_etag = f'"{hashlib.sha256(outlines).hexdigest()[:16]}"'
    if settings.channels:
        try:
            state.channels = load_channels(settings.channels)
        except ChannelsError as exc:
            raise LoaderError(str(exc)) from None
    yield
    await stop_jobs(state)


async def stop_jobs(state: DraftState) -> None:
    """Ask a running job to stop (a build gives up at its next step, publishing nothing) and wait for it to audit
    itself; one that does not end within STOP_WAIT_S is cancelled."""
    if state.job is not None:
        state.job.stopping = True
    if state.tasks:
        await asyncio.wait(state.tasks, timeout=STOP_WAIT_S)
    for task in list(state.tasks):
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


STOP_WAIT_S = 60


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURE_HEADERS)


def create_app(settings: ConsoleSettings) -> web.Application:
    """Return the console application; nothing is opened until it starts."""
    app = web.Application(client_max_size=settings.max_upload_bytes)
    app[settings_key] = settings
    app[db_key] = Db(settings.draft)
    app[book_key] = OperatorBook(settings.operators)
    app[state_key] = DraftState()
    app.cleanup_ctx.append(draft_ctx)
    app.on_response_prepare.append(secure_headers)
    add_guarded_routes(app.router, DRAFT_ROUTES + ROUTES, Guard(Metrics(), None, QUERY_LIMIT_BYTES))
    return app
