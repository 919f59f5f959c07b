"""The tick interval follows the database: a real MariaDB made slow by a delaying TCP proxy on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pymysql

from collector.ticker import Ticker
from collector.views import ViewHolder
from geo_service.ledger import open_ledger
from geo_service.ledger.plans import LEDGER_TABLES
from tests.conftest import build_into
from tests.support.builders import write_claims_data


class DelayProxy:
    """Forwards 127.0.0.1:<port> to MariaDB, holding each reply chunk back by `delay_s`."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 3306)
        for task in (self._pipe(reader, up_writer, False), self._pipe(up_reader, writer, True)):
            pipe = asyncio.create_task(task)
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if delayed and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def stop(self) -> None:
        for pipe in list(self._pipes):
            pipe.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_interval_lengthens_while_the_database_is_slow_and_returns_after(
    mysql_conn: pymysql.connections.Connection, tmp_path: Path
) -> None:
    with mysql_conn.cursor() as cur:
        for table in LEDGER_TABLES:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
    mysql_conn.commit()
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 5}, pois=3)
    await asyncio.to_thread(build_into, data, snaps)
    proxy = DelayProxy()
    port = await proxy.start()
    ledger = open_ledger(f"mysql://root@127.0.0.1:{port}/test")
    await ledger.seed([(1, "cash", 5, -1)])
    ticker = Ticker(ledger=ledger, snapshots=snaps, holder=ViewHolder(), floor_s=0.1, ceiling_s=3.2,
                    slow_read_s=0.2, on_swap=lambda changed: None)
    intervals: list[float] = []

    async def ticks(n: int) -> None:
        for _ in range(n):
            assert await ticker.tick() is not None  # slow, but every tick still swaps in a view
            intervals.append(ticker.health.interval_s)

    try:
        await ticks(2)
        assert intervals == [0.1, 0.1]
        proxy.delay_s = 0.15  # each reply now arrives late; a read takes several round trips
        await ticks(4)
        assert intervals[2:] == [0.2, 0.4, 0.8, 1.6]
        assert ticker.health.last_read_s > 0.2 and "ledger read took" in (ticker.health.last_error or "")
        proxy.delay_s = 0.0
        await ticks(5)
        assert intervals[6:] == [0.8, 0.4, 0.2, 0.1, 0.1]
        assert ticker.health.last_error is None
    finally:
        await ledger.close()
        await proxy.stop()


async def test_a_dead_database_keeps_the_last_view_and_backs_off(tmp_path: Path) -> None:
    data, snaps = tmp_path / "data", tmp_path / "snaps"
    write_claims_data(data, {"cash": 5}, pois=3)
    await asyncio.to_thread(build_into, data, snaps)
    holder = ViewHolder()
    good = Ticker(ledger=open_ledger(f"sqlite:///{tmp_path / 'l.sqlite3'}"), snapshots=snaps, holder=holder, floor_s=0.1,
                  ceiling_s=1.0, slow_read_s=1.0, on_swap=lambda changed: None)
    view: Any = await good.tick()
    await good.ledger.close()
    dead = Ticker(ledger=open_ledger("mysql://root@127.0.0.1:1/test"), snapshots=snaps, holder=holder, floor_s=0.1,
                  ceiling_s=1.0, slow_read_s=1.0, on_swap=lambda changed: None)
    for _ in range(5):
        assert await dead.tick() is None
    assert holder.current is view
    assert dead.health.interval_s == 1.0 and dead.health.failures == 5 and dead.health.last_error
    await dead.ledger.close()
