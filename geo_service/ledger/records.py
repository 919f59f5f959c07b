"""The claim record: a claim's row declared once, the claims table made from it, and the record database.

Every backend writes this row for every settled claim: the SQL ledgers in the claim's own transaction,
the Redis ledger to its flow log (FLOW_FIELDS, the claim script's XADD), which ship.py moves into the
record database's `claims` (RecordStore), the system of record that reconcile counts wins from.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from geo_service.dsn import MySQLSettings
from geo_service.ledger.interface import REASONS, ClaimRequest, Difference, LedgerError, Outcome

if TYPE_CHECKING:
    import aiomysql


def _sql(column: str) -> dict[str, str]:
    return {"sql": column}


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """A settled claim as the record keeps it; each field's column type beside it."""

    claim_id: str = field(metadata=_sql("VARCHAR(64) NOT NULL PRIMARY KEY"))
    user_id: str = field(metadata=_sql("VARCHAR(64) NOT NULL"))
    task_id: int = field(metadata=_sql("BIGINT NOT NULL"))
    poi_id: int = field(metadata=_sql("BIGINT NOT NULL"))
    prize_type: str | None = field(metadata=_sql("VARCHAR(40) NULL"))
    outcome: str = field(metadata=_sql("VARCHAR(32) NOT NULL"))
    reason: str | None = field(metadata=_sql("VARCHAR(80) NULL"))
    created_at: float = field(metadata=_sql("DOUBLE NOT NULL"))

    @classmethod
    def of(cls, request: ClaimRequest, outcome: Outcome, at: float) -> ClaimRecord:
        """Return the record of a claim settled at `at`."""
        return cls(request.claim_id, request.user_id, request.task_id, request.poi_id, outcome.prize_type,
                   outcome.outcome, outcome.reason, at)

    @classmethod
    def from_flow(cls, entry: Mapping[str, str]) -> ClaimRecord:
        """Return the record of a flow-log entry (FLOW_FIELDS; the reason follows from the outcome)."""
        outcome = entry["outcome"]
        return cls(entry["claim_id"], entry["user_id"], int(entry["task_id"]), int(entry["poi_id"]),
                   entry["prize_type"] or None, outcome, REASONS.get(outcome), float(entry["at"]))


CLAIM_COLUMNS = tuple(f.name for f in fields(ClaimRecord))
_ROW = attrgetter(*CLAIM_COLUMNS)  # dataclasses.astuple deep-copies: ~10 us a claim, this ~0.2


def claim_row(record: ClaimRecord) -> tuple[Any, ...]:
    """Return a record as the claims table's row, in CLAIM_COLUMNS order."""
    row: tuple[Any, ...] = _ROW(record)
    return row
# A flow-log entry's fields, as the claim script writes them: the record's, less the reason (one text per
# outcome), with created_at as `at`.
FLOW_FIELDS = ("claim_id", "user_id", "task_id", "poi_id", "prize_type", "outcome", "at")
CLAIMS_TABLE = ("CREATE TABLE IF NOT EXISTS claims ("
                + ", ".join(f"{f.name} {f.metadata['sql']}" for f in fields(ClaimRecord)) + ")")
CLAIMS_INDEX = "CREATE INDEX IF NOT EXISTS claims_task_prize ON claims (task_id, prize_type, outcome)"
# MySQL compares VARCHARs without case by default: "Abc" and "abc" would be one claim there and two on Redis or
# SQLite (two wins, one record). Claim ids are ASCII (claims.py), so the column compares them byte for byte.
CLAIM_ID_COLLATION = ("SELECT COLLATION_NAME FROM information_schema.columns WHERE table_schema = DATABASE() "
                      "AND table_name = 'claims' AND column_name = 'claim_id'")
CLAIM_ID_EXACT = "ALTER TABLE claims MODIFY claim_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL"
# The Redis ledger's epoch, which every bucket of its Redis holds too: a bucket without it lost its state.
EPOCH_TABLE = ("CREATE TABLE IF NOT EXISTS ledger_epoch (id INT NOT NULL PRIMARY KEY, epoch VARCHAR(64) NOT NULL, "
               "created_at DOUBLE NOT NULL)")
RECORD_TABLES = ("claims", "ledger_epoch")


def insert_claim(placeholder: str) -> str:
    """Return the INSERT of one claims row, with the driver's placeholder (? or %s)."""
    return f"INSERT INTO claims ({', '.join(CLAIM_COLUMNS)}) VALUES ({', '.join([placeholder] * len(CLAIM_COLUMNS))})"


WON_BY_COUNTER = ("SELECT task_id, prize_type, COUNT(*) FROM claims WHERE outcome = 'won' "
                  "GROUP BY task_id, prize_type")


def differences(issued: Any, won: dict[tuple[int, str], int]) -> list[Difference]:
    """Return the counters, given as (task_id, prize_type, issued), whose issued count is not their won claims."""
    return [Difference(t, p, i, won.get((t, p), 0)) for t, p, i in issued if i != won.get((t, p), 0)]


def _counts(rows: Sequence[tuple[Any, ...]]) -> dict[tuple[int, str], int]:
    return {(int(t), str(p)): int(n) for t, p, n in rows}


class RecordStore:
    """The claims table of the system of record (MySQL)."""

    def __init__(self, settings: MySQLSettings) -> None:
        self.settings = settings
        self._pool: aiomysql.Pool | None = None

    async def _run(self, sql: str, args: Any = None, many: bool = False) -> list[tuple[Any, ...]]:
        return (await self._run_all([(sql, args)], many))[0]

    async def _run_all(self, statements: Sequence[tuple[str, Any]], many: bool = False) -> list[list[tuple[Any, ...]]]:
        """Run statements in one transaction (its reads see one moment of the table) and commit."""
        # The MySQL client loads only where a record database is used: the SQL ledgers import this module too.
        import aiomysql
        import pymysql

        try:
            if self._pool is None:
                s = self.settings
                pool = await aiomysql.create_pool(host=s.host, port=s.port, user=s.user, password=s.password, db=s.database,
                                                  minsize=1, maxsize=2, autocommit=False, connect_timeout=5)
                async with pool.acquire() as conn, conn.cursor() as cur:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", pymysql.Warning)  # "already exists" notes on restart
                        for statement in (CLAIMS_TABLE, CLAIMS_INDEX, EPOCH_TABLE, CLAIM_ID_COLLATION):
                            await cur.execute(statement)
                        if (await cur.fetchone()) != ("ascii_bin",):
                            await cur.execute(CLAIM_ID_EXACT)
                self._pool = pool
            results = []
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                for sql, args in statements:
                    await (cur.executemany(sql, args) if many else cur.execute(sql, args))
                    results.append(list(await cur.fetchall()))
                await conn.commit()
            return results
        except (pymysql.err.MySQLError, OSError) as exc:
            raise LedgerError(f"record database {self.settings.redacted}: {exc}") from exc

    async def insert(self, records: Sequence[ClaimRecord]) -> None:
        """Upsert claim records by claim_id and commit: a record shipped twice is stored once."""
        sql = f"{insert_claim('%s')} ON DUPLICATE KEY UPDATE claim_id = claim_id"
        await self._run(sql, [claim_row(r) for r in records], many=True)

    async def won_until(self, until: Sequence[float], claim_ids: Sequence[str]) -> tuple[dict[tuple[int, str], int], set[str]]:
        """Return the won claims of each counter settled at or before until[b] for the tasks of bucket b (task_id
        mod len(until): each bucket's own moment, from its own node's clock), and which of `claim_ids` the table
        holds, both as of one moment of the table."""
        moment = " ".join(f"WHEN {b} THEN %s" for b in range(len(until)))
        statements: list[tuple[str, Any]] = [(f"SELECT task_id, prize_type, COUNT(*) FROM claims WHERE outcome = 'won' AND "
                                              f"created_at <= CASE MOD(task_id, {len(until)}) {moment} END "
                                              "GROUP BY task_id, prize_type", list(until))]
        for start in range(0, len(claim_ids), 1000):
            chunk = claim_ids[start : start + 1000]
            statements.append((f"SELECT claim_id FROM claims WHERE claim_id IN ({', '.join(['%s'] * len(chunk))})", chunk))
        results = await self._run_all(statements)
        return _counts(results[0]), {str(r[0]) for rows in results[1:] for r in rows}

    async def find(self, claim_id: str) -> ClaimRecord | None:
        """Return the record of a claim id, if the table holds it."""
        rows = await self._run(f"SELECT {', '.join(CLAIM_COLUMNS)} FROM claims WHERE claim_id = %s", (claim_id,))
        return ClaimRecord(*rows[0]) if rows else None

    async def epoch(self, adopt: str | None = None) -> str | None:
        """Return the ledger's epoch as recorded; with `adopt`, record that one first unless one is recorded."""
        if adopt is not None:
            await self._run("INSERT INTO ledger_epoch (id, epoch, created_at) VALUES (1, %s, %s) "
                            "ON DUPLICATE KEY UPDATE id = id", (adopt, time.time()))
        rows = await self._run("SELECT epoch FROM ledger_epoch WHERE id = 1")
        return str(rows[0][0]) if rows else None

    async def bucket_wins(self, buckets: Sequence[int], modulo: int) -> list[tuple[int, str, str, int]]:
        """Return (task_id, prize_type, user_id, wins) of the tasks in these buckets (task_id mod `modulo`)."""
        marks = ", ".join(["%s"] * len(buckets))
        rows = await self._run(f"SELECT task_id, prize_type, user_id, COUNT(*) FROM claims WHERE outcome = 'won' AND "
                               f"MOD(task_id, {modulo}) IN ({marks}) GROUP BY task_id, prize_type, user_id", list(buckets))
        return [(int(t), str(p), str(u), int(n)) for t, p, u, n in rows]

    async def claim_ids(self, buckets: Sequence[int], modulo: int, after: str, limit: int) -> list[str]:
        """Return up to `limit` claim ids after `after`, in order, of those whose CRC32 mod `modulo` is in buckets
        (the Redis ledger's id buckets: zlib's CRC-32 is MySQL's)."""
        marks = ", ".join(["%s"] * len(buckets))
        rows = await self._run(f"SELECT claim_id FROM claims WHERE claim_id > %s AND MOD(CRC32(claim_id), {modulo}) "
                               f"IN ({marks}) ORDER BY claim_id LIMIT %s", [after, *buckets, limit])
        return [str(r[0]) for r in rows]

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            await pool.wait_closed()
