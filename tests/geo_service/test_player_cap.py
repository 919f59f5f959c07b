"""The event-wide win cap per player (player_win_cap) on every ledger kind: a storm of one player's claims over
three tasks (on a cluster, three tasks on three nodes, and the player's wins on another), and on a cluster the
holds a claim takes on the player's place: run out, left by a process that died before or after its claim
settled. Checked from the claim records and what the claimers were told, never from the ledger's own counts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from geo_service.ledger import ClaimIdTaken, ClaimRequest, Ledger, LedgerRefusal, Outcome, open_ledger, redis_players
from geo_service.ledger.redis import RedisLedger
from geo_service.ledger.redis_layout import player_key, task_key
from geo_service.tokens import mint
from tests.conftest import LEDGER_KINDS, fresh_ledger
from tests.geo_service.test_ledger_state import lose
from tests.support.builders import claim_poi
from tests.support.claiming import SECRET, TASKS, Served, ledger_world, settle
from tests.support.ledgers import claims_db, counters, redis_client, ship_all, sql_rows, won_claims
from tests.support.processes import service

CAP, TASK_CAP, PLAYERS = 2, 3, 60


def claim(claim_id: str, player: str, task: int, i: int = 0) -> ClaimRequest:
    poi, lat, lng = claim_poi(task, i)
    return ClaimRequest(claim_id, player, task, poi, lat, lng, time.time())


SEEDS = [(t, "cash", 1000, -1) for t in TASKS]


@contextlib.asynccontextmanager
async def seeded(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Ledger, str, str]]:
    """(a fresh ledger of this kind, open and seeded with TASKS' cash prizes, its DSN, its record database or '')."""
    dsn = fresh_ledger(kind, request, tmp_path)
    record_db = fresh_ledger("mysql", request, tmp_path) if dsn.startswith("redis") else ""
    ledger = open_ledger(dsn, record_db)
    try:
        await ledger.seed(SEEDS)
        await ledger.init()
        yield ledger, dsn, record_db
    finally:
        await ledger.close()


@pytest.fixture(params=LEDGER_KINDS)
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Ledger, str, str]]:
    async with seeded(request.param, request, tmp_path) as opened:
        yield opened


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
    # A refusal that lists the player's wins lists exactly those recorded (a worker answers from it later).
    recorded_of = {(players[c], c, t, p) for c, t, p in recorded}
    listed = [(o, players[o.claim_id]) for o in told if o.wins is not None]
    assert listed and all({(u, *w) for w in o.wins or ()} == {r for r in recorded_of if r[0] == u} for o, u in listed)


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[RedisLedger, str, str]]:
    """A cluster ledger whose holds run out after 300 ms and go stale 300 ms later."""
    monkeypatch.setattr(redis_players, "HOLD_LEASE_MS", 300)
    monkeypatch.setattr(redis_players, "HOLD_STALE_MS", 300)
    async with seeded("redis+cluster", request, tmp_path) as (ledger, dsn, record_db):
        assert isinstance(ledger, RedisLedger)
        yield ledger, dsn, record_db


def holds(dsn: str, player: str) -> dict[str, str]:
    client = redis_client(dsn)
    try:
        return {str(k): str(v) for k, v in client.hgetall(player_key(player)).items()}
    finally:
        client.close()


async def test_a_hold_left_by_a_process_killed_after_its_claim_won_counts_as_that_win(
        cluster: tuple[RedisLedger, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    ledger, dsn, record_db = cluster
    first = claim("first", "alice", 1)
    place = await redis_players.hold_place(ledger, first, 1)
    assert place.arg.isdigit()
    # The process settles the claim on the task's node, then dies before confirming the hold.
    won = await ledger._claim(first, ["cash"], redis_players.Caps(TASK_CAP, 1, place.arg), 1e9)
    assert won is not None and won.outcome == "won"
    assert set(holds(dsn, "alice")) == {"h:first"}
    # Before the hold is stale, the player's place is taken: told to retry, nothing won. One round, so the claim's
    # own waiting (up to a second) cannot outlast the hold's 600 ms and settle it by the stale path instead.
    with monkeypatch.context() as one_round:
        one_round.setattr(redis_players, "_ROUNDS", 1)
        with pytest.raises(LedgerRefusal, match="retry"):
            await ledger.claim(claim("second", "alice", 2), ["cash"], TASK_CAP, 1e9, 1)
    assert set(holds(dsn, "alice")) == {"h:first"}
    await asyncio.sleep(0.7)
    # Stale: looked up on the task's node, it won, so it is the player's one win, told with the refusal.
    third = await ledger.claim(claim("third", "alice", 4), ["cash"], TASK_CAP, 1e9, 1)
    assert (third.outcome, third.wins) == ("player_cap_reached", (("first", 1, "cash"),))
    assert holds(dsn, "alice") == {"w:first": "1\tcash"}
    await ship_all(dsn, record_db)
    assert [c for c, _, _ in won_claims(dsn, record_db)] == ["first"]


async def test_a_hold_left_by_a_process_killed_before_its_claim_gives_the_place_back(
        cluster: tuple[RedisLedger, str, str]) -> None:
    ledger, dsn, record_db = cluster
    first = claim("first", "bob", 1)
    place = await redis_players.hold_place(ledger, first, 1)
    await asyncio.sleep(0.35)
    # Its claim arrives after its hold ran out: the task's node settles nothing.
    assert await ledger._claim(first, ["cash"], redis_players.Caps(TASK_CAP, 1, place.arg), 1e9) is None
    await asyncio.sleep(0.35)
    second = await ledger.claim(claim("second", "bob", 2), ["cash"], TASK_CAP, 1e9, 1)
    assert (second.outcome, second.wins_left) == ("won", 0)
    assert set(holds(dsn, "bob")) == {"w:second"}
    # The first claim, retried, takes a place afresh: there is none.
    assert (await ledger.claim(first, ["cash"], TASK_CAP, 1e9, 1)).outcome == "player_cap_reached"
    await ship_all(dsn, record_db)
    assert [c for c, _, _ in won_claims(dsn, record_db)] == ["second"]
    assert redis_client(dsn).hget(task_key(1), "i:cash") == "0"


@pytest.mark.parametrize(("kind", "shipped"), [("redis", True), ("redis+cluster", True), ("redis+cluster", False)])
async def test_a_node_that_lost_a_players_wins_refuses_their_claims_until_the_repair_restores_them(
        kind: str, shipped: bool, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The player's wins hash is lost with its node; their one win is in the record, or (unshipped) still in the
    flow stream of its task's node, which lives on."""
    deployment = request.getfixturevalue("redis_cluster" if kind == "redis+cluster" else "redis_single")
    # On the cluster, a player whose wins live on another node than task 1's keys.
    user = next(u for u in (f"carol{i}" for i in range(100))
                if not deployment.cluster or deployment.node_of(player_key(u)).port != deployment.node_of(task_key(1)).port)
    async with seeded(kind, request, tmp_path) as (ledger, dsn, record_db):
        assert (await ledger.claim(claim("once", user, 1), ["cash"], TASK_CAP, 1e9, 1)).outcome == "won"
        if shipped:
            await ship_all(dsn, record_db)
        lose(deployment, player_key(user), restart=False)
        with pytest.raises(LedgerRefusal):  # the bucket keeping the player's wins has no epoch: it settles nothing
            await ledger.claim(claim("lost", user, 2), ["cash"], TASK_CAP, 1e9, 1)
        await ledger.reconcile(repair=True, seeds=SEEDS)
        assert set(holds(dsn, user)) == {"w:once"}
        after = await ledger.claim(claim("after", user, 4), ["cash"], TASK_CAP, 1e9, 1)
        assert (after.outcome, after.wins_left) == ("player_cap_reached", 0)


@pytest.fixture(params=LEDGER_KINDS)
def capped_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """geo-service serve --workers 2 with an event cap of 2 on a fresh ledger of each kind, as a real process tree."""
    dsn, record_db, snaps = ledger_world(request.param, request, tmp_path)
    extra = ["--record-db", record_db] if record_db else []
    process = service(snaps, tmp_path / "var", "--token-secret", SECRET, "--ledger", dsn, "--win-cap", str(TASK_CAP),
                      "--player-win-cap", str(CAP), "--max-speed-mps", "1e9", *extra, workers=2).start()
    try:
        process.wait_ready(workers=2)
        yield Served(process, dsn, record_db, None)
    finally:
        process.stop()


async def test_a_worker_killed_mid_storm_leaves_no_player_above_the_event_cap(capped_server: Served) -> None:
    """200 players each send 6 claims over the three tasks at once; a worker is SIGKILLed a fifth of the way in
    (on a cluster it may die holding places, between a claim's calls); claimers retry 503s and cut connections with
    the same claim id. No player has more wins recorded than the cap, every win told is recorded, and counters
    equal won claims."""
    server, players = capped_server, 200
    pids = server.process.wait_ready(workers=2)
    expires = int(time.time()) + 3600
    tokens = [mint(f"player{p}", SECRET, expires) for p in range(players)]
    answered: list[int] = []
    limit = asyncio.Semaphore(100)

    async def one(session: aiohttp.ClientSession, player: int, n: int) -> tuple[str, dict[str, Any] | None]:
        task = TASKS[n % len(TASKS)]
        poi, lat, lng = claim_poi(task, player % 50)
        claim_id = f"s{player}-{n}"
        body = {"claim_id": claim_id, "task_id": task, "poi_id": poi, "lat": lat, "lng": lng}
        async with limit:
            for _ in range(100):  # bounded retries of the same claim while the worker is gone
                try:
                    async with session.post(f"{server.process.url}/v1/claims", json=body,
                                            headers={"Authorization": f"Bearer {tokens[player]}"}) as resp:
                        if resp.status == 200:
                            answered.append(1)
                            return claim_id, dict(await resp.json())
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        return claim_id, None

    async def kill_one() -> None:
        for _ in range(600):  # bounded: strike a fifth of the way in, counted in answers
            if len(answered) >= players * 6 // 5:
                break
            await asyncio.sleep(0.01)
        os.kill(pids[1], signal.SIGKILL)

    connector = aiohttp.TCPConnector(limit=100, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        killer = asyncio.create_task(kill_one())
        told = dict(await asyncio.gather(*(one(session, p, n) for p in range(players) for n in range(6))))
        await killer
    issued, won = await settle(server)
    owners = dict(sql_rows(claims_db(server.dsn, server.record_db), "SELECT claim_id, user_id FROM claims"))
    assert max(Counter(owners[c] for c, _, _ in won).values()) <= CAP
    assert {c for c, answer in told.items() if answer and answer["outcome"] == "won"} <= {c for c, _, _ in won}
    assert {c for c, _, _ in won} <= {c for c, answer in told.items() if answer is None or answer["outcome"] == "won"}
    assert {k: v for k, v in issued.items() if v} == dict(Counter((t, p) for _, t, p in won))
    assert sum(1 for answer in told.values() if answer) > players * 5  # the storm went on past the kill


async def test_a_claim_refused_before_it_settles_gives_its_place_back(cluster: tuple[RedisLedger, str, str]) -> None:
    ledger, dsn, _ = cluster
    assert (await ledger.claim(claim("alices", "alice", 1), ["cash"], TASK_CAP, 1e9, 5)).outcome == "won"
    with pytest.raises(ClaimIdTaken):  # bob sends alice's claim id: refused, nothing written
        await ledger.claim(claim("alices", "bob", 1), ["cash"], TASK_CAP, 1e9, 1)
    assert holds(dsn, "bob") == {}
    assert (await ledger.claim(claim("bobs", "bob", 2), ["cash"], TASK_CAP, 1e9, 1)).outcome == "won"


async def test_a_claim_id_holding_a_place_for_one_task_is_refused_for_another(
        cluster: tuple[RedisLedger, str, str]) -> None:
    ledger, dsn, _ = cluster
    first = claim("same-id", "dave", 1)
    place = await redis_players.hold_place(ledger, first, 1)
    with pytest.raises(ClaimIdTaken):  # the same id for task 2 neither takes nor moves task 1's hold
        await ledger.claim(claim("same-id", "dave", 2), ["cash"], TASK_CAP, 1e9, 1)
    assert holds(dsn, "dave") == {"h:same-id": place.new_hold}
    assert (await ledger.claim(first, ["cash"], TASK_CAP, 1e9, 1)).outcome == "won"  # its own retry settles it


async def test_only_a_refusal_settled_now_lists_the_wins_a_worker_may_answer_from(
        world: tuple[Ledger, str, str]) -> None:
    ledger = world[0]
    assert (await ledger.claim(claim("w", "erin", 1), ["cash"], TASK_CAP, 1e9, 1)).outcome == "won"
    refused = await ledger.claim(claim("r", "erin", 2), ["cash"], TASK_CAP, 1e9, 1)
    assert (refused.outcome, refused.wins) == ("player_cap_reached", (("w", 1, "cash"),))
    # A retry gets its first outcome, and never an empty list of wins (a worker would learn "no wins" from it).
    again = await ledger.claim(claim("r", "erin", 2), ["cash"], TASK_CAP, 1e9, 1)
    assert again.outcome == "player_cap_reached" and again.wins in (None, (("w", 1, "cash"),))
