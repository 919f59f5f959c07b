"""Staggered openings and the event-wide cap at the HTTP surface: 1,000 players of 5 groups meet a task that opens
2 s apart per group beside one that opens for all at once; a capped player is answered without the ledger.

Checked from the ledger's own claim records (their times, their players), with each player's group computed
here by an independent FNV-1a, never from the service's counts."""

from __future__ import annotations

import asyncio
import csv
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from geo_service.tokens import mint
from tests.conftest import MakeClient, build_into
from tests.support.builders import claim_poi, write_claims_data
from tests.support.ledgers import sql_rows

SECRET = "stagger-secret"
PLAYERS, GROUPS, STEP_S = 1000, 5, 2


def fnv1a_group(user_id: str, groups: int) -> int:
    """The published grouping, written out here as the oracle: FNV-1a 32-bit of the UTF-8 id, mod groups."""
    h = 0x811C9DC5
    for byte in user_id.encode():
        h ^= byte
        h = (h * 0x01000193) % 2**32
    return h % groups


def with_task_columns(path: Path, starts_at: int, columns: dict[int, dict[str, str]]) -> None:
    """Set every task's starts_at and add the given columns (empty for tasks not named)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = sorted({name for extra in columns.values() for name in extra})
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, [*rows[0], *names])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "starts_at": str(starts_at), **{n: columns.get(int(row["task_id"]), {}).get(n, "")
                                                                    for n in names}})


@pytest.fixture
def staggered(tmp_path: Path) -> tuple[Path, int]:
    """(snapshots, opening): task 1 opens for 5 groups 2 s apart, task 2 for all at once, both a few seconds on."""
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 5000}, tasks=2)
    opening = int(time.time()) + 5
    with_task_columns(data / "tasks.csv", opening, {1: {"stagger_s": str(STEP_S), "stagger_groups": str(GROUPS)}})
    build_into(data, snaps)
    return snaps, opening


@pytest.fixture
def two_tasks(tmp_path: Path) -> Path:
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 100}, tasks=2)
    build_into(data, snaps)
    return snaps


async def test_a_staggered_task_opens_group_by_group_and_its_first_second_takes_a_fifth(
        make_client: MakeClient, staggered: tuple[Path, int], tmp_path: Path) -> None:
    snaps, opening = staggered
    client = await make_client(snaps, token_secret=SECRET, max_speed_mps=1e9, win_cap=1, data_dir=tmp_path / "var")
    tokens = {f"player{i}": mint(f"player{i}", SECRET, opening + 3600) for i in range(PLAYERS)}
    early: list[tuple[str, str]] = []
    limit = asyncio.Semaphore(200)

    async def play(user: str, task: int) -> str:
        poi, lat, lng = claim_poi(task, 0)
        for attempt in range(5):  # bounded: not_yet, then at the opening it names
            body = {"claim_id": f"{user}-{task}-{attempt}", "task_id": task, "poi_id": poi, "lat": lat, "lng": lng}
            async with limit:
                resp = await client.post("/v1/claims", json=body, headers={"Authorization": f"Bearer {tokens[user]}"})
                answer: dict[str, Any] = await resp.json()
            if answer["outcome"] != "not_yet":
                return str(answer["outcome"])
            early.append((user, answer["opens_at"]))
            await asyncio.sleep(max(0.0, datetime.fromisoformat(answer["opens_at"]).timestamp() - time.time()))
        return "gave_up"

    await asyncio.sleep(max(0.0, opening - time.time()))
    cell = (await (await client.get("/v1/nearby", params={"lat": claim_poi(1, 0)[1], "lng": claim_poi(1, 0)[2]})).json())
    shown = {t["task_id"]: t.get("stagger") for t in cell["tasks"]}
    assert shown[2] is None and {k: v for k, v in shown[1].items() if k != "starts_at"} == {"groups": GROUPS,
                                                                                            "step_s": STEP_S}
    assert datetime.fromisoformat(shown[1]["starts_at"]).timestamp() == opening
    outcomes = await asyncio.gather(*(play(user, task) for user in tokens for task in (1, 2)))
    assert Counter(outcomes) == {"won": 2 * PLAYERS}

    group = {user: fnv1a_group(user, GROUPS) for user in tokens}
    # Every early claim was told its own group's opening, only players of later groups were early, and all of the
    # last group (whose opening is 8 s on: a player of group 1 whose first claim is answered after 2 s is not early).
    assert all(datetime.fromisoformat(at).timestamp() == opening + group[user] * STEP_S for user, at in early)
    early_players = {user for user, _ in early}
    assert early_players <= {user for user in tokens if group[user] > 0}
    assert {user for user in tokens if group[user] == GROUPS - 1} <= early_players
    rows = sql_rows(f"sqlite:///{tmp_path / 'var' / 'ledger.sqlite3'}",
                    "SELECT user_id, task_id, created_at FROM claims WHERE outcome = 'won'")
    wins_1 = [(str(u), float(at)) for u, t, at in rows if t == 1]
    assert min(at - (opening + group[u] * STEP_S) for u, at in wins_1) >= 0  # no win before its group opened
    # The first second: the staggered task's wins come from group 0 alone (about a fifth of the players), while the
    # other task takes what the ledger can settle in a second, everyone's (the figures: run this with -s).
    first = Counter(t for _, t, at in rows if at < opening + 1)
    group_0 = sum(1 for g in group.values() if g == 0)
    print(f"wins in the first second: staggered {first[1]}, all at once {first[2]}; group 0 holds {group_0}")
    assert 0.15 * PLAYERS < group_0 < 0.25 * PLAYERS and first[1] <= group_0 < first[2]


async def test_a_capped_player_is_answered_without_the_ledger_after_its_first_refusal(
        make_client: MakeClient, two_tasks: Path, tmp_path: Path) -> None:
    snaps = two_tasks
    ledger = tmp_path / "var" / "ledger.sqlite3"
    client = await make_client(snaps, token_secret=SECRET, max_speed_mps=1e9, player_win_cap=2,
                               data_dir=tmp_path / "var")
    headers = {"Authorization": f"Bearer {mint('capped', SECRET, int(time.time()) + 3600)}"}

    async def claim(n: int) -> dict[str, Any]:
        task = 1 + n % 2
        poi, lat, lng = claim_poi(task, 0)
        resp = await client.post("/v1/claims", headers=headers, json={
            "claim_id": f"c{n}", "task_id": task, "poi_id": poi, "lat": lat, "lng": lng})
        assert resp.status == 200
        return dict(await resp.json())

    answers = [await claim(n) for n in range(12)]
    assert [(a["outcome"], a["wins_left"]) for a in answers[:3]] == [("won", 1), ("won", 0), ("player_cap_reached", 0)]
    assert {(a["outcome"], a["wins_left"]) for a in answers[3:]} == {("player_cap_reached", 0)}
    # The ledger saw three claims (two wins, one refusal); the nine after were answered by this worker alone.
    recorded = sql_rows(f"sqlite:///{ledger}", "SELECT claim_id, outcome FROM claims WHERE user_id = 'capped'")
    assert sorted(recorded) == [("c0", "won"), ("c1", "won"), ("c2", "player_cap_reached")]
    metrics = await (await client.get("/metrics")).text()
    assert 'geodrop_claims_capped_locally_total{worker="0"} 9' in metrics
    # A winning claim retried after the cap was learnt still gets its first outcome, from the same place.
    replay = await claim(0)
    assert (replay["outcome"], replay["prize_type"]) == ("won", "cash")
    assert len(sql_rows(f"sqlite:///{ledger}", "SELECT claim_id FROM claims WHERE user_id = 'capped'")) == 3
