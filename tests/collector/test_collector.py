"""The collector against real ledgers and a real geo_service: exact totals, kill switch, exhaustion,
collector down, torn reads and the stream."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from collector.keys import ticker_key
from geo_service.keys import status_key
from geo_service.snapshot.folder import open_current
from geo_service.tokens import mint
from tests.conftest import MakeClient, build_into
from tests.support.builders import write_claims_data

SECRET = "collector-secret"


async def _claims(service: Any, snapshots: Path, count: int, seed: int) -> list[tuple[int, str]]:
    """Send `count` claims by distinct players at random POIs of active tasks, 32 at a time; return the (task_id,
    prize_type) of each win the claimers were told of."""
    snap = open_current(snapshots)
    now = time.time()
    active = {i for i, t in enumerate(snap.tasks) if t["enabled"] and t["starts_at"] <= now < t["ends_at"]}
    rows = [i for i in range(len(snap.cells)) if int(snap.task_index[i]) in active]
    rng = random.Random(seed)
    limit = asyncio.Semaphore(32)
    wins: list[tuple[int, str]] = []

    async def one(k: int) -> None:
        i = rng.choice(rows)
        task_id = int(snap.tasks[int(snap.task_index[i])]["task_id"])
        body = {"claim_id": f"s{seed}-{k}", "task_id": task_id,
                "poi_id": int(snap.poi_ids[i]), "lat": float(snap.degrees(i)[0]), "lng": float(snap.degrees(i)[1])}
        token = mint(f"u{seed}-{k}", SECRET, int(now) + 3600)
        async with limit:
            resp = await service.post("/v1/claims", json=body, headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
            if answer["outcome"] == "won":
                wins.append((task_id, str(answer["prize_type"])))

    await asyncio.gather(*(one(k) for k in range(count)))
    return wins


async def test_district_totals_are_the_quotas_less_the_wins_the_claimers_were_told_of(
    make_client: MakeClient, make_collector: Any, sample_snapshots: Path, any_ledger_dsn: str
) -> None:
    service = await make_client(sample_snapshots, token_secret=SECRET, ledger=any_ledger_dsn, max_speed_mps=1e9)
    wins = Counter(await _claims(service, sample_snapshots, 2000, seed=1))
    collector = await make_collector(sample_snapshots, any_ledger_dsn)
    body = await (await collector.get("/v1/districts")).json()
    snap = open_current(sample_snapshots)
    now = time.time()
    live = [t for t in snap.tasks if t["enabled"] and now < t["ends_at"]]  # active or upcoming here
    # What is left is the snapshot's quotas less the wins the claimers were told of: neither side of the check is
    # the counters the collector reads, so a counter the ledger moved wrongly cannot set both.
    expected: dict[int, dict[str, int]] = {}
    for task in live:
        bucket = expected.setdefault(task["district_code"], {})
        for prize in task["prizes"]:
            left = prize["quota"] - wins[task["task_id"], prize["prize_type"]]
            bucket[prize["prize_type"]] = bucket.get(prize["prize_type"], 0) + left
    assert sum(wins.values()) > 1000  # the claims really won
    assert {d["code"]: d["remaining"] for d in body["districts"]} == expected
    assert sum(sum(d["tasks"].values()) for d in body["districts"]) == len(snap.tasks)


@pytest.fixture
def claims_world(tmp_path: Path) -> Path:
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 3}, pois=5)
    build_into(data, snaps)
    return snaps


async def _visible_tasks(service: Any) -> set[int]:
    body = await (await service.get("/v1/nearby?lat=22.5329&lng=113.9305")).json()
    return {t["task_id"] for t in body["tasks"]}


async def _until(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_kill_switch_and_exhaustion_hide_a_task_within_a_tick(
    make_client: MakeClient, make_collector: Any, claims_world: Path, any_ledger_dsn: str
) -> None:
    import subprocess
    import sys

    ledger = any_ledger_dsn
    collector = await make_collector(claims_world, ledger, tick_floor_s=0.1)
    service = await make_client(claims_world, token_secret=SECRET, ledger=ledger,
                                collector=str(collector.make_url("")), status_poll_s=0.05)
    assert await _visible_tasks(service) == {1, 2}
    command = [sys.executable, "-m", "collector", "task", "disable", "2", "--ledger", ledger]
    done = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    await _until(lambda: _hidden(service, 2))
    for k in range(3):  # task 1's quota is 3: the third win exhausts it
        token = mint(f"w{k}", SECRET, int(time.time()) + 60)
        resp = await service.post("/v1/claims", headers={"Authorization": f"Bearer {token}"},
                                  json={"claim_id": f"x{k}", "task_id": 1, "poi_id": 1000, "lat": 22.5329, "lng": 113.9305})
        assert (await resp.json())["outcome"] == "won"
    await _until(lambda: _hidden(service, 1))
    assert await _statuses(collector) == {1: "exhausted", 2: "disabled"}


async def _statuses(collector: Any) -> dict[int, str]:
    columns = (await (await collector.get("/v1/tasks/status")).json())["tasks"]
    return dict(zip(columns["task_id"], columns["status"]))


async def _hidden(service: Any, task_id: int) -> bool:
    return task_id not in await _visible_tasks(service)


async def test_service_keeps_the_last_status_and_reports_its_age_when_the_collector_dies(
    make_client: MakeClient, make_collector: Any, claims_world: Path, tmp_path: Path
) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    collector = await make_collector(claims_world, ledger, tick_floor_s=0.1)
    service = await make_client(claims_world, ledger=ledger, collector=str(collector.make_url("")), status_poll_s=0.05)
    await _until(lambda: _fresh(service))
    await collector.close()
    await asyncio.sleep(0.6)
    health = await (await service.get("/healthz")).json()
    assert health["status"]["source"] == "collector" and health["status"]["last_error"]
    assert health["status"]["age_s"] >= 0.5
    body = await (await service.get("/v1/nearby?lat=22.5329&lng=113.9305")).json()
    assert body["status_age_s"] >= 0.5 and {t["task_id"] for t in body["tasks"]} == {1, 2}
    assert service.app[status_key].failures > 0


async def _fresh(service: Any) -> bool:
    health = await (await service.get("/healthz")).json()
    return health["status"]["age_s"] is not None


async def test_readers_never_see_a_half_built_view(make_client: MakeClient, make_collector: Any,
                                                   sample_snapshots: Path, tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    # 32 claims at once queue on the SQLite file while a collector reads it every 20 ms: the claims (the load here, not
    # the subject) may wait longer than the 3 s a player would, the more so since each win also writes its delivery.
    service = await make_client(sample_snapshots, token_secret=SECRET, ledger=ledger, max_speed_mps=1e9, claim_timeout_s=30)
    collector = await make_collector(sample_snapshots, ledger, tick_floor_s=0.02, tick_ceiling_s=0.02)
    stop = asyncio.Event()
    checked = 0

    async def read() -> None:
        nonlocal checked
        while not stop.is_set():
            body = await (await collector.get("/v1/districts/440305")).json()
            for prize in ("cash", "coupon"):
                assert body["remaining"].get(prize, 0) == sum(
                    t["remaining"].get(prize, 0) for t in body["task_list"] if t["status"] in ("active", "upcoming"))
            checked += 1

    readers = [asyncio.create_task(read()) for _ in range(4)]
    await _claims(service, sample_snapshots, 300, seed=2)
    stop.set()
    await asyncio.gather(*readers)
    assert checked > 50
    assert collector.app[ticker_key].health.ticks > 5


async def test_stream_sends_every_district_then_each_change(make_client: MakeClient, make_collector: Any,
                                                            claims_world: Path, tmp_path: Path) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    service = await make_client(claims_world, token_secret=SECRET, ledger=ledger)
    collector = await make_collector(claims_world, ledger, tick_floor_s=0.05)
    resp = await collector.get("/v1/stream")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    first = await _event(resp)
    assert first["code"] == 440305 and first["remaining"] == {"cash": 13}  # 3 for task 1, 10 for the other task
    token = mint("streamer", SECRET, int(time.time()) + 60)
    await service.post("/v1/claims", headers={"Authorization": f"Bearer {token}"},
                       json={"claim_id": "s1", "task_id": 1, "poi_id": 1000, "lat": 22.5329, "lng": 113.9305})
    changed = await asyncio.wait_for(_event(resp), timeout=10)
    assert changed["remaining"] == {"cash": 12}
    resp.close()


async def _event(resp: Any) -> dict[str, Any]:
    import orjson

    while True:  # bounded by the caller's timeout and the stream's heartbeat
        line = (await resp.content.readline()).decode()
        if line.startswith("data: "):
            return orjson.loads(line[6:])  # type: ignore[no-any-return]


async def test_the_mysql_source_enabled_column_switches_a_task_off(
    make_collector: Any, mysql_conn: Any, tmp_path: Path
) -> None:
    from loaders.cli import main as snapshot_cli
    from tests.conftest import MYSQL_DSN, SAMPLE

    assert await asyncio.to_thread(snapshot_cli, ["import", "--source", str(SAMPLE), "--mysql", MYSQL_DSN, "--quiet"]) == 0
    snaps = tmp_path / "snaps"
    await asyncio.to_thread(build_into, SAMPLE, snaps)
    collector = await make_collector(snaps, f"sqlite:///{tmp_path / 'l.sqlite3'}", source=MYSQL_DSN, tick_floor_s=0.05)
    assert (await _statuses(collector))[44030501] == "active"
    with mysql_conn.cursor() as cur:
        cur.execute("UPDATE tasks SET enabled = 0 WHERE task_id = 44030501")
    mysql_conn.commit()

    async def switched_off() -> bool:
        return (await _statuses(collector))[44030501] == "disabled"

    await _until(switched_off)
