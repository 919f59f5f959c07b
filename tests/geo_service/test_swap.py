"""Double buffer under load: new snapshots swap in with zero failed requests; a corrupt one is never served."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from geo_service.keys import snapshot_key
from geo_service.nearby import Lookup, answer
from geo_service.snapshot.format import open_snapshot
from tests.conftest import SAMPLE, MakeClient, build_into
from tests.support.builders import set_csv_field

POINTS = [(22.5329, 113.9305), (22.5431, 114.0579), (22.5551, 114.1240), (22.7196, 114.2470), (22.6500, 113.8600)]


def _point_current(root: Path, seq: int) -> None:
    tmp = root / "CURRENT.test.tmp"
    tmp.write_text(f"{seq}\n")
    os.replace(tmp, root / "CURRENT")


async def _poll(client: Any, stop: asyncio.Event, log: list[tuple[float, float, int, dict[str, Any]]]) -> None:
    rng = random.Random(len(log))
    while not stop.is_set():
        lat, lng = rng.choice(POINTS)
        resp = await client.get("/v1/nearby", params={"lat": str(lat), "lng": str(lng)})
        log.append((lat, lng, resp.status, await resp.json()))


async def _until_served(client: Any, seq: int) -> None:
    for _ in range(200):  # bounded: 10 s at most
        body = await (await client.get("/v1/nearby?lat=22.5329&lng=113.9305")).json()
        if body.get("seq") == seq:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"seq {seq} never served")


async def test_swaps_under_load_fail_no_request_and_never_serve_the_corrupt_snapshot(
    make_client: MakeClient, sample_snapshots: Path, sample_data: Path, tmp_path: Path
) -> None:
    root = tmp_path / "snaps"
    shutil.copytree(sample_snapshots, root)
    for line in range(2, 40, 3):  # the second data set hides a dozen tasks
        set_csv_field(sample_data / "tasks.csv", line, "enabled", "0")
    client = await make_client(root, poll_interval_s=0.05, max_pois=10_000)
    stop = asyncio.Event()
    log: list[tuple[float, float, int, dict[str, Any]]] = []
    pollers = [asyncio.create_task(_poll(client, stop, log)) for _ in range(8)]
    await asyncio.sleep(0.2)
    await asyncio.to_thread(build_into, sample_data, root)  # seq 2
    await _until_served(client, 2)
    shutil.copytree(root / "2", root / "3")
    lats = root / "3" / "lats.npy"
    data = bytearray(lats.read_bytes())
    data[-3] ^= 0x40
    lats.write_bytes(bytes(data))
    _point_current(root, 3)
    # Seq 4 only once the service has looked at seq 3 and refused it: were it built first, the service could
    # skip seq 3 altogether and "never served" would hold without a refusal.
    holder = client.app[snapshot_key]
    for _ in range(200):  # bounded: 10 s
        if any(i.startswith("3-") for i in holder.refused_ids):
            break
        await asyncio.sleep(0.05)
    assert any(i.startswith("3-") for i in holder.refused_ids), holder.refused_ids
    await asyncio.to_thread(build_into, SAMPLE, root, "--cell-m", "150")  # seq 4, another grid
    await _until_served(client, 4)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*pollers)

    assert len(log) > 200
    assert {status for _, _, status, _ in log} == {200}
    seqs = {body["seq"] for _, _, _, body in log}
    assert seqs == {1, 2, 4}
    assert holder.refused >= 1
    lookups = {seq: Lookup(open_snapshot(root / str(seq))) for seq in seqs}
    now = int(time.time())
    for lat, lng, _, body in log:
        lookup = lookups[body["seq"]]
        expected = answer(lookup, lookup.table.status(now), lat, lng, 10_000)
        assert {k: v for k, v in body.items() if k not in ("next_poll_ms", "status_age_s")} == expected
