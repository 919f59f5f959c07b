"""POST /v1/claims in-process: outcomes, idempotency, claim ids bound to their claims, bad input, draw and rate."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from geo_service.claims import draw_order
from geo_service.ledger import open_ledger
from geo_service.ledger.redis_layout import bind_key
from geo_service.snapshot.format import PrizeRow
from geo_service.tokens import mint
from tests.conftest import MakeClient, build_into, fresh_ledger
from tests.support.builders import OTHER_POI, claim_poi, set_csv_field, write_claims_data
from tests.support.ledgers import counters, flow_records, redis_client, sql_rows

SECRET = "test-secret"
POI = {"task_id": 1, "poi_id": 1000, "lat": 22.5329, "lng": 113.9305}


def auth(user: str, expires_in_s: int = 3600) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(user, SECRET, int(time.time()) + expires_in_s)}"}


@pytest.fixture
def claims_snapshots(tmp_path: Path) -> Path:
    data, out = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 2, "coupon": 3})
    build_into(data, out)
    return out


def issued(ledger: Path) -> dict[tuple[int, str], int]:
    """Return issued per counter of the SQLite ledger file."""
    return {key: n for key, (_, n) in counters(f"sqlite:///{ledger}").items()}


async def post(client: Any, user: str, claim_id: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/claims", json={"claim_id": claim_id, **POI, **fields}, headers=auth(user))
    return resp.status, await resp.json()


async def test_claims_win_until_every_prize_is_gone_then_say_so(make_client: MakeClient, claims_snapshots: Path,
                                                                tmp_path: Path) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, data_dir=tmp_path / "var")
    outcomes = [await post(client, f"p{i}", f"c{i}") for i in range(7)]
    assert all(status == 200 for status, _ in outcomes)
    won = [body["prize_type"] for _, body in outcomes if body["outcome"] == "won"]
    assert sorted(won) == ["cash", "cash", "coupon", "coupon", "coupon"]  # fallback drains both prizes
    assert [body["outcome"] for _, body in outcomes[5:]] == ["no_prize_left"] * 2
    assert issued(tmp_path / "var" / "ledger.sqlite3") == {(1, "cash"): 2, (1, "coupon"): 3, (2, "cash"): 0}


async def test_a_player_is_capped_per_task(make_client: MakeClient, claims_snapshots: Path) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, win_cap=2)
    outcomes = [(await post(client, "greedy", f"g{i}"))[1]["outcome"] for i in range(4)]
    assert outcomes == ["won", "won", "cap_reached", "cap_reached"]


async def test_the_same_claim_id_sent_20_times_at_once_has_one_outcome_and_one_record(
    make_client: MakeClient, claims_snapshots: Path, any_ledger_dsn: str
) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=any_ledger_dsn)
    answers = await asyncio.gather(*(post(client, "alice", "same-id") for _ in range(20)))
    assert {status for status, _ in answers} == {200}
    assert len({tuple(sorted(body.items())) for _, body in answers}) == 1
    assert answers[0][1]["outcome"] == "won"
    records = (flow_records(any_ledger_dsn) if any_ledger_dsn.startswith("redis")
               else [{"claim_id": c} for (c,) in sql_rows(any_ledger_dsn, "SELECT claim_id FROM claims")])
    assert [r["claim_id"] for r in records] == ["same-id"]
    assert sum(issued for _, issued in counters(any_ledger_dsn).values()) == 1


def records(dsn: str) -> list[tuple[Any, ...]]:
    """Every claim record the ledger holds, read from its own storage: the claims table, or the flow log."""
    if dsn.startswith("redis"):
        return sorted(tuple(sorted(r.items())) for r in flow_records(dsn))
    return sorted(sql_rows(dsn, "SELECT claim_id, user_id, task_id, poi_id, prize_type, outcome FROM claims"))


def assert_conflict(status: int, body: dict[str, Any]) -> None:
    assert status == 409 and body["error"]["code"] == "claim_id_conflict" and body["error"]["status"] == 409
    assert body["error"]["field"] == "claim_id" and "alice" not in body["error"]["message"]


async def test_another_players_claim_id_is_refused_and_changes_nothing(
    make_client: MakeClient, claims_snapshots: Path, any_ledger_dsn: str
) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=any_ledger_dsn)
    status, first = await post(client, "alice", "shared-id")
    assert (status, first["outcome"]) == (200, "won")
    before = counters(any_ledger_dsn), records(any_ledger_dsn)
    assert_conflict(*await post(client, "mallory", "shared-id"))  # at the same POI: it would have won
    assert_conflict(*await post(client, "mallory", "shared-id", lat=22.6229))  # too far: the replay path
    assert (counters(any_ledger_dsn), records(any_ledger_dsn)) == before
    assert await post(client, "alice", "shared-id") == (200, first)  # the owner's retry: its first outcome


async def test_one_claim_id_on_two_tasks_is_refused_the_second_time(
    make_client: MakeClient, claims_snapshots: Path, any_ledger_dsn: str
) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=any_ledger_dsn)
    status, first = await post(client, "alice", "twice")
    assert (status, first["outcome"]) == (200, "won")
    before = counters(any_ledger_dsn), records(any_ledger_dsn)
    assert_conflict(*await post(client, "alice", "twice", task_id=2, poi_id=OTHER_POI, lat=22.5338))
    assert_conflict(*await post(client, "alice", "twice", poi_id=1001, lng=113.93055))  # another POI of the task
    assert (counters(any_ledger_dsn), records(any_ledger_dsn)) == before


async def test_twenty_players_racing_for_one_claim_id_one_owns_it(
    make_client: MakeClient, claims_snapshots: Path, any_ledger_dsn: str
) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=any_ledger_dsn)
    answers = await asyncio.gather(*(post(client, f"racer{i}", "contested") for i in range(20)))
    owners = [i for i, (status, _) in enumerate(answers) if status == 200]
    assert len(owners) == 1 and answers[owners[0]][1]["outcome"] == "won"
    for i, (status, body) in enumerate(answers):
        if i not in owners:
            assert_conflict(status, body)
    # One record, and it is the owner's: the racer its claimer saw answered 200 (on a SQL ledger claim_id is the
    # claims table's key, so a count of one alone would hold whoever the record named).
    recorded = records(any_ledger_dsn)
    users = [dict(r)["user_id"] if any_ledger_dsn.startswith("redis") else r[1] for r in recorded]
    assert users == [f"racer{owners[0]}"]
    assert sum(issued for _, issued in counters(any_ledger_dsn).values()) == 1


BAD: list[tuple[str, dict[str, Any], Any, int, str]] = [
    # (case, headers, body, status, code or outcome)
    ("no token", {}, {"claim_id": "x", **POI}, 401, "invalid_token"),
    ("forged token", {"Authorization": "Bearer " + mint("bob", "other-secret", 2**33)}, {"claim_id": "x", **POI}, 401,
     "invalid_token"),
    ("expired token", {"Authorization": "Bearer " + mint("bob", SECRET, 1000)}, {"claim_id": "x", **POI}, 401,
     "invalid_token"),
    ("malformed json", auth("bob"), b"{nope", 400, "invalid_json"),
    ("json array", auth("bob"), [1, 2], 400, "invalid_json"),
    ("missing poi", auth("bob"), {"claim_id": "x", "task_id": 1, "lat": 22.5, "lng": 113.9}, 400, "missing_param"),
    ("task as string", auth("bob"), {"claim_id": "x", **POI, "task_id": "1"}, 400, "invalid_param"),
    ("lat as bool", auth("bob"), {"claim_id": "x", **POI, "lat": True}, 400, "invalid_param"),
    ("lat out of range", auth("bob"), {"claim_id": "x", **POI, "lat": 91.0}, 400, "invalid_param"),
    ("bad claim id", auth("bob"), {"claim_id": "no spaces", **POI}, 400, "invalid_param"),
    ("unknown task", auth("bob"), {"claim_id": "x", **POI, "task_id": 77}, 404, "not_found"),
    ("unknown poi", auth("bob"), {"claim_id": "x", **POI, "poi_id": 77}, 404, "not_found"),
    ("poi of another task", auth("bob"), {"claim_id": "x", **POI, "poi_id": OTHER_POI}, 404, "poi_not_in_task"),
    ("task id past 64 bits", auth("bob"), {"claim_id": "x", **POI, "task_id": 2**63}, 400, "invalid_param"),
    ("fractional task id", auth("bob"), {"claim_id": "x", **POI, "task_id": 1.5}, 400, "invalid_param"),
    ("whole float task id", auth("bob"), {"claim_id": "x", **POI, "task_id": 1.0, "lat": 22.6229}, 200, "too_far"),
    ("10 km away", auth("bob"), {"claim_id": "x", **POI, "lat": 22.6229}, 200, "too_far"),
]


@pytest.fixture(params=["sqlite", "redis", "redis+cluster"])
def claim_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger of the embedded kind and of the script-per-claim kinds (the movement check runs inside the
    claim's call on one Redis node, in a call of its own on a cluster)."""
    return fresh_ledger(request.param, request, tmp_path)


@pytest.mark.parametrize(("headers", "body", "status", "code"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
async def test_bad_claims_get_their_answer_and_change_no_counter(
    make_client: MakeClient, claims_snapshots: Path, claim_ledger: str, headers: dict[str, str], body: Any, status: int,
    code: str,
) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=claim_ledger)
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    resp = await client.post("/v1/claims", headers=headers, **kwargs)
    assert resp.status == status
    answer = await resp.json()
    assert (answer["error"]["code"] if status >= 400 else answer["outcome"]) == code
    assert {i for _, i in counters(claim_ledger).values()} == {0}
    if claim_ledger.startswith("redis"):
        assert flow_records(claim_ledger) == []  # nothing written to the flow log either


async def test_a_teleport_is_refused_and_changes_no_counter(make_client: MakeClient, claims_snapshots: Path,
                                                           claim_ledger: str) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=claim_ledger, catch_radius_m=20_000)
    status, first = await post(client, "runner", "r1", lat=22.5329 + 0.09)  # 10 km north, inside this test's radius
    assert first["outcome"] == "won"
    before = counters(claim_ledger)
    status, second = await post(client, "runner", "r2")  # back at the POI a moment later: 10 km in ~0 s
    assert status == 200 and second["outcome"] == "implausible_movement"
    assert counters(claim_ledger) == before
    status, third = await post(client, "walker", "w1", lat=22.5329 + 0.0003)  # another player 33 m off: plausible
    assert third["outcome"] == "won"


async def test_claims_are_off_without_a_secret(make_client: MakeClient, claims_snapshots: Path) -> None:
    client = await make_client(claims_snapshots)
    resp = await client.post("/v1/claims", json={"claim_id": "x", **POI}, headers=auth("bob"))
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "claims_disabled"


def test_draw_follows_the_weights() -> None:
    prizes = [PrizeRow(prize_type=p, quota=1, weight=w, rate_per_s=None) for p, w in (("cash", 1), ("coupon", 3), ("never", 0))]
    rng = random.Random(3)
    orders = [draw_order(prizes, rng) for _ in range(4000)]
    firsts = [order[0] for order in orders]
    assert 0.72 < firsts.count("coupon") / len(firsts) < 0.78  # weight 3 of 4
    assert all(sorted(order) == ["cash", "coupon"] for order in orders)  # the rest is the fallback; weight 0 never


@pytest.fixture
def far_apart_snapshots(tmp_path: Path) -> Path:
    """Fifty tasks of one POI each, the POIs 5 km apart on a line north from Nanshan."""
    data, out = tmp_path / "far-data", tmp_path / "far-snaps"
    write_claims_data(data, {"cash": 2}, pois=1, tasks=50)
    for task in range(1, 51):
        set_csv_field(data / "pois.csv", task + 1, "lat", f"{22.5329 + (task - 1) * 0.045:.6f}")
    build_into(data, out)
    return out


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_one_players_concurrent_claims_5_km_apart_pass_the_movement_check_once(
    make_client: MakeClient, far_apart_snapshots: Path, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    dsn = fresh_ledger(kind, request, tmp_path)
    client = await make_client(far_apart_snapshots, token_secret=SECRET, ledger=dsn)
    claims = [{"task_id": t, "poi_id": claim_poi(t, 0)[0], "lat": 22.5329 + (t - 1) * 0.045, "lng": claim_poi(t, 0)[2]}
              for t in range(1, 51)]
    answers = await asyncio.gather(*(post(client, "sprinter", f"far-{c['task_id']}", **c) for c in claims))
    outcomes = [body["outcome"] for _, body in answers]
    assert outcomes.count("won") == 1 and outcomes.count("implausible_movement") == 49, outcomes
    assert sum(issued for _, issued in counters(dsn).values()) == 1


async def test_the_kill_switch_is_held_by_the_ledger_without_a_collector(
    make_client: MakeClient, claims_snapshots: Path, any_ledger_dsn: str
) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=any_ledger_dsn)  # no collector
    asked = time.time()
    assert (await post(client, "alice", "before"))[1]["outcome"] == "won"
    answered = time.time()
    won_at = [float(r["at"]) for r in flow_records(any_ledger_dsn)] if any_ledger_dsn.startswith("redis") else [
        float(t) for (t,) in sql_rows(any_ledger_dsn, "SELECT created_at FROM claims WHERE outcome = 'won'")]
    # The record's time is the ledger's word; the claimer's clock says when the win can have happened at all.
    assert len(won_at) == 1 and asked <= won_at[0] <= answered
    ledger = open_ledger(any_ledger_dsn)
    try:
        assert await ledger.set_enabled(1, False) == pytest.approx(won_at[0], abs=1e-6)  # the last win it allowed
        before = counters(any_ledger_dsn)
        status, body = await post(client, "bob", "after")
        assert (status, body["outcome"]) == (200, "task_inactive")
        assert counters(any_ledger_dsn) == before
        assert await ledger.set_enabled(1, True) == pytest.approx(won_at[0], abs=1e-6)
        assert (await post(client, "carol", "again"))[1]["outcome"] == "won"
        assert await ledger.set_enabled(2, False) is None  # a task without a win
    finally:
        await ledger.close()


@pytest.mark.parametrize("kind", ["redis", "redis+cluster"])
async def test_an_outcome_outliving_its_binding_still_belongs_to_its_player(
    make_client: MakeClient, claims_snapshots: Path, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    dsn = fresh_ledger(kind, request, tmp_path)
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=dsn)
    status, first = await post(client, "alice", "lapsed")
    assert (status, first["outcome"]) == (200, "won")
    redis = redis_client(dsn)
    try:
        assert redis.delete(bind_key("lapsed")) == 1  # as if the binding had expired before the outcome
        before = counters(dsn), records(dsn)
        assert_conflict(*await post(client, "mallory", "lapsed"))
        assert_conflict(*await post(client, "mallory", "lapsed", lat=22.6229))  # too far: the replay path
        assert (counters(dsn), records(dsn)) == before
        assert redis.get(bind_key("lapsed")) is None  # the refused claim kept no binding of its own
    finally:
        redis.close()
    assert await post(client, "alice", "lapsed") == (200, first)


async def test_claim_ids_that_differ_only_in_case_are_two_claims_on_every_ledger(
    make_client: MakeClient, claims_snapshots: Path, any_ledger_dsn: str
) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=any_ledger_dsn)
    upper, lower = await post(client, "alice", "Case-1"), await post(client, "alice", "case-1")
    assert (upper[0], lower[0]) == (200, 200)
    assert (upper[1]["claim_id"], lower[1]["claim_id"]) == ("Case-1", "case-1")
    ids = [dict(r)["claim_id"] if any_ledger_dsn.startswith("redis") else r[0] for r in records(any_ledger_dsn)]
    assert sorted(ids) == ["Case-1", "case-1"]
    assert await post(client, "alice", "case-1") == lower  # each still answers its own first outcome
