"""The claim record: a claim's row declared once, the claims table made from it, and the record database.

Every backend writes this row for every settled claim: the SQL ledgers in the claim's own transaction,
the Redis ledger to its flow log (FLOW_FIELDS, the claim script's XADD), which ship.py moves into the
record database's `claims` (RecordStore), the system of record that reconcile counts wins from.
"""

from __future__ import annotations

import logging
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

log = logging.getLogger("geodrop.ledger")


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
# SQLite (two wins, one record), and a restore would add up two players' or prizes' wins. The claims table
# compares them byte for byte (claim ids are ASCII: claims.py).
CLAIMS_COLLATION = ("SELECT GROUP_CONCAT(COLLATION_NAME ORDER BY COLUMN_NAME) FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND table_name = 'claims' "
                    "AND column_name IN ('claim_id', 'prize_type', 'user_id')")
CLAIMS_EXACT_COLLATION = "ascii_bin,utf8mb4_bin,utf8mb4_bin"
# Made at once on an empty table; on a full one, a copy of the table that blocks its writes: an operator's step.
CLAIMS_EXACT_NOTE = ("the claims table compares ids, users and prizes without case (an older release made it): run "
                     "this when claims are quiet: {}")
CLAIMS_EXACT = ("ALTER TABLE claims MODIFY claim_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, "
                "MODIFY prize_type VARCHAR(40) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL, "
                "MODIFY user_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL")
# The Redis ledger's epoch, which every bucket of its Redis holds too: a bucket without it lost its state.
EPOCH_TABLE = ("CREATE TABLE IF NOT EXISTS ledger_epoch (id INT NOT NULL PRIMARY KEY, epoch VARCHAR(64) NOT NULL, "
               "created_at DOUBLE NOT NULL)")
# How far shipping has reached in each bucket's flow stream: a node whose stream is behind it went back in time
# (a replica promoted, an old copy loaded), and its buckets take no claims until restored (ship.py).
MARKS_TABLE = ("CREATE TABLE IF NOT EXISTS flow_marks (bucket INT NOT NULL PRIMARY KEY, last_ms BIGINT NOT NULL, "
               "last_seq BIGINT NOT NULL)")
# The Redis ledger's kill switches, kept beside its record: a restore gives a lost bucket's tasks theirs back.
FLAGS_TABLE = "CREATE TABLE IF NOT EXISTS ledger_flags (task_id BIGINT NOT NULL PRIMARY KEY, enabled INT NOT NULL)"
# Ids are ASCII (claims.py, tokens.py) and, with prize types, compared byte for byte: MySQL compares VARCHARs without
# case by default, which would make "Abc" and "abc" one delivery, show one player another's prizes, or lease a
# "Cash" prize to the "cash" channel. Texts a partner sends may be in any script.
_EXACT = {"sqlite": "", "mysql": " CHARACTER SET ascii COLLATE ascii_bin"}
_EXACT_TEXT = {"sqlite": "", "mysql": " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"}
_TEXT = {"sqlite": "", "mysql": " CHARACTER SET utf8mb4"}


def deliveries_schema(dialect: str) -> list[str]:
    """Return the statements that make the delivery tables (idempotent), for "sqlite" or "mysql"."""
    exact, exact_text, text = _EXACT[dialect], _EXACT_TEXT[dialect], _TEXT[dialect]
    return [
        f"CREATE TABLE IF NOT EXISTS deliveries (claim_id VARCHAR(64){exact} NOT NULL PRIMARY KEY, "
        f"user_id VARCHAR(64){exact} NOT NULL, task_id BIGINT NOT NULL, prize_type VARCHAR(40){exact_text} NOT NULL, "
        "won_at DOUBLE NOT NULL, state VARCHAR(12) NOT NULL, due_at DOUBLE NULL, attempts INT NOT NULL DEFAULT 0, "
        f"lease_owner VARCHAR(64) NULL, last_error VARCHAR(200){text} NULL, partner_ref VARCHAR(128){text} NULL, "
        "asked_at DOUBLE NULL, updated_at DOUBLE NOT NULL, delivered_at DOUBLE NULL)",
        "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (prize_type, due_at)",
        "CREATE INDEX IF NOT EXISTS deliveries_user ON deliveries (user_id)",
        # The dashboard's counts and dead letters by state: an index at scale (MySQL); the embedded SQLite file
        # scans its few rows instead of writing a third index page on every win.
        *(["CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, prize_type, updated_at)"]
          if dialect == "mysql" else []),
        f"CREATE TABLE IF NOT EXISTS delivery_channels (name VARCHAR(64){exact} NOT NULL PRIMARY KEY, rate_milli BIGINT NULL, "
        "paused INT NOT NULL DEFAULT 0, pace_milli BIGINT NOT NULL DEFAULT -1, slice BIGINT NOT NULL DEFAULT 0, "
        "slice_used BIGINT NOT NULL DEFAULT 0, slowed_slice BIGINT NOT NULL DEFAULT 0, "
        "hold_until DOUBLE NOT NULL DEFAULT 0, sent BIGINT NOT NULL DEFAULT 0, changed_at DOUBLE NOT NULL DEFAULT 0)",
    ]


DELIVERY_COLUMNS = ("claim_id", "user_id", "task_id", "prize_type", "won_at", "state", "due_at", "updated_at")


def delivery_row(record: ClaimRecord, now: float) -> tuple[Any, ...]:
    """Return the deliveries row (DELIVERY_COLUMNS) of a won claim: pending, due at once."""
    return (record.claim_id, record.user_id, record.task_id, record.prize_type, record.created_at, "pending",
            record.created_at, now)


def insert_delivery(placeholder: str) -> str:
    """Return the INSERT of one deliveries row, with the driver's placeholder (? or %s)."""
    return (f"INSERT INTO deliveries ({', '.join(DELIVERY_COLUMNS)}) "
            f"VALUES ({', '.join([placeholder] * len(DELIVERY_COLUMNS))})")


RECORD_TABLES = ("claims", "ledger_epoch", "flow_marks", "ledger_flags", "deliveries", "delivery_channels")


def insert_claim(placeholder: str) -> str:
    """Return the INSERT of one claims row, with the driver's placeholder (? or %s)."""
    return f"INSERT INTO claims ({', '.join(CLAIM_COLUMNS)}) VALUES ({', '.join([placeholder] * len(CLAIM_COLUMNS))})"


WON_BY_COUNTER = ("SELECT task_id, prize_type, COUNT(*) FROM claims WHERE outcome = 'won' "
                  "GROUP BY task_id, prize_type")


def differences(issued: Any, won: dict[tuple[int, str], int]) -> list[Difference]:
    """Return the counters, given as (task_id, prize_type, issued), whose issued count is not their won claims."""
    return [Difference(t, p, i, won.get((t, p), 0)) for t, p, i in issued if i != won.get((t, p), 0)]


def to_move(diffs: Sequence[Difference], lower: bool) -> list[Difference]:
    """Return the differences a repair moves: a counter below its won claims always (it would issue past the quota);
    one above them only when the operator says so (`lower`): its prizes may have gone to players whose records were
    lost, and lowering it would issue them again."""
    return [d for d in diffs if d.won_claims > d.issued or lower]


def _counts(rows: Sequence[tuple[Any, ...]]) -> dict[tuple[int, str], int]:
    return {(int(t), str(p)): int(n) for t, p, n in rows}


class RecordStore:
    """The claims table of the system of record (MySQL)."""

    def __init__(self, settings: MySQLSettings) -> None:
        self.settings = settings
        self._pool: aiomysql.Pool | None = None

    async def _run(self, sql: str, args: Any = None, many: bool = False) -> list[tuple[Any, ...]]:
        return (await self._run_all([(sql, args, many)]))[0]

    async def _run_all(self, statements: Sequence[tuple[str, Any, bool]],
                       one_moment: bool = False) -> list[list[tuple[Any, ...]]]:
        """Run statements (sql, args, many: args is a list of rows) in one transaction and commit; with one_moment,
        its reads all see one moment of the tables (a consistent snapshot, whatever the server's default
        isolation)."""
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
                        for statement in (CLAIMS_TABLE, CLAIMS_INDEX, EPOCH_TABLE, MARKS_TABLE, FLAGS_TABLE,
                                          *deliveries_schema("mysql"), CLAIMS_COLLATION):
                            await cur.execute(statement)
                        if (await cur.fetchone()) != (CLAIMS_EXACT_COLLATION,):
                            await cur.execute("SELECT EXISTS (SELECT 1 FROM claims)")
                            if (await cur.fetchone()) == (0,):
                                await cur.execute(CLAIMS_EXACT)
                            else:
                                log.warning(CLAIMS_EXACT_NOTE.format(CLAIMS_EXACT))
                self._pool = pool
            results = []
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                if one_moment:
                    await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    await cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                for sql, args, many in statements:
                    await (cur.executemany(sql, args) if many else cur.execute(sql, args))
                    results.append(list(await cur.fetchall()))
                await conn.commit()
            return results
        except (pymysql.err.MySQLError, OSError) as exc:
            raise LedgerError(f"record database {self.settings.redacted}: {exc}") from exc

    async def insert(self, records: Sequence[ClaimRecord], marks: Sequence[tuple[int, int, int]] = ()) -> None:
        """Upsert claim records by claim_id and commit: a record shipped twice is stored once. `marks` (bucket, ms,
        seq): the flow entry each bucket was shipped up to, kept in the same transaction (flow_marks)."""
        # Each win's delivery row in the same transaction (the outbox): the claim path never writes two systems.
        now = time.time()
        wins = [delivery_row(r, now) for r in records if r.outcome == "won"]
        statements: list[tuple[str, Any, bool]] = [
            (f"{insert_claim('%s')} ON DUPLICATE KEY UPDATE claim_id = claim_id", [claim_row(r) for r in records], True)]
        if wins:
            statements.append((f"{insert_delivery('%s')} ON DUPLICATE KEY UPDATE claim_id = claim_id", wins, True))
        if marks:
            # Never lowered: a batch read again after a restart may end below the mark. (last_seq first: MySQL
            # assigns left to right, and its test reads last_ms as it was.)
            statements.append(("INSERT INTO flow_marks (bucket, last_ms, last_seq) VALUES (%s, %s, %s) ON DUPLICATE KEY "
                               "UPDATE last_seq = IF((VALUES(last_ms), VALUES(last_seq)) > (last_ms, last_seq), "
                               "VALUES(last_seq), last_seq), last_ms = GREATEST(last_ms, VALUES(last_ms))", list(marks),
                               True))
        await self._run_all(statements)

    async def marks(self) -> dict[int, tuple[int, int]]:
        """Return each bucket's flow entry id (ms, seq) that shipping has reached."""
        return {int(b): (int(ms), int(seq)) for b, ms, seq in await self._run("SELECT bucket, last_ms, last_seq FROM flow_marks")}

    async def won_until(self, until: Sequence[float], claim_ids: Sequence[str]) -> tuple[dict[tuple[int, str], int], set[str]]:
        """Return the won claims of each counter settled at or before until[b] for the tasks of bucket b (task_id
        mod len(until): each bucket's own moment, from its own node's clock), and which of `claim_ids` the table
        holds, both as of one moment of the table."""
        moment = " ".join(f"WHEN {b} THEN %s" for b in range(len(until)))
        statements: list[tuple[str, Any, bool]] = [(
            f"SELECT task_id, prize_type, COUNT(*) FROM claims WHERE outcome = 'won' AND created_at <= "
            f"CASE MOD(task_id, {len(until)}) {moment} END GROUP BY task_id, prize_type", list(until), False)]
        for start in range(0, len(claim_ids), 1000):
            chunk = claim_ids[start : start + 1000]
            statements.append((f"SELECT claim_id FROM claims WHERE claim_id IN ({', '.join(['%s'] * len(chunk))})", chunk,
                               False))
        results = await self._run_all(statements, one_moment=True)
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

    async def set_flag(self, task_id: int, enabled: bool) -> None:
        await self._run("INSERT INTO ledger_flags (task_id, enabled) VALUES (%s, %s) ON DUPLICATE KEY UPDATE "
                        "enabled = VALUES(enabled)", (task_id, int(enabled)))

    async def disabled(self) -> list[int]:
        """Return the tasks switched off."""
        return [int(t) for (t,) in await self._run("SELECT task_id FROM ledger_flags WHERE enabled = 0")]

    async def has_claims(self) -> bool:
        return bool(await self._run("SELECT 1 FROM claims LIMIT 1"))

    async def bucket_wins(self, buckets: Sequence[int], modulo: int) -> list[tuple[int, str, str, int]]:
        """Return (task_id, prize_type, user_id, wins) of the tasks in these buckets (task_id mod `modulo`)."""
        marks = ", ".join(["%s"] * len(buckets))
        rows = await self._run(f"SELECT task_id, prize_type, user_id, COUNT(*) FROM claims WHERE outcome = 'won' AND "
                               f"MOD(task_id, {modulo}) IN ({marks}) GROUP BY task_id, prize_type, user_id", list(buckets))
        return [(int(t), str(p), str(u), int(n)) for t, p, u, n in rows]

    async def player_wins(self, buckets: Sequence[int], modulo: int) -> list[tuple[str, str, int, str]]:
        """Return (user_id, claim_id, task_id, prize_type) of every won claim of the players in these buckets (user
        id's CRC32 mod `modulo`: the Redis ledger's players' buckets)."""
        marks = ", ".join(["%s"] * len(buckets))
        rows = await self._run(f"SELECT user_id, claim_id, task_id, prize_type FROM claims WHERE outcome = 'won' AND "
                               f"MOD(CRC32(user_id), {modulo}) IN ({marks})", list(buckets))
        return [(str(u), str(c), int(t), str(p)) for u, c, t, p in rows]

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
