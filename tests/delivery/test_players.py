"""The player's side of delivery, through the service: their prizes with state and ETA, parking until the partner
has their account, asking again, and nobody else's prizes ever; and a win on every ledger kind delivered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from delivery.app import dispatching, make_dispatcher
from delivery.channels import load_channels
from delivery.settings import DeliverySettings
from geo_service.ledger import ClaimRequest, open_ledger
from geo_service.tokens import mint
from tests.conftest import LEDGER_KINDS, MakeClient, build_into, fresh_ledger
from tests.support.builders import claim_poi, write_claims_data
from tests.support.deliveries import channel, secret_env, write_channels
from tests.support.ledgers import ship_all, sql_rows
from tests.support.partner_stub import Stub, serving

SECRET = "players-secret"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in secret_env().items():
        monkeypatch.setenv(name, value)


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(user, SECRET, int(time.time()) + 600)}"}


async def until(client: TestClient[Any, Any], user: str, state: str, timeout_s: float = 20) -> dict[str, Any]:
    """Poll the player's prizes until their first is in `state`; return it."""
    deadline = time.monotonic() + timeout_s
    while True:  # bounded by the deadline
        prizes = (await (await client.get("/v1/me/prizes", headers=bearer(user))).json())["prizes"]
        if prizes and prizes[0]["state"] == state:
            return dict(prizes[0])
        assert time.monotonic() < deadline, f"{user}'s prizes never reached {state}: {prizes}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def world(tmp_path: Path, make_client: MakeClient) -> AsyncIterator[tuple[TestClient[Any, Any], Stub, Path, str]]:
    stub = Stub(["wallet", "coupons"], accounts_required=frozenset({"wallet"}))
    async with serving(stub) as url:
        channels = write_channels(tmp_path / "channels.json", channel("wallet", url, ["cash"], eta="within a minute"),
                                  channel("coupons", url, ["coupon"], kind="slow", eta="within 24 h"))
        write_claims_data(tmp_path / "data", {"cash": 3})
        await asyncio.to_thread(build_into, tmp_path / "data", tmp_path / "snaps", "--channels", str(channels))
        ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        client = await make_client(tmp_path / "snaps", ledger=ledger, token_secret=SECRET, ask_again_every_s=1.0)
        yield client, stub, channels, ledger


async def test_a_parked_prize_is_delivered_when_the_player_asks_after_opening_an_account(
        world: tuple[TestClient[Any, Any], Stub, Path, str]) -> None:
    client, stub, channels, ledger = world
    poi, lat, lng = claim_poi(1, 0)
    won = await client.post("/v1/claims", json={"claim_id": "alice-1", "task_id": 1, "poi_id": poi, "lat": lat, "lng": lng},
                            headers=bearer("alice"))
    assert (await won.json())["outcome"] == "won"
    pending = await until(client, "alice", "pending")
    assert pending | {"won_at": None} == {"claim_id": "alice-1", "task_id": 1, "prize_type": "cash", "won_at": None,
                                         "state": "pending", "attempts": 0, "eta": "within a minute", "channel": "wallet"}
    settings = DeliverySettings(ledger=ledger, channels=str(channels))
    async with dispatching(make_dispatcher(settings, load_channels(channels))):
        parked = await until(client, "alice", "parked")  # the partner has no account for alice yet
        assert parked["attempts"] == 1 and "reference" not in parked
        # Nobody else sees or touches alice's prize.
        other = await client.get("/v1/me/prizes", headers=bearer("bob"))
        assert (await other.json()) == {"user_id": "bob", "prizes": []}
        stolen = await client.post("/v1/me/prizes/alice-1/deliver", headers=bearer("bob"))
        assert stolen.status == 404 and (await stolen.json())["error"]["code"] == "not_found"
        # Asking before the account exists parks it again; asking twice at once is limited.
        asked = await client.post("/v1/me/prizes/alice-1/deliver", headers=bearer("alice"))
        assert asked.status == 202 and (await asked.json())["state"] == "pending"
        again = await client.post("/v1/me/prizes/alice-1/deliver", headers=bearer("alice"))
        assert again.status == 429 and int(again.headers["Retry-After"]) >= 1
        await until(client, "alice", "parked")
        await asyncio.sleep(1.0)
        stub.accounts.add("alice")  # alice opens her account with the partner
        asked = await client.post("/v1/me/prizes/alice-1/deliver", headers=bearer("alice"))
        assert asked.status == 202
        delivered = await until(client, "alice", "delivered")
        assert delivered["reference"] == stub._references["alice-1"] and delivered["delivered_at"]
        await asyncio.sleep(1.0)
        sent = len(stub.log.received)
        asked = await client.post("/v1/me/prizes/alice-1/deliver", headers=bearer("alice"))
        assert asked.status == 200 and (await asked.json())["state"] == "delivered"
        await asyncio.sleep(0.5)
    assert len(stub.log.received) == sent  # a delivered prize is never sent again
    assert stub.applied() == {"alice-1"} and stub.duplicates() == []


async def test_the_prize_routes_refuse_bad_input_with_the_error_shape(
        world: tuple[TestClient[Any, Any], Stub, Path, str]) -> None:
    client, _, _, _ = world
    for headers, status, code in (({}, 401, "invalid_token"), ({"Authorization": "Bearer x.y"}, 401, "invalid_token")):
        answer = await client.get("/v1/me/prizes", headers=headers)
        assert answer.status == status and (await answer.json())["error"]["code"] == code
    bad = await client.post("/v1/me/prizes/%C3%A9t%C3%A9/deliver", headers=bearer("alice"))
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "claim_id"
    wrong = await client.get("/v1/me/prizes/x/deliver", headers=bearer("alice"))
    assert wrong.status == 405


@pytest.mark.parametrize("kind", LEDGER_KINDS)
async def test_wins_on_every_ledger_kind_reach_the_partner_once(kind: str, request: pytest.FixtureRequest,
                                                                tmp_path: Path) -> None:
    dsn = fresh_ledger(kind, request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path) if dsn.startswith("redis") else ""
    ledger = open_ledger(dsn, record_db)
    await ledger.seed([(1, "cash", 20, -1)])
    poi, lat, lng = claim_poi(1, 0)
    outcomes = await asyncio.gather(*(ledger.claim(ClaimRequest(f"{kind}-{i}", f"p{i}", 1, poi, lat, lng, time.time()),
                                                   ["cash"], 5, 1e9) for i in range(50)))
    await ledger.close()
    told = {o.claim_id for o in outcomes if o.outcome == "won"}  # what the claimers were told
    assert len(told) == 20
    if record_db:
        await ship_all(dsn, record_db)  # the shipper makes the delivery rows with the claim records
    stub = Stub(["wallet"])
    async with serving(stub) as url:
        channels = write_channels(tmp_path / "channels.json", channel("wallet", url, ["cash"]))
        settings = DeliverySettings(ledger=dsn, record_db=record_db, channels=str(channels))
        async with dispatching(make_dispatcher(settings, load_channels(channels))):
            for _ in range(100):  # bounded: 10 s
                if stub.applied() == told:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)  # the last answers recorded
    assert stub.applied() == told and stub.duplicates() == []
    states = sql_rows(record_db or dsn, "SELECT claim_id, state FROM deliveries")
    assert dict(states) == dict.fromkeys(told, "delivered")
