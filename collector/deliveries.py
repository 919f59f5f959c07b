"""The deliveries panel's routes: its figures (delivery_panel.py), and the operators' actions (admin token,
audited): retry a dead letter, change a channel's rate, pause or resume it (every dispatcher obeys within 100 ms)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from collector.delivery_panel import DeliveryPanel
from collector.keys import deliveries_key, settings_key
from collector.security import admin_check
from delivery.channels import load_channels, rate_problem
from geo_service.ledger import LedgerError, open_records
from geo_service.ledger.deliveries import CONFIGURED
from geo_service.web.errors import InvalidParam, LedgerUnavailable, NotFound
from geo_service.web.params import claim_id_param, field_of, json_object
from geo_service.web.responses import json_response
from geo_service.web.routing import Route

log = logging.getLogger("geodrop.collector")


async def deliveries_ctx(app: web.Application) -> AsyncIterator[None]:
    """With a channels file set, open the record database the panel reads (the SQL ledger's, or record_db)."""
    settings = app[settings_key]
    if settings.channels:
        channels = load_channels(settings.channels)
        app[deliveries_key] = DeliveryPanel(channels.channels, open_records(settings.ledger, settings.record_db))
    yield
    if deliveries_key in app:
        await app[deliveries_key].runner.close()


def _panel(request: web.Request) -> DeliveryPanel:
    panel = request.app.get(deliveries_key)
    if panel is None:
        raise NotFound("no deliveries panel: the collector has no channels file (set channels)")
    return panel


async def deliveries(request: web.Request) -> web.Response:
    try:
        return json_response(await _panel(request).read())
    except LedgerError as exc:
        raise LedgerUnavailable(f"the record database is unreachable: {exc}", headers={"Retry-After": "2"}) from None


async def retry_delivery(request: web.Request) -> web.Response:
    """An operator sends a dead letter (or a parked delivery) again now."""
    admin_check(request, "delivery retries")
    claim_id = claim_id_param(request.match_info["claim_id"])
    try:
        moved = await _panel(request).store.retry_failed(claim_id)
    except LedgerError as exc:
        raise LedgerUnavailable(f"the record database is unreachable; nothing changed: {exc}") from None
    if not moved:
        raise NotFound(f"no failed or parked delivery {claim_id}", field="claim_id")
    log.info("delivery retried", extra={"audit": "delivery_retry", "claim_id": claim_id, "at": time.time(),
                                        "client": request.remote})
    return json_response({"claim_id": claim_id, "state": "pending"})


def _channel_change(raw: bytes) -> tuple[int | None, bool | None]:
    body = json_object(raw)
    unknown = set(body) - {"rate_per_s", "paused"}
    if unknown or not body:
        raise InvalidParam("give rate_per_s and/or paused, nothing else", field=sorted(unknown)[0] if unknown else "rate_per_s")
    rate = paused = None
    if body.get("rate_per_s", 0) is None:
        rate = CONFIGURED  # null: the channels file's rate again
    elif "rate_per_s" in body:
        value = float(field_of(body, "rate_per_s", (int, float), "a number"))
        if problem := rate_problem(value):
            raise InvalidParam(f"rate_per_s {problem}, or null for the configured rate", field="rate_per_s")
        rate = round(value * 1000)
    if "paused" in body:
        if not isinstance(body["paused"], bool):
            raise InvalidParam("paused must be true or false", field="paused")
        paused = body["paused"]
    return rate, paused


async def set_channel(request: web.Request) -> web.Response:
    """A channel's live rate and pause switch: POST {"rate_per_s": 300} and/or {"paused": true}."""
    admin_check(request, "channel changes")
    panel = _panel(request)
    name = request.match_info["name"]
    if name not in {c.name for c in panel.channels}:
        raise NotFound(f"no channel {name!r}", field="name")
    rate, paused = _channel_change(await request.read())
    try:
        rate_now, paused_now = await panel.store.set_channel(name, rate, paused)
    except LedgerError as exc:
        raise LedgerUnavailable(f"the record database is unreachable; nothing changed: {exc}") from None
    log.info("channel changed", extra={"audit": "channel", "channel": name, "rate_milli": rate_now, "paused": paused_now,
                                       "at": time.time(), "client": request.remote})
    return json_response({"channel": name, "rate_per_s": None if rate_now is None else rate_now / 1000, "paused": paused_now})


ROUTES: list[Route] = [
    ("GET", "/v1/deliveries", deliveries),
    ("POST", "/v1/admin/deliveries/{claim_id}/retry", retry_delivery),
    ("POST", "/v1/admin/channels/{name}", set_channel),
]
