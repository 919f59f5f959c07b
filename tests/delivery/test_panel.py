"""The collector's deliveries panel and its admin actions, against a real record database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.deliveries import channel, land_wins, states, write_channels
from tests.support.ledgers import execute

ADMIN = "panel-admin-" + "x" * 32


@pytest.fixture
async def panel(make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> tuple[Any, str]:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    land_wins(ledger, [f"p-{i}" for i in range(40)], "cash")
    land_wins(ledger, [f"q-{i}" for i in range(5)], "coupon")
    execute(ledger, "UPDATE deliveries SET state = 'failed', due_at = NULL, last_error = 'HTTP 400 <b>bad</b>' "
                    "WHERE claim_id IN ('p-1', 'p-2')")
    execute(ledger, "UPDATE deliveries SET state = 'parked', due_at = NULL WHERE claim_id = 'p-3'")
    channels = write_channels(tmp_path / "channels.json", channel("wallet", "http://127.0.0.1:9", ["cash"], rate_per_s=300),
                              channel("coupons", "http://127.0.0.1:9", ["coupon"], kind="slow", rate_per_s=20))
    client = await make_collector(sample_snapshots, ledger, channels=str(channels), admin_token=ADMIN)
    return client, ledger


async def test_the_panel_shows_each_channels_backlog_states_and_dead_letters(panel: tuple[Any, str]) -> None:
    client, _ = panel
    body = await (await client.get("/v1/deliveries")).json()
    wallet, coupons = body["channels"]
    assert (wallet["name"], wallet["class"], wallet["rate_per_s"], wallet["paused"]) == ("wallet", "fast", 300, False)
    assert wallet["backlog"] == 37 and wallet["states"] == {"failed": 2, "parked": 1}
    assert wallet["oldest_pending_s"] is not None and wallet["oldest_pending_s"] >= 0
    assert sorted(d["claim_id"] for d in wallet["dead_letters"]) == ["p-1", "p-2"]
    assert wallet["dead_letters"][0]["last_error"] == "HTTP 400 <b>bad</b>"  # as the partner said it, shown as text
    assert coupons["backlog"] == 5 and coupons["dead_letters"] == []


async def test_admin_actions_retry_a_dead_letter_and_pause_a_channel(panel: tuple[Any, str]) -> None:
    client, ledger = panel
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert (await client.post("/v1/admin/deliveries/p-1/retry", json={})).status == 401
    retried = await client.post("/v1/admin/deliveries/p-1/retry", json={}, headers=auth)
    assert retried.status == 200 and states(ledger)["p-1"] == "pending"
    again = await client.post("/v1/admin/deliveries/p-1/retry", json={}, headers=auth)
    assert again.status == 404  # no longer a dead letter
    paused = await client.post("/v1/admin/channels/wallet", json={"paused": True, "rate_per_s": 120}, headers=auth)
    assert (await paused.json()) == {"channel": "wallet", "rate_per_s": 120.0, "paused": True}
    wallet = (await (await client.get("/v1/deliveries")).json())["channels"][0]
    assert wallet["paused"] is True and wallet["rate_per_s"] == 120
    for body, field in (({"rate_per_s": 0}, "rate_per_s"), ({"rate_per_s": True}, "rate_per_s"),
                        ({"paused": "yes"}, "paused"), ({"colour": 1}, "colour"), ({}, "rate_per_s")):
        refused = await client.post("/v1/admin/channels/wallet", json=body, headers=auth)
        answer = await refused.json()
        assert refused.status == 400 and answer["error"]["field"] == field, answer
    unknown = await client.post("/v1/admin/channels/nosuch", json={"paused": True}, headers=auth)
    assert unknown.status == 404


async def test_without_a_channels_file_there_is_no_panel(make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    client = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}")
    missing = await client.get("/v1/deliveries")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
