"""A partner that honours the contract (contract.py): the demo wallet `make run` starts, and the base of the
tests' stub. It checks every signature, applies each delivery_id once (a repeat answers already_delivered),
parks players without an account where accounts are required, and keeps its own log of what it received and
applied: the independent record the tests check exactly-once against.

    POST /deliver/{channel}      the contract
    POST /accounts/{user_id}     open a player's account (a channel that requires accounts then delivers)
    GET  /statement/{channel}    the delivery ids applied, one a line: the statement `geo-deliver reconcile` reads
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from delivery.contract import SIGNATURE_HEADER, SignatureError, verify

MAX_BODY_BYTES = 16_384


@dataclass(slots=True)
class PartnerLog:
    received: list[tuple[float, str, str]] = field(default_factory=list)  # (time, channel, delivery_id) signed requests
    applied: list[tuple[float, str, str]] = field(default_factory=list)  # (time, channel, delivery_id) of each effect made
    refused_signatures: int = 0


class Partner:
    def __init__(self, secrets: Mapping[str, str], accounts_required: frozenset[str] = frozenset()) -> None:
        self.secrets = dict(secrets)  # channel -> signing secret
        self.accounts_required = accounts_required  # channels that park a player without an account
        self.accounts: set[str] = set()
        self.log = PartnerLog()
        self._references: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/deliver/{channel}", self.deliver)
        app.router.add_post("/accounts/{user_id}", self.open_account)
        app.router.add_get("/statement/{channel}", self.statement)
        return app

    async def deliver(self, request: web.Request) -> web.StreamResponse:
        channel = request.match_info["channel"]
        secret = self.secrets.get(channel)
        if secret is None:
            return web.json_response({"status": "unknown_channel"}, status=404)
        body = await request.read()
        try:
            verify(secret, request.headers.get(SIGNATURE_HEADER, ""), body, time.time())
            delivery = orjson.loads(body)
            delivery_id, user_id = str(delivery["delivery_id"]), str(delivery["user_id"])
        except SignatureError as exc:
            self.log.refused_signatures += 1
            return web.json_response({"status": "bad_signature", "message": str(exc)}, status=401)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.json_response({"status": "bad_request"}, status=400)
        self.log.received.append((time.time(), channel, delivery_id))
        return await self.answer(request, channel, delivery_id, user_id)

    async def answer(self, request: web.Request, channel: str, delivery_id: str, user_id: str) -> web.StreamResponse:
        """The contract's answer to a signed delivery (the tests' stub puts its faults in front of this)."""
        if delivery_id in self._references:
            return web.json_response({"status": "already_delivered", "reference": self._references[delivery_id]})
        if channel in self.accounts_required and user_id not in self.accounts:
            return web.json_response({"status": "no_account"}, status=409)
        reference = f"{channel}-{len(self._references) + 1}"
        self._references[delivery_id] = reference
        self.log.applied.append((time.time(), channel, delivery_id))
        return web.json_response({"status": "delivered", "reference": reference})

    async def open_account(self, request: web.Request) -> web.Response:
        self.accounts.add(request.match_info["user_id"])
        return web.json_response({"status": "open"})

    async def statement(self, request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        ids = [d for _, c, d in self.log.applied if c == channel]
        return web.Response(text="".join(f"{d}\n" for d in ids), content_type="text/plain")
