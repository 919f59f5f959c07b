"""POST /v1/claims in-process on the SQLite ledger: outcomes, idempotency, bad input, draw and rate."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from geo_service.claims import draw_order
from geo_service.snapshot.format import PrizeRow
from geo_service.tokens import mint
from tests.conftest import MakeClient, build_into, fresh_ledger
from tests.support.builders import OTHER_POI, write_claims_data
from tests.support.ledgers import counters, flow_records, sql_rows

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
