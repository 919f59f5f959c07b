"""The event-wide win cap per player (player_win_cap) on every ledger kind: a storm of one player's claims over
three tasks (on a cluster, three tasks on three nodes, and the player's wins on another), and on a cluster the
holds a claim takes on the player's place: run out, left by a process that died before or after its claim
settled. Checked from the claim records and what the claimers were told, never from the ledger's own counts."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from geo_service.ledger import ClaimRequest, Ledger, LedgerRefusal, Outcome, open_ledger, redis_players
from geo_service.ledger.redis import RedisLedger
from geo_service.ledger.redis_layout import player_key, task_key
from tests.conftest import LEDGER_KINDS, fresh_ledger
from tests.geo_service.test_ledger_state import lose
from tests.support.builders import claim_poi
from tests.support.claiming import TASKS
from tests.support.ledgers import claims_db, counters, redis_client, ship_all, sql_rows, won_claims

CAP, TASK_CAP, PLAYERS = 2, 3, 60


def claim(claim_id: str, player: str, task: int, i: int = 0) -> ClaimRequest:
    poi, lat, lng = claim_poi(task, i)
    return ClaimRequest(claim_id, player, task, poi, lat, lng, time.time())


@pytest.fixture(params=LEDGER_KINDS)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Ledger, str, str]]:
    """(an open ledger of each kind seeded with TASKS' cash prizes, its DSN, its record database or '')."""
    dsn = fresh_ledger(request.param, request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path) if dsn.startswith("redis") else ""
    ledger = open_ledger(dsn, record_db)
    try:
        await ledger.seed([(t, "cash", 1000, -1) for t in TASKS])
        await ledger.init()
        yield ledger, dsn, record_db
    finally:
        await ledger.close()


async def test_a_storm_of_claims_over_three_tasks_wins_each_player_exactly_the_event_cap(
        world: tuple[Ledger, str, str]) -> None:
    ledger, dsn, record_db = world
    # Every player claims each task 3 times at once (9 claims, a task's cap of 3 would allow 9 wins): 540 claims.
    sends = [(f"p{p}", t, k) for p in range(PLAYERS) for t in TASKS for k in range(3)]
    random.Random(7).shuffle(sends)
    limit = asyncio.Semaphore(60)

    async def one(player: str, task: int, k: int) -> Outcome:
        async with limit:
            return await ledger.claim(claim(f"{player}-{task}-{k}", player, task), ["cash"], TASK_CAP, 1e9, CAP)

    told = await asyncio.gather(*(one(*s) for s in sends))
    if record_db:
        await ship_all(dsn, record_db)
    recorded = won_claims(dsn, record_db)
    players = dict(sql_rows(claims_db(dsn, record_db), "SELECT claim_id, user_id FROM claims"))
    per_player = Counter(players[c] for c, _, _ in recorded)
    assert per_player == {f"p{p}": CAP for p in range(PLAYERS)}  # none above the cap; demand filled every place
    wins_told = {o.claim_id for o in told if o.outcome == "won"}
    assert wins_told == {c for c, _, _ in recorded}  # what the claimers were told is what was recorded
    assert {k: i for k, (_, i) in counters(dsn).items() if i} == dict(Counter((t, p) for _, t, p in recorded))
    assert Counter(o.outcome for o in told) == {"won": CAP * PLAYERS, "player_cap_reached": len(sends) - CAP * PLAYERS}
    assert all(o.wins_left is not None and 0 <= o.wins_left < CAP for o in told)
    assert all(o.wins_left == 0 for o in told if o.outcome == "player_cap_reached")


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RedisLedger, str, str]]:
    """A cluster ledger whose holds run out after 300 ms and go stale 300 ms later."""
    monkeypatch.setattr(redis_players, "HOLD_LEASE_MS", 300)
    monkeypatch.setattr(redis_players, "HOLD_STALE_MS", 300)
    dsn = fresh_ledger("redis+cluster", request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path)
    ledger = open_ledger(dsn, record_db)
    assert isinstance(ledger, RedisLedger)
    try:
        await ledger.seed([(t, "cash", 1000, -1) for t in TASKS])
        await ledger.init()
        yield ledger, dsn, record_db
    finally:
        await ledger.close()


def holds(dsn: str, player: str) -> dict[str, str]:
    client = redis_client(dsn)
    try:
        return {str(k): str(v) for k, v in client.hgetall(player_key(player)).items()}
    finally:
        client.close()


async def test_a_hold_left_by_a_process_killed_after_its_claim_won_counts_as_that_win(
        cluster: tuple[RedisLedger, str, str]) -> None:
    ledger, dsn, record_db = cluster
    first = claim("first", "alice", 1)
    place = await redis_players.hold_place(ledger, first, 1)
    assert place.isdigit()
    # The process settles the claim on the task's node, then dies before confirming the hold.
    won = await ledger._claim(first, ["cash"], redis_players.Caps(TASK_CAP, 1, place), 1e9)
    assert won is not None and won.outcome == "won"
    assert set(holds(dsn, "alice")) == {"h:first"}
    # Before the hold is stale, the player's place is taken: refused, nothing won.
    assert (await ledger.claim(claim("second", "alice", 2), ["cash"], TASK_CAP, 1e9, 1)).outcome == "player_cap_reached"
    await asyncio.sleep(0.7)
    # Stale: looked up on the task's node, it won, so it is the player's one win.
    assert (await ledger.claim(claim("third", "alice", 4), ["cash"], TASK_CAP, 1e9, 1)).outcome == "player_cap_reached"
    assert set(holds(dsn, "alice")) == {"w:first"}
    await ship_all(dsn, record_db)
    assert [c for c, _, _ in won_claims(dsn, record_db)] == ["first"]


async def test_a_hold_left_by_a_process_killed_before_its_claim_gives_the_place_back(
        cluster: tuple[RedisLedger, str, str]) -> None:
    ledger, dsn, record_db = cluster
    first = claim("first", "bob", 1)
    place = await redis_players.hold_place(ledger, first, 1)
    await asyncio.sleep(0.35)
    # Its claim arrives after its hold ran out: the task's node settles nothing.
    assert await ledger._claim(first, ["cash"], redis_players.Caps(TASK_CAP, 1, place), 1e9) is None
    await asyncio.sleep(0.35)
    second = await ledger.claim(claim("second", "bob", 2), ["cash"], TASK_CAP, 1e9, 1)
    assert (second.outcome, second.wins_left) == ("won", 0)
    assert set(holds(dsn, "bob")) == {"w:second"}
    # The first claim, retried, takes a place afresh: there is none.
    assert (await ledger.claim(first, ["cash"], TASK_CAP, 1e9, 1)).outcome == "player_cap_reached"
    await ship_all(dsn, record_db)
    assert [c for c, _, _ in won_claims(dsn, record_db)] == ["second"]
    assert redis_client(dsn).hget(task_key(1), "i:cash") == "0"


@pytest.mark.parametrize("kind", ["redis", "redis+cluster"])
async def test_a_node_that_lost_a_players_wins_refuses_their_claims_until_the_repair_restores_them(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    dsn = fresh_ledger(kind, request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path)
    deployment = request.getfixturevalue("redis_cluster" if kind == "redis+cluster" else "redis_single")
    seeds = [(t, "cash", 1000, -1) for t in TASKS]
    ledger = open_ledger(dsn, record_db)
    try:
        await ledger.seed(seeds)
        await ledger.init()
        assert (await ledger.claim(claim("once", "carol", 1), ["cash"], TASK_CAP, 1e9, 1)).outcome == "won"
        await ship_all(dsn, record_db)
        lose(deployment, player_key("carol"), restart=False)
        with pytest.raises(LedgerRefusal):  # the bucket keeping carol's wins has no epoch: it settles nothing
            await ledger.claim(claim("lost", "carol", 2), ["cash"], TASK_CAP, 1e9, 1)
        await ledger.reconcile(repair=True, seeds=seeds)
        assert set(holds(dsn, "carol")) == {"w:once"}
        after = await ledger.claim(claim("after", "carol", 4), ["cash"], TASK_CAP, 1e9, 1)
        assert (after.outcome, after.wins_left) == ("player_cap_reached", 0)
    finally:
        await ledger.close()
