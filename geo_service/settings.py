"""Process settings: frozen dataclasses loaded from defaults < TOML file < environment < CLI flags."""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from geo_service.ledger import LEDGER_SCHEMES

S = TypeVar("S")


class SettingsError(ValueError):
    """Settings that do not parse; lists every problem at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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


def _help(text: str) -> dict[str, str]:
    return {"help": text}


# The origin settings of every process that pulls snapshots (geo-service, geo-collector).
def origin_field() -> Any:
    return field(default="", metadata=_help(
        "Origin to pull snapshots from into `snapshots`: http(s)://base URL of the folder a static server serves, "
        "s3://bucket/prefix, or a folder path (empty: local builds write `snapshots`)."))


def origin_endpoint_field() -> Any:
    return field(default="", metadata=_help("S3 endpoint URL for an s3:// origin, e.g. http://127.0.0.1:9000 "
                                            "(empty: AWS); credentials from the AWS_* environment variables."))


def origin_poll_field() -> Any:
    return field(default=1.0, metadata=_help("How often to check the origin's CURRENT (backs off to 30 s while it fails)."))


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """geo_service settings. Env: GEODROP_SERVICE_<FIELD>; TOML: top-level keys named as the fields."""

    snapshots: Path = field(default=Path("snapshots"), metadata=_help("Snapshots folder holding CURRENT and <seq>/."))
    host: str = field(default="127.0.0.1", metadata=_help("Address to listen on."))
    port: int = field(default=8080, metadata=_help("TCP port; all workers share it (SO_REUSEPORT)."))
    workers: int = field(default=1, metadata=_help("Worker processes; they share the port and the mmap'd arrays."))
    worker_id: int = field(default=0, metadata=_help("This worker's number (set by the parent; shown in /healthz)."))
    poll_interval_s: float = field(default=1.0, metadata=_help("How often to check CURRENT for a new snapshot."))
    origin: str = origin_field()
    origin_endpoint: str = origin_endpoint_field()
    origin_poll_s: float = origin_poll_field()
    max_pois: int = field(default=300, metadata=_help("Cap on POIs per /v1/nearby answer; `truncated` says it cut."))
    level_few_below: int = field(default=100, metadata=_help(
        "Answers show a prize with fewer than this many left as level `few` (more: `plenty`), not its count: "
        "a level moves only when a threshold is crossed, so answers and their ETags hold while claims land."))
    level_last_below: int = field(default=10, metadata=_help(
        "Answers show a prize with fewer than this many left (and some) as level `last`; none left: `none`."))
    next_poll_ms: int = field(default=5000, metadata=_help("Poll interval told to clients when the service is idle."))
    max_next_poll_ms: int = field(default=60000, metadata=_help("Upper bound of the poll interval under load."))
    busy_inflight: int = field(default=256, metadata=_help("In-flight requests above which clients are slowed."))
    shed_inflight: int = field(default=2048, metadata=_help("In-flight requests above which requests get 503."))
    busy_lag_ms: float = field(default=20.0, metadata=_help("Event-loop lag above which clients are slowed."))
    shed_lag_ms: float = field(default=500.0, metadata=_help("Event-loop lag above which requests get 503."))
    max_query_bytes: int = field(default=2048, metadata=_help("Longest accepted query string (414 beyond)."))
    collector: str = field(default="", metadata=_help("Collector base URL for task status, e.g. http://127.0.0.1:8081 "
                                                      "(empty: the snapshot's windows and flags only)."))
    status_poll_s: float = field(default=1.0, metadata=_help("How often to poll the collector for task status."))
    data_dir: Path = field(default=Path("var"), metadata=_help(
        "Folder for the service's own files: the default ledger, and under mapped/ the private copy of the live "
        "snapshot its workers map (so damage to the snapshots folder cannot reach them)."))
    ledger: str = field(default="", repr=False,
                        metadata=_help("Ledger DSN: sqlite:///PATH, mysql://user:pass@host:port/db, "
                                       "redis://host:port[/db] or redis+cluster://host:port[,host:port...] "
                                       "(empty: sqlite:///<data_dir>/ledger.sqlite3)."))
    record_db: str = field(default="", repr=False,
                           metadata=_help("MySQL DSN the Redis ledger's flow log is shipped into; `ledger reconcile` "
                                          "reads the claims there (a Redis ledger only)."))
    token_secret: str = field(default="", repr=False,
                              metadata=_help("HMAC secret of player tokens; empty disables POST /v1/claims."))
    token_ttl_s: int = field(default=86400, metadata=_help("Lifetime of tokens minted by `geo-service token`."))
    catch_radius_m: float = field(default=50.0, metadata=_help("How close (great-circle) a player must be to a POI."))
    win_cap: int = field(default=5, metadata=_help("Most wins one player may take from one task."))
    max_speed_mps: float = field(default=30.0,
                                 metadata=_help("Fastest plausible movement between a player's claims, m/s."))
    admin_token: str = field(default="", repr=False,
                             metadata=_help("Bearer token for POST /v1/admin/reload; empty disables the route."))
    claim_timeout_s: float = field(default=3.0, metadata=_help(
        "Longest a claim waits for the ledger before answering 503 ledger_unavailable (a stalled database "
        "must not hold players and connections; a retry with the same claim_id settles it once)."))
    keepalive_timeout_s: float = field(default=20.0, metadata=_help(
        "Seconds a connection may sit idle, or take to send a whole request (headers, then body), before it is "
        "closed: idle keep-alive connections and slow-drip clients give their sockets back."))
    shutdown_timeout_s: float = field(default=5.0, metadata=_help("Grace period for requests in flight at shutdown."))
    access_log: bool = field(default=False, metadata=_help("Log every request (quiet by default)."))
    uvloop: bool = field(default=True, metadata=_help(
        "Run workers on uvloop, a faster event loop than asyncio's own (false: asyncio's, e.g. to rule uvloop "
        "out when chasing a bug)."))

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port: must be in [1, 65535]; got {self.port}")
        if not 1 <= self.workers <= 64:
            problems.append(f"workers: must be in [1, 64]; got {self.workers}")
        if self.max_pois < 1:
            problems.append(f"max_pois: must be at least 1; got {self.max_pois}")
        if not 0 < self.level_last_below < self.level_few_below:
            problems.append("level_last_below: must be positive and below level_few_below")
        if not 0 < self.next_poll_ms <= self.max_next_poll_ms:
            problems.append("next_poll_ms: must be positive and at most max_next_poll_ms")
        if not 0 < self.busy_inflight < self.shed_inflight:
            problems.append("busy_inflight: must be positive and below shed_inflight")
        if not 0 < self.busy_lag_ms < self.shed_lag_ms:
            problems.append("busy_lag_ms: must be positive and below shed_lag_ms")
        if self.catch_radius_m <= 0 or self.win_cap < 1 or self.max_speed_mps <= 0:
            problems.append("catch_radius_m, win_cap and max_speed_mps: must be positive")
        problems += ledger_problems(self.ledger, self.record_db)
        if self.poll_interval_s <= 0 or self.origin_poll_s <= 0:
            problems.append("poll_interval_s and origin_poll_s: must be positive")
        if self.claim_timeout_s <= 0 or self.keepalive_timeout_s <= 0:
            problems.append("claim_timeout_s and keepalive_timeout_s: must be positive")
        if problems:
            raise SettingsError(problems)

    @property
    def ledger_dsn(self) -> str:
        return self.ledger or f"sqlite:///{self.data_dir / 'ledger.sqlite3'}"

    @property
    def stage_dir(self) -> Path:
        return self.data_dir / "mapped"


def ledger_problems(ledger: str, record_db: str) -> list[str]:
    """Return what is wrong with a ledger DSN (empty: the default) and a record database DSN."""
    problems = []
    if ledger and not ledger.startswith(LEDGER_SCHEMES):
        problems.append(f"ledger: must start with one of {', '.join(LEDGER_SCHEMES)}")
    if record_db and not record_db.startswith("mysql://"):
        problems.append("record_db: must be mysql://user:pass@host:port/db (or empty)")
    return problems


def _convert(name: str, kind: Any, value: Any) -> Any:
    if isinstance(kind, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
        raise ValueError(f"{name}: should be true or false; got {value!r}")
    if kind in (int, float) and isinstance(value, bool):
        raise ValueError(f"{name}: should be {kind.__name__}; got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: should be {getattr(kind, '__name__', kind)}; got {value!r}") from None


def load_settings(cls: type[S], prefix: str, toml_path: Path | None, env: Mapping[str, str],
                  overrides: Mapping[str, Any] | None = None) -> S:
    """Return settings from defaults < TOML file < env (PREFIX + FIELD) < overrides; raise SettingsError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    raw: dict[str, Any] = {}
    problems: list[str] = []
    if toml_path is not None:
        try:
            raw |= tomllib.loads(toml_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{toml_path}: {exc}")
        problems += [f"{toml_path}: unknown setting {k!r}" for k in raw if k not in names]
    raw |= {name: env[prefix + name.upper()] for name in names if prefix + name.upper() in env}
    raw |= {k: v for k, v in (overrides or {}).items() if v is not None}
    values = {}
    for name, value in raw.items():
        if name in names:
            try:
                values[name] = _convert(name, hints[name], value)
            except ValueError as exc:
                problems.append(str(exc))
    if problems:
        raise SettingsError(problems)
    return cls(**values)


def documented(cls: type) -> list[tuple[str, Any, str]]:
    """Return (name, default, help) for every settings field, for --help and the docs."""
    out = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        out.append((f.name, default, f.metadata.get("help", "")))
    return out


# Set by the supervising process, never by operators: no flag.
_INTERNAL = frozenset({"worker_id"})


def add_settings_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add --config and one flag per settings field (help and default from the field)."""
    parser.add_argument("--config", type=Path, help="TOML file of settings (keys named as the flags, with underscores).")
    for f in fields(cls):
        if f.name in _INTERNAL:
            continue
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default {'on' if f.default else 'off'})")
        else:
            parser.add_argument(flag, dest=f.name, help=f"{help_text} (default {f.default if f.repr else '(secret)'})")


def settings_from_args(cls: type[S], prefix: str, args: argparse.Namespace, env: Mapping[str, str]) -> S:
    """Return settings from defaults < args.config TOML < env < the flags add_settings_flags made."""
    overrides = {f.name: getattr(args, f.name, None) for f in fields(cls) if f.name not in _INTERNAL}  # type: ignore[arg-type]
    return load_settings(cls, prefix, args.config, env, overrides)


def cli_settings(cls: type[S], prefix: str, args: argparse.Namespace, program: str) -> S | None:
    """Return settings_from_args with the process environment, or print each problem as
    `program: problem` on stderr and return None (the command then exits 2)."""
    try:
        return settings_from_args(cls, prefix, args, os.environ)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"{program}: {problem}", file=sys.stderr)
        return None
