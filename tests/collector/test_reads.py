"""The collector's reads: pages of counters in key order, and a new snapshot filled beside the live one."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from collector.aggregate import STATUSES
from collector.ticker import Ticker
from collector.views import View, ViewHolder
from geo_service.ledger import ClaimRequest, Counters, open_ledger
from tests.conftest import build_into
from tests.support.builders import claim_poi, write_claims_data
from tests.support.ledgers import counters, sql_rows


async def test_pages_read_every_counter_once_in_key_order(any_ledger_dsn: str) -> None:
    rng = random.Random(4)
    ledger = open_ledger(any_ledger_dsn)
    # Task ids out of order and prize types of one task split across pages.
    seeds = [(t, p, rng.randint(1, 9), -1) for t in rng.sample(range(1, 10_000), 300) for p in ("b", "c", "a")]
    try:
        await ledger.seed(seeds)
        pages: list[Counters] = []
        after = None
        for _ in range(1000):  # bounded: 900 counters in pages of 7
            page = await ledger.read_page(after, 7)
            pages.append(page)
            if len(page) < 7:
                break
            after = page.last_key()
        got = [(int(t), p, int(left)) for c in pages for t, p, left in zip(c.task_id, c.prize_type, c.left)]
        assert got == sorted((t, p, q - i) for (t, p), (q, i) in counters(any_ledger_dsn).items())
        assert len(got) == len(seeds) and len(pages) == len(seeds) // 7 + 1
    finally:
        await ledger.close()


def _exact(view: View, dsn: str) -> bool:
    """Whether every prize's remaining count in the view is quota minus issued in the ledger."""
    rows = sql_rows(dsn, "SELECT task_id, prize_type, quota - issued FROM prize_counters")
    want = {(int(t), p): int(left) for t, p, left in rows}
    got = {(int(t), p): int(r) for i, t in enumerate(view.index.task_ids)
           for p, r in zip(view.index.prize_types, view.remaining[i]) if r >= 0}
    return all(got[key] == left for key, left in want.items() if key in got)


async def test_a_new_snapshot_is_filled_beside_the_live_one_and_served_only_when_complete(tmp_path: Path) -> None:
    data, snaps, dsn = tmp_path / "data", tmp_path / "snaps", f"sqlite:///{tmp_path / 'l.sqlite3'}"
    write_claims_data(data, {"cash": 3, "coupon": 2}, pois=2, tasks=6)
    await asyncio.to_thread(build_into, data, snaps)
    ledger = open_ledger(dsn)
    await ledger.seed([(t, p, q, -1) for t in range(1, 7) for p, q in (("cash", 3), ("coupon", 2))] + [(7, "cash", 10, -1)])
    ticker = Ticker(ledger=ledger, snapshots=snaps, holder=ViewHolder(), floor_s=0.1, ceiling_s=1.0, slow_read_s=5.0,
                    on_swap=lambda changed: None, page_rows=2, sweep_every_s=3600)
    try:
        first = await ticker.tick()
        assert first is not None and first.seq == 1 and _exact(first, dsn)
        # Task 1 runs out of prizes, then seq 2 (two more tasks) is published.
        for k in range(5):
            poi_id, lat, lng = claim_poi(1, 0)
            await ledger.claim(ClaimRequest(f"c{k}", f"u{k}", 1, poi_id, lat, lng, time.time()), ["cash", "coupon"], 9, 1e9)
        write_claims_data(data, {"cash": 3, "coupon": 2}, pois=2, tasks=8)
        await asyncio.to_thread(build_into, data, snaps)
        await ledger.seed([(t, p, q, -1) for t in (7, 8) for p, q in (("cash", 3), ("coupon", 2))])
        seqs, view = [], first
        for _ in range(200):  # bounded: the child process builds the index, then 19 counters in pages of 2
            tick = await ticker.tick()
            assert tick is not None and _exact(tick, dsn)  # never a half-filled index, on either seq
            seqs.append(tick.seq)
            view = tick
            if view.seq == 2:
                break
            await asyncio.sleep(0.05)
        assert seqs[-1] == 2 and seqs.count(1) >= 19 // 2  # seq 1 served while seq 2 was swept, a page a tick
        status = dict(zip(view.index.task_ids.tolist(), (STATUSES[s] for s in view.status)))
        assert status[1] == "exhausted" and status[8] == "active" and len(status) == 9
        assert ticker.health.sweeps == 2 and ticker.health.failures == 0
    finally:
        await ticker.close()


async def test_a_new_snapshot_with_broken_tables_is_refused_and_the_live_view_goes_on(tmp_path: Path) -> None:
    data, snaps, dsn = tmp_path / "data", tmp_path / "snaps", f"sqlite:///{tmp_path / 'l.sqlite3'}"
    write_claims_data(data, {"cash": 3}, pois=2)
    await asyncio.to_thread(build_into, data, snaps)
    ledger = open_ledger(dsn)
    await ledger.seed([(1, "cash", 3, -1), (2, "cash", 10, -1)])
    ticker = Ticker(ledger=ledger, snapshots=snaps, holder=ViewHolder(), floor_s=0.1, ceiling_s=1.0, slow_read_s=5.0,
                    on_swap=lambda changed: None)
    try:
        assert (await ticker.tick()) is not None
        await asyncio.to_thread(build_into, data, snaps)
        tasks_json = snaps / "2" / "tasks.json"
        tasks_json.write_bytes(tasks_json.read_bytes().replace(b'"starts_at"', b'"starts"'))  # a field gone
        for _ in range(100):  # bounded: the child process parses the tables, then the tick refuses them
            view = await ticker.tick()
            assert view is not None and view.seq == 1
            if ticker.health.refused_seq == 2:
                break
            await asyncio.sleep(0.05)
        assert ticker.health.refused_seq == 2 and ticker.health.failures == 0
        assert (await ticker.tick()) is not None  # and the ticks go on
    finally:
        await ticker.close()
