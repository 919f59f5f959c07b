"""Live quota and rate control: changes take effect without a rebuild, are numbered, shown, and refused
when they would go below what is issued."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from geo_service.tokens import mint
from tests.conftest import MakeClient, build_into
from tests.support.builders import write_claims_data
from tests.support.ledgers import counters

SECRET, ADMIN = "prize-secret", "prize-admin"
AT_POI = {"task_id": 1, "poi_id": 1000, "lat": 22.5329, "lng": 113.9305}


async def _until(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def _claim(service: Any, player: str) -> str:
    token = mint(player, SECRET, int(time.time()) + 60)
    resp = await service.post("/v1/claims", headers={"Authorization": f"Bearer {token}"},
                              json={"claim_id": f"c-{player}", **AT_POI})
    return str((await resp.json())["outcome"])


async def _visible(service: Any) -> set[int]:
    body = await (await service.get("/v1/nearby?lat=22.5329&lng=113.9305")).json()
    return {t["task_id"] for t in body["tasks"]}


async def _change(collector: Any, body: dict[str, Any], token: str = ADMIN, path: str = "/v1/admin/prizes/1/cash") -> Any:
    return await collector.post(path, json=body, headers={"Authorization": f"Bearer {token}"})


async def test_raising_an_exhausted_quota_brings_the_task_back_and_the_change_is_shown(
        make_client: MakeClient, make_collector: Any, any_ledger_dsn: str, tmp_path: Path) -> None:
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 2}, pois=2)
    await asyncio.to_thread(build_into, data, snaps)
    collector = await make_collector(snaps, any_ledger_dsn, tick_floor_s=0.1, admin_token=ADMIN)
    service = await make_client(snaps, token_secret=SECRET, ledger=any_ledger_dsn,
                                collector=str(collector.make_url("")), status_poll_s=0.05)
    assert [await _claim(service, f"p{k}") for k in range(3)] == ["won", "won", "no_prize_left"]
    await _until(lambda: _gone(service))

    refused = await _change(collector, {"quota": 1})
    assert refused.status == 409 and (await refused.json())["error"]["code"] == "quota_below_issued"
    assert counters(any_ledger_dsn)[(1, "cash")] == (2, 2)  # nothing changed

    resp = await _change(collector, {"quota": 4, "rate_per_s": 50})
    change = await resp.json()
    assert resp.status == 200 and change["quota"] == 4 and change["rate_per_s"] == 50.0 and change["seq"] >= 1
    assert counters(any_ledger_dsn)[(1, "cash")] == (4, 2)
    await _until(lambda: _back(service))  # the collector's next tick, then the service's next poll
    assert await _claim(service, "p9") == "won"

    later = await (await _change(collector, {"rate_per_s": None})).json()  # no limit: a second change
    assert later["seq"] > change["seq"] and later["rate_per_s"] is None and later["quota"] == 4

    async def shown() -> bool:
        status = await (await collector.get("/v1/tasks/status")).json()
        return bool([c["seq"] for c in status["changes"]] == [later["seq"]])  # the latest per prize

    await _until(shown)
    status = await (await collector.get("/v1/tasks/status")).json()
    k = status["prize_types"].index("cash")
    row = status["tasks"]["task_id"].index(1)
    assert status["tasks"]["quota"][row][k] == 4 and status["tasks"]["rate_per_s"][row][k] is None
    districts = await (await collector.get("/v1/districts")).json()
    assert [c["seq"] for c in districts["districts"][0]["changes"]] == [later["seq"]]
    detail = await (await collector.get("/v1/districts/440305")).json()
    prize = next(t for t in detail["task_list"] if t["task_id"] == 1)["prizes"][0]
    assert prize["quota"] == 4 and prize["change"]["seq"] == later["seq"] and prize["change"]["at"].endswith("Z")


async def _gone(service: Any) -> bool:
    return 1 not in await _visible(service)


async def _back(service: Any) -> bool:
    return 1 in await _visible(service)


@pytest.mark.parametrize(("token", "body", "path", "status", "code"), [
    ("wrong", {"quota": 9}, "/v1/admin/prizes/1/cash", 401, "invalid_token"),
    (ADMIN, {"quota": -1}, "/v1/admin/prizes/1/cash", 400, "invalid_param"),
    (ADMIN, {"quota": "9"}, "/v1/admin/prizes/1/cash", 400, "invalid_param"),
    (ADMIN, {"rate_per_s": -2}, "/v1/admin/prizes/1/cash", 400, "invalid_param"),
    (ADMIN, {"colour": "red"}, "/v1/admin/prizes/1/cash", 400, "invalid_param"),
    (ADMIN, {}, "/v1/admin/prizes/1/cash", 400, "invalid_param"),
    (ADMIN, {"quota": 9}, "/v1/admin/prizes/1/gold", 404, "not_found"),
    (ADMIN, {"quota": 9}, "/v1/admin/prizes/one/cash", 400, "invalid_param"),
])
async def test_bad_changes_are_refused_and_change_nothing(
        make_collector: Any, tmp_path: Path, token: str, body: dict[str, Any], path: str, status: int, code: str) -> None:
    data, snaps, ledger = tmp_path / "data", tmp_path / "snaps", f"sqlite:///{tmp_path / 'l.sqlite3'}"
    write_claims_data(data, {"cash": 2}, pois=2)
    await asyncio.to_thread(build_into, data, snaps)
    collector = await make_collector(snaps, ledger, admin_token=ADMIN)
    from geo_service.ledger import open_ledger

    seeded = open_ledger(ledger)
    await seeded.seed([(1, "cash", 2, -1)])
    await seeded.close()
    resp = await _change(collector, body, token, path)
    assert resp.status == status and (await resp.json())["error"]["code"] == code
    assert counters(ledger) == {(1, "cash"): (2, 0)}


async def test_without_an_admin_token_the_route_is_off(make_collector: Any, sample_snapshots: Path, tmp_path: Path) -> None:
    collector = await make_collector(sample_snapshots, f"sqlite:///{tmp_path / 'l.sqlite3'}")
    resp = await _change(collector, {"quota": 9}, "anything")
    body = await resp.json()
    assert resp.status == 401 and body["error"]["code"] == "invalid_token" and "no admin_token" in body["error"]["message"]


def test_the_cli_refuses_a_quota_below_what_is_issued_with_a_clear_message(tmp_path: Path) -> None:
    from geo_service.ledger import ClaimRequest, open_ledger

    ledger = f"sqlite:///{tmp_path / 'l.sqlite3'}"

    async def two_wins() -> None:
        opened = open_ledger(ledger)
        await opened.seed([(1, "cash", 5, -1)])
        for k in range(2):
            await opened.claim(ClaimRequest(f"c{k}", f"u{k}", 1, 1000, 22.5, 113.9, time.time()), ["cash"], 5, 30.0)
        await opened.close()

    asyncio.run(two_wins())
    run = [sys.executable, "-m", "collector", "prize", "set", "1", "cash", "--ledger", ledger]
    refused = subprocess.run([*run, "--quota", "1"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "quota 1 is below the 2 already issued of task 1 cash" in refused.stderr
    bad = subprocess.run([*run, "--rate", "fast"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--rate must be a number" in bad.stderr
    assert counters(ledger) == {(1, "cash"): (5, 2)}
    done = subprocess.run([*run, "--quota", "2", "--rate", "0.5"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and '"quota":2' in done.stdout and '"rate_per_s":0.5' in done.stdout
    assert counters(ledger) == {(1, "cash"): (2, 2)}
