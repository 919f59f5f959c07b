"""The claim record: a claim's row declared once, the claims table made from it, and the record database.

Every backend writes this row for every settled claim: the SQL ledgers in the claim's own transaction,
the Redis ledger to its flow log (FLOW_FIELDS, the claim script's XADD), which ship.py moves into the
record database's `claims` (RecordStore), the system of record that reconcile counts wins from.
"""

from __future__ import annotations

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


def insert_claim(placeholder: str) -> str:
    """Return the INSERT of one claims row, with the driver's placeholder (? or %s)."""
    return f"INSERT INTO claims ({', '.join(CLAIM_COLUMNS)}) VALUES ({', '.join([placeholder] * len(CLAIM_COLUMNS))})"


WON_BY_COUNTER = ("SELECT task_id, prize_type, COUNT(*) FROM claims WHERE outcome = 'won' "
                  "GROUP BY task_id, prize_type")


def differences(issued: Any, won: dict[tuple[int, str], int]) -> list[Difference]:
    """Return the counters, given as (task_id, prize_type, issued), whose issued count is not their won claims."""
    return [Difference(t, p, i, won.get((t, p), 0)) for t, p, i in issued if i != won.get((t, p), 0)]


class RecordStore:
    """The claims table of the system of record (MySQL)."""

    def __init__(self, settings: MySQLSettings) -> None:
        self.settings = settings
        self._pool: aiomysql.Pool | None = None

    async def _run(self, sql: str, args: Any = None, many: bool = False) -> list[tuple[Any, ...]]:
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
                        await cur.execute(CLAIMS_TABLE)
                        await cur.execute(CLAIMS_INDEX)
                self._pool = pool
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                await (cur.executemany(sql, args) if many else cur.execute(sql, args))
                rows = list(await cur.fetchall())
                await conn.commit()
                return rows
        except (pymysql.err.MySQLError, OSError) as exc:
            raise LedgerError(f"record database {self.settings.redacted}: {exc}") from exc

    async def insert(self, records: Sequence[ClaimRecord]) -> None:
        """Upsert claim records by claim_id and commit: a record shipped twice is stored once."""
        sql = f"{insert_claim('%s')} ON DUPLICATE KEY UPDATE claim_id = claim_id"
        await self._run(sql, [claim_row(r) for r in records], many=True)

    async def won_counts(self) -> dict[tuple[int, str], int]:
        return {(int(t), str(p)): int(n) for t, p, n in await self._run(WON_BY_COUNTER)}

    async def present(self, claim_ids: Sequence[str]) -> set[str]:
        """Return which of these claim ids the table holds."""
        found: set[str] = set()
        for start in range(0, len(claim_ids), 1000):
            chunk = claim_ids[start : start + 1000]
            rows = await self._run(f"SELECT claim_id FROM claims WHERE claim_id IN ({', '.join(['%s'] * len(chunk))})", chunk)
            found |= {str(r[0]) for r in rows}
        return found

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            await pool.wait_closed()
