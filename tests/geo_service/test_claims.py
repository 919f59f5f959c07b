"""POST /v1/claims in-process on the SQLite ledger: outcomes, idempotency, bad input, draw and rate."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from geo_service.claims import RateLimiter, draw_order
from geo_service.tokens import mint
from tests.conftest import MakeClient, build_into, ledger_rows
from tests.support.builders import OTHER_POI, write_claims_data

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


def counters(ledger: Path) -> dict[tuple[int, str], int]:
    with sqlite3.connect(ledger) as conn:
        return {(t, p): i for t, p, i in conn.execute("SELECT task_id, prize_type, issued FROM prize_counters")}


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
    assert counters(tmp_path / "var" / "ledger.sqlite3") == {(1, "cash"): 2, (1, "coupon"): 3, (2, "cash"): 0}


async def test_a_player_is_capped_per_task(make_client: MakeClient, claims_snapshots: Path) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, win_cap=2)
    outcomes = [(await post(client, "greedy", f"g{i}"))[1]["outcome"] for i in range(4)]
    assert outcomes == ["won", "won", "cap_reached", "cap_reached"]


async def test_the_same_claim_id_sent_20_times_at_once_has_one_outcome_and_one_row(
    make_client: MakeClient, claims_snapshots: Path, ledger_dsn: str
) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, ledger=ledger_dsn)
    answers = await asyncio.gather(*(post(client, "alice", "same-id") for _ in range(20)))
    assert {status for status, _ in answers} == {200}
    assert len({tuple(sorted(body.items())) for _, body in answers}) == 1
    assert answers[0][1]["outcome"] == "won"
    assert ledger_rows(ledger_dsn, "SELECT COUNT(*) FROM claims WHERE claim_id = 'same-id'") == [(1,)]
    assert ledger_rows(ledger_dsn, "SELECT SUM(issued) FROM prize_counters")[0][0] == 1


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
    ("poi of another task", auth("bob"), {"claim_id": "x", **POI, "poi_id": OTHER_POI}, 422, "poi_not_in_task"),
    ("10 km away", auth("bob"), {"claim_id": "x", **POI, "lat": 22.6229}, 200, "too_far"),
]


@pytest.mark.parametrize(("headers", "body", "status", "code"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
async def test_bad_claims_get_their_answer_and_change_no_counter(
    make_client: MakeClient, claims_snapshots: Path, tmp_path: Path, headers: dict[str, str], body: Any, status: int,
    code: str,
) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, data_dir=tmp_path / "var")
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    resp = await client.post("/v1/claims", headers=headers, **kwargs)
    assert resp.status == status
    answer = await resp.json()
    assert (answer["error"]["code"] if status >= 400 else answer["outcome"]) == code
    assert set(counters(tmp_path / "var" / "ledger.sqlite3").values()) == {0}


async def test_a_teleport_is_refused_and_changes_no_counter(make_client: MakeClient, claims_snapshots: Path,
                                                           tmp_path: Path) -> None:
    client = await make_client(claims_snapshots, token_secret=SECRET, data_dir=tmp_path / "var", catch_radius_m=20_000)
    status, first = await post(client, "runner", "r1", lat=22.5329 + 0.09)  # 10 km north, inside this test's radius
    assert first["outcome"] == "won"
    before = counters(tmp_path / "var" / "ledger.sqlite3")
    status, second = await post(client, "runner", "r2")  # back at the POI a moment later: 10 km in ~0 s
    assert status == 200 and second["outcome"] == "implausible_movement"
    assert counters(tmp_path / "var" / "ledger.sqlite3") == before


async def test_claims_are_off_without_a_secret(make_client: MakeClient, claims_snapshots: Path) -> None:
    client = await make_client(claims_snapshots)
    resp = await client.post("/v1/claims", json={"claim_id": "x", **POI}, headers=auth("bob"))
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "claims_disabled"


def test_draw_follows_the_weights_and_skips_prizes_over_their_rate() -> None:
    prizes = [{"prize_type": "cash", "weight": 1, "rate_per_s": None},
              {"prize_type": "coupon", "weight": 3, "rate_per_s": None},
              {"prize_type": "never", "weight": 0, "rate_per_s": None}]
    rng = random.Random(3)
    firsts = [draw_order(1, prizes, RateLimiter(), rng, 0.0)[0] for _ in range(4000)]
    assert 0.72 < firsts.count("coupon") / len(firsts) < 0.78  # weight 3 of 4
    assert "never" not in firsts
    limiter = RateLimiter()
    limited = [{"prize_type": "cash", "weight": 1, "rate_per_s": 10.0}]
    assert draw_order(1, limited, limiter, rng, 100.0) == ["cash"]
    limiter.record(1, "cash", 10.0, 100.0)  # 10/s = one per 100 ms slice
    assert draw_order(1, limited, limiter, rng, 100.05) == []
    assert draw_order(1, limited, limiter, rng, 100.1) == ["cash"]


def test_rate_limits_spread_a_second_evenly_across_workers() -> None:
    limiter = RateLimiter(share=0.5)  # one of two workers: 20/s overall is 10/s here, one per 100 ms
    issued = []
    for step in range(1000):  # one simulated second in 1 ms steps
        now = 50.0 + step / 1000
        if limiter.allows(1, "cash", 20.0, now):
            limiter.record(1, "cash", 20.0, now)
            issued.append(now)
    assert len(issued) == 10
    gaps = [b - a for a, b in zip(issued, issued[1:])]
    assert min(gaps) >= 0.099  # never two in the same 100 ms
