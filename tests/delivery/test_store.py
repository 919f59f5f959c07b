"""The delivery record's transactions where the dispatchers' drills cannot aim: a late answer against a newer lease,
a win whose claim row another transaction holds, an answer the database refuses amid good ones."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pymysql
import pytest

from delivery.channels import load_channels
from delivery.dispatcher import ChannelRunner
from geo_service.dsn import MySQLSettings
from geo_service.ledger import open_records
from geo_service.ledger.deliveries import DeliveryStore, Result
from tests.conftest import fresh_ledger
from tests.support.deliveries import channel, land_wins, states, write_channels
from tests.support.ledgers import execute, sql_rows


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_a_late_answer_moves_only_the_lease_it_was_sent_under(kind: str, request: pytest.FixtureRequest,
                                                                     tmp_path: Path) -> None:
    dsn = fresh_ledger(kind, request, tmp_path)
    land_wins(dsn, ["late-1"], "cash")
    runner = open_records(dsn)
    store = DeliveryStore(runner)
    try:
        first = await store.lease("wallet", ["cash"], 10_000_000, 10, "me", 30)
        assert [d.attempt for d in first.deliveries] == [1]
        execute(dsn, "UPDATE deliveries SET due_at = 0 WHERE claim_id = 'late-1'")  # the first lease ran out
        time.sleep(0.11)  # the next slice
        second = await store.lease("wallet", ["cash"], 10_000_000, 10, "me", 30)
        assert [d.attempt for d in second.deliveries] == [2]
        # The first call's answer comes late: it must not move the second call's lease.
        assert await store.settle([Result("late-1", "failed", "me", 1, "HTTP 400")]) == {"failed": 0}
        assert states(dsn) == {"late-1": "sending"}
        # Both answers in one batch (the first recorded late): the second lease's answer is the one that counts.
        assert await store.settle([Result("late-1", "failed", "me", 1, "HTTP 400"),
                                   Result("late-1", "retry", "me", 2, "HTTP 500", time.time() + 5)]) == {"retry": 1}
        assert states(dsn) == {"late-1": "pending"}
    finally:
        await runner.close()


async def test_a_win_whose_claim_row_is_locked_elsewhere_is_leased_not_failed(request: pytest.FixtureRequest,
                                                                              tmp_path: Path) -> None:
    dsn = fresh_ledger("mysql", request, tmp_path)
    land_wins(dsn, ["held-1", "held-2"], "cash")
    s = MySQLSettings.from_dsn(dsn)
    other = pymysql.connect(host=s.host, port=s.port, user=s.user, password=s.password, database=s.database)
    runner = open_records(dsn)
    store = DeliveryStore(runner)
    try:
        await store.channel_state(["wallet"])  # connected (its schema statements run) before the rows are held
        with other.cursor() as cur:  # a shipper re-upserting its batch holds the claims rows meanwhile
            cur.execute("BEGIN")
            cur.execute("SELECT claim_id FROM claims WHERE claim_id IN ('held-1', 'held-2') FOR UPDATE")
        lease = await store.lease("wallet", ["cash"], 10_000_000, 10, "me", 30)
        assert sorted(d.claim_id for d in lease.deliveries) == ["held-1", "held-2"]
        assert set(states(dsn).values()) == {"sending"}
    finally:
        other.rollback()
        other.close()
        await runner.close()


async def test_an_answer_the_database_refuses_does_not_hold_back_the_others(request: pytest.FixtureRequest,
                                                                            tmp_path: Path) -> None:
    dsn = fresh_ledger("mysql", request, tmp_path)
    land_wins(dsn, ["ok-1", "ok-2", "bad-1"], "cash")
    channels = load_channels(write_channels(tmp_path / "c.json", channel("wallet", "http://127.0.0.1:9", ["cash"])))
    runner = open_records(dsn)
    store = DeliveryStore(runner)
    try:
        await store.lease("wallet", ["cash"], 10_000_000, 10, "me", 30)
        dispatcher = ChannelRunner(channels.channels[0], store, "x" * 20, "me")
        batch = [Result("ok-1", "delivered", "me", 1, "ref-1"), Result("bad-1", "retry", "me", 1, "HTTP 500", math.nan),
                 Result("ok-2", "delivered", "me", 1, "ref-2")]
        assert await dispatcher._record(batch)  # MySQL refuses a NaN time: that answer alone is dropped
    finally:
        await runner.close()
    assert states(dsn) == {"ok-1": "delivered", "ok-2": "delivered", "bad-1": "sending"}  # its lease ends; sent again
    assert dict(sql_rows(dsn, "SELECT claim_id, partner_ref FROM deliveries WHERE state = 'delivered'")) == {
        "ok-1": "ref-1", "ok-2": "ref-2"}
    assert dispatcher.health.failures >= 1
