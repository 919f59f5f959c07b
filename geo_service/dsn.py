"""Where the databases are: DSNs parsed into settings for MySQL and Redis, and the ledger schemes.

A leaf: it imports nothing of geodrop, so settings, the ledger, the loaders and the collector all may.
Passwords never appear in a repr, a message or a manifest (`redacted`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

LEDGER_SCHEMES = ("sqlite:///", "mysql://", "redis://", "redis+cluster://")
# The Redis ledger's key layout (ledger/redis.py) spreads tasks over this many buckets, each a hash tag
# with a flow-log stream; shippers divide the buckets among themselves by part K/N.
REDIS_BUCKETS = 128


def check_authority(url: str, what: str) -> None:
    """Raise ValueError when a '/', '?', '#' or '@' left raw in a URL's user or password ends its authority early:
    the rest of the password would pass for the path or the query, and be shown. The message never echoes the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "mysql", "redis", "redis+cluster") or not parts.netloc:
        return  # a folder path or an s3:// bucket: no credentials in it, '@' is a plain character there
    if "@" not in parts.netloc and "@" in parts.path + parts.query + parts.fragment:
        raise ValueError(f"{what}: a '/', '?', '#' or '@' in its user or password must be percent-encoded "
                         "(%2F, %3F, %23, %40)")
    try:
        if parts.scheme != "redis+cluster":  # a cluster lists host:port pairs, each parsed by RedisSettings
            parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError(f"{what}: its port is not a number, or a ':' in its user or password is not "
                         "percent-encoded (%3A)") from None


def url_problems(name: str, url: str) -> list[str]:
    """Return what is wrong with a URL setting that may carry credentials (an origin, a DSN)."""
    try:
        check_authority(url, name)
    except ValueError as exc:
        return [str(exc)]
    return []


@dataclass(frozen=True, slots=True)
class MySQLSettings:
    """Where a MySQL/MariaDB database is; the password never appears in repr or logs."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = field(default="", repr=False)
    database: str = "test"

    @classmethod
    def from_dsn(cls, dsn: str) -> MySQLSettings:
        """Parse mysql://user:pass@host:port/db; raise ValueError naming what is wrong."""
        check_authority(dsn, "DSN")
        parts = urlsplit(dsn)
        if parts.scheme != "mysql":
            raise ValueError(f"DSN scheme must be mysql://, got {parts.scheme or 'none'!r}")
        database = parts.path.lstrip("/")
        if not database:
            raise ValueError("DSN names no database (mysql://user@host:port/DATABASE)")
        try:
            port = parts.port or 3306
        except ValueError:
            raise ValueError("DSN port is not a number") from None
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=database,
        )

    @property
    def redacted(self) -> str:
        """Return the DSN without its password, for messages and manifests."""
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where the Redis ledger is: one node (redis://) or a cluster's seed nodes (redis+cluster://)."""

    nodes: tuple[tuple[str, int], ...] = (("127.0.0.1", 6379),)
    cluster: bool = False
    db: int = 0
    password: str = field(default="", repr=False)
    max_connections: int = 64  # per node; calls in flight are bounded to it (the cluster pool raises beyond)
    timeout_s: float = 2.0
    # The options a DSN's query may set (?record_ttl_s=...&flow_backlog_max=...):
    # how long a shipped claim's binding stays in Redis for retries (after it, the record database answers them);
    record_ttl_s: int = 172_800
    # the most flow-log records the streams may hold unshipped, all buckets together: at a bucket's share of it
    # its claims answer 503 (the shipper has stopped) rather than fill Redis to its memory limit;
    flow_backlog_max: int = 10_000_000
    # the bits of each bucket's filter of claim ids (a Bloom filter, 7 hashes): 2^22 bits (512 KiB) hold about
    # 440,000 ids a bucket at 1% false positives, each of which costs its claim one look in the record database.
    claim_filter_bits: int = 2**22

    @classmethod
    def from_dsn(cls, dsn: str) -> RedisSettings:
        """Parse redis://[:pass@]host:port[/db][?option=value&...] or redis+cluster://[:pass@]host:port[,host:port...]
        [?option=value&...], the options being record_ttl_s, flow_backlog_max and claim_filter_bits."""
        scheme, _, rest = dsn.partition("://")
        if scheme not in ("redis", "redis+cluster"):
            raise ValueError(f"DSN scheme must be redis:// or redis+cluster://, got {scheme!r}")
        check_authority(dsn, "DSN")
        rest, _, query = rest.partition("?")
        options = _options(query)
        userinfo, _, hosts = rest.rpartition("@")
        hosts, _, db = hosts.partition("/")
        password = unquote(userinfo.partition(":")[2])
        nodes = []
        for item in hosts.split(","):
            parts = urlsplit(f"//{item}")
            try:
                nodes.append((parts.hostname or "127.0.0.1", parts.port or 6379))
            except ValueError:
                raise ValueError(f"DSN port of {item!r} is not a number") from None
        if scheme == "redis+cluster" and db:
            raise ValueError("a Redis Cluster has only database 0: give no /db")
        if db and not (db.isascii() and db.isdigit()):
            raise ValueError(f"DSN database must be a number, got {db!r}")
        return cls(tuple(nodes), scheme == "redis+cluster", int(db or 0), password, **options)

    @property
    def redacted(self) -> str:
        """Return the DSN without its password, for messages."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        return f"redis+cluster://{hosts}" if self.cluster else f"redis://{hosts}/{self.db}"


_OPTION_RANGES = {"record_ttl_s": (1, 10**9), "flow_backlog_max": (REDIS_BUCKETS, 10**12),
                  "claim_filter_bits": (64, 2**32)}


def _options(query: str) -> dict[str, int]:
    """Parse a Redis DSN's query of whole-number options; raise ValueError naming a bad one."""
    options = {}
    for item in filter(None, query.split("&")):
        name, _, value = item.partition("=")
        if name not in _OPTION_RANGES:
            raise ValueError(f"DSN option {name!r} is unknown; known: {', '.join(_OPTION_RANGES)}")
        low, high = _OPTION_RANGES[name]
        if not (value.isascii() and value.isdigit() and low <= int(value) <= high):
            raise ValueError(f"DSN option {name} must be a whole number in [{low}, {high}]; got {value!r}")
        options[name] = int(value)
    return options


def ledger_problems(ledger: str, record_db: str) -> list[str]:
    """Return what is wrong with a ledger DSN (empty: the default) and a record database DSN."""
    problems = []
    if ledger and not ledger.startswith(LEDGER_SCHEMES):
        problems.append(f"ledger: must start with one of {', '.join(LEDGER_SCHEMES)}")
    elif ledger.startswith("redis"):
        try:
            RedisSettings.from_dsn(ledger)
        except ValueError as exc:
            problems.append(f"ledger: {exc}")
    elif ledger.startswith("mysql://"):
        problems += [f"ledger: {p}" for p in _mysql_problems(ledger)]
    if record_db and not record_db.startswith("mysql://"):
        problems.append("record_db: must be mysql://user:pass@host:port/db (or empty)")
    elif record_db:
        problems += [f"record_db: {p}" for p in _mysql_problems(record_db)]
    return problems


def _mysql_problems(dsn: str) -> list[str]:
    try:
        MySQLSettings.from_dsn(dsn)
    except ValueError as exc:
        return [str(exc)]
    return []


def ship_part(text: str) -> tuple[int, int]:
    """Parse "K/N" (this shipper's part K of N); raise ValueError."""
    k, _, n = text.partition("/")
    if not (f"{k}{n}".isascii() and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n) <= REDIS_BUCKETS):
        raise ValueError(f"a shipping part is K/N with 1 <= K <= N <= {REDIS_BUCKETS}; got {text!r}")
    return int(k), int(n)
