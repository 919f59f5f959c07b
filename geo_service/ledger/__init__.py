"""The ledger: prize counters and claim records, behind one small interface with three kinds of backend.

A win is the conditional increment `issued < quota` (and room in the prize's current 100 ms rate
slice, see rates.py) made atomically with the claim's record, or nothing at all. The SQL backends
(SQLite, MySQL) run one transaction written once as a plan (plans.py); the Redis backend runs one
server-side script a claim and ships its flow log of claim records into MySQL (redis.py, ship.py).
"""

from __future__ import annotations

from geo_service.dsn import LEDGER_SCHEMES, MySQLSettings, RedisSettings
from geo_service.ledger.deliveries import PlanRunner
from geo_service.ledger.interface import (
    REASONS,
    ClaimIdTaken,
    ClaimRequest,
    CounterRow,
    Counters,
    Difference,
    Ledger,
    LedgerCheck,
    LedgerError,
    LedgerRefusal,
    LedgerState,
    Outcome,
    PrizeChange,
    PrizeChangeRefused,
    Seed,
)

__all__ = [
    "REASONS", "ClaimIdTaken", "ClaimRequest", "CounterRow", "Counters", "Difference", "Ledger", "LedgerCheck", "LedgerError",
    "LedgerRefusal", "LedgerState", "Outcome", "PrizeChange", "PrizeChangeRefused", "Seed", "open_ledger",
    "open_records", "PlanRunner",
]


def open_ledger(dsn: str, record_db: str = "") -> Ledger:
    """Return the ledger a DSN names: sqlite:///PATH, mysql://user:pass@host:port/db, redis://host:port[/db]
    or redis+cluster://host:port[,host:port...]. `record_db` is the MySQL DSN a Redis ledger's flow log
    is shipped into (its reconcile reads the claims there)."""
    if dsn.startswith("sqlite:///"):
        from geo_service.ledger.sqlite import SQLiteLedger

        return SQLiteLedger(dsn.removeprefix("sqlite:///"))
    if dsn.startswith("mysql://"):
        from geo_service.ledger.mysql import MySQLLedger

        return MySQLLedger(MySQLSettings.from_dsn(dsn))
    if dsn.startswith(("redis://", "redis+cluster://")):
        from geo_service.ledger.redis import RedisLedger

        return RedisLedger(RedisSettings.from_dsn(dsn), record_db=record_db)
    raise ValueError(f"ledger must be one of {', '.join(s + '...' for s in LEDGER_SCHEMES)}; got {dsn.split('://')[0]!r}://")


def open_records(dsn: str, record_db: str = "") -> PlanRunner:
    """Return a plan runner on the record database of the ledger a DSN names (where claims and deliveries are): the
    SQL ledger's own database, or a Redis ledger's record_db."""
    if dsn.startswith(("redis://", "redis+cluster://")):
        if not record_db:
            raise ValueError("a Redis ledger's claims and deliveries are in its record database: give record_db")
        dsn = record_db
    if dsn.startswith("sqlite:///"):
        from geo_service.ledger.sqlite import SQLiteLedger

        return SQLiteLedger(dsn.removeprefix("sqlite:///"))
    if dsn.startswith("mysql://"):
        from geo_service.ledger.mysql import MySQLLedger

        return MySQLLedger(MySQLSettings.from_dsn(dsn), pool_size=4)
    raise ValueError(f"the record database must be sqlite:/// or mysql://; got {dsn.split('://')[0]!r}://")
