"""The embedded ledger's own promises: every commit fsynced, and writers served in turn across processes."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
from pathlib import Path

from geo_service.ledger import ClaimRequest
from geo_service.ledger.sqlite import SQLiteLedger


async def test_commits_are_fsynced(tmp_path: Path) -> None:
    ledger = SQLiteLedger(str(tmp_path / "l.sqlite3"))
    try:
        await ledger.seed([(1, "cash", 5, -1)])
        mode = await ledger._run(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0], write=False)
        assert mode == 2  # FULL: a win acknowledged is on the disk, not in the page cache
    finally:
        await ledger.close()


async def test_a_claim_waits_for_the_writer_holding_the_lock_file_then_settles(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = SQLiteLedger(str(path))
    try:
        await ledger.seed([(1, "cash", 5, -1)])
        # Another process's writer, as the kernel sees it: an flock on the same lock file.
        other = os.open(f"{path}.writers", os.O_RDWR)
        fcntl.flock(other, fcntl.LOCK_EX)
        request = ClaimRequest("c1", "alice", 1, 1000, 22.5329, 113.9305, time.time())
        claim = asyncio.create_task(ledger.claim(request, ["cash"], 5, 30.0))
        await asyncio.sleep(0.3)
        assert not claim.done()  # queued behind the other writer, not racing it for SQLite's own lock
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
        outcome = await asyncio.wait_for(claim, timeout=5)
        assert outcome.outcome == "won"
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT claim_id, outcome FROM claims").fetchall() == [("c1", "won")]
    finally:
        await ledger.close()
