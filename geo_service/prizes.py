"""A player's prizes: their wins with each delivery's state and ETA, and asking for one again.

Only the token's player's rows are ever read or touched: every query is by user_id, and a claim id that is not
theirs is a 404 like one that does not exist (whose it is, is nobody else's business).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from geo_service.auth import player
from geo_service.keys import deliveries_key, ledger_key, settings_key, snapshot_key
from geo_service.ledger import LedgerError, open_records
from geo_service.ledger.deliveries import DeliveryStore
from geo_service.nearby.task_status import iso_utc
from geo_service.web.errors import DeliveriesUnavailable, LedgerUnavailable, NotFound, TooManyRequests
from geo_service.web.params import claim_id_param
from geo_service.web.responses import json_response

MAX_PRIZES = 200  # newest first; a player with more sees the newest


async def deliveries_ctx(app: web.Application) -> AsyncIterator[None]:
    """Reach the deliveries: in the SQL ledger itself, or in a Redis ledger's record database (its own pool)."""
    ledger, settings = app[ledger_key], app[settings_key]
    own = None
    if ledger.kind in ("sqlite", "mysql"):
        app[deliveries_key] = DeliveryStore(ledger)  # type: ignore[arg-type]  # a SQL ledger runs plans
    elif settings.record_db:
        own = open_records(settings.ledger_dsn, settings.record_db)
        app[deliveries_key] = DeliveryStore(own)
    yield
    if own is not None:
        await own.close()


def _store(request: web.Request) -> DeliveryStore:
    store = request.app.get(deliveries_key)
    if store is None:
        raise DeliveriesUnavailable("prizes are kept in the record database, and this service has none (set record_db)")
    return store


def _shown(row: dict[str, Any], etas: dict[str, Any]) -> dict[str, Any]:
    """Return a prize as the player sees it: times as ISO-8601, the partner's reference once delivered, the ETA."""
    delivery = etas.get(row["prize_type"], {})
    shown = {"claim_id": row["claim_id"], "task_id": int(row["task_id"]), "prize_type": row["prize_type"],
             "won_at": iso_utc(float(row["won_at"])), "state": row["state"], "attempts": int(row["attempts"]),
             "eta": delivery.get("eta"), "channel": delivery.get("channel")}
    if row["state"] == "delivered":
        shown |= {"reference": row["partner_ref"], "delivered_at": iso_utc(float(row["delivered_at"]))}
    return shown


def _etas(request: web.Request) -> dict[str, Any]:
    live = request.app[snapshot_key].live
    return dict(live.lookup.snapshot.manifest.get("deliveries", {})) if live is not None else {}


async def _ledger_call(request: web.Request, work: Any) -> Any:
    try:
        async with asyncio.timeout(request.app[settings_key].claim_timeout_s):
            return await work
    except (LedgerError, TimeoutError):
        raise LedgerUnavailable("the record database is unreachable; try again shortly", headers={"Retry-After": "1"}) from None


async def me(request: web.Request) -> web.Response:
    """Who the token names, and the rules a client obeys for them (read once at start: no ledger call)."""
    user_id = await player(request)
    settings = request.app[settings_key]
    return json_response({"user_id": user_id, "catch_radius_m": settings.catch_radius_m, "win_cap": settings.win_cap,
                          "player_win_cap": settings.player_win_cap or None})


async def my_prizes(request: web.Request) -> web.Response:
    user_id = await player(request)
    rows = await _ledger_call(request, _store(request).prizes(user_id, MAX_PRIZES))
    etas = _etas(request)
    return json_response({"user_id": user_id, "prizes": [_shown(r, etas) for r in rows]})


async def ask_again(request: web.Request) -> web.Response:
    user_id = await player(request)
    claim_id = claim_id_param(request.match_info["claim_id"])
    every_s = request.app[settings_key].ask_again_every_s
    prize, wait = await _ledger_call(request, _store(request).ask_again(user_id, claim_id, every_s))
    if prize is None:
        raise NotFound(f"you have no prize {claim_id}", field="claim_id")
    if wait > 0:
        raise TooManyRequests(f"asked for this prize less than {every_s:g} s ago", headers={"Retry-After": str(math.ceil(wait))})
    return json_response(_shown(prize, _etas(request)), status=202 if prize["state"] == "pending" else 200)
