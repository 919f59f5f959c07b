"""geo-service's settings: one frozen dataclass, loaded by the mechanism in config.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geo_service.config import (
    SettingsError,
    help_text,
    origin_endpoint_field,
    origin_field,
    origin_max_bytes_field,
    origin_poll_field,
    origin_problems,
    origin_timeout_field,
    secret_problems,
)
from geo_service.dsn import ledger_problems, url_problems


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """geo_service settings. Env: GEODROP_SERVICE_<FIELD>; TOML: top-level keys named as the fields."""

    snapshots: Path = field(default=Path("snapshots"), metadata=help_text("Snapshots folder holding CURRENT and <seq>/."))
    host: str = field(default="127.0.0.1", metadata=help_text("Address to listen on."))
    port: int = field(default=8080, metadata=help_text("TCP port; all workers share it (SO_REUSEPORT)."))
    workers: int = field(default=1, metadata=help_text("Worker processes; they share the port and the mmap'd arrays."))
    worker_id: int = field(default=0, metadata=help_text("This worker's number (set by the parent; shown in /healthz)."))
    poll_interval_s: float = field(default=1.0, metadata=help_text("How often to check CURRENT for a new snapshot."))
    origin: str = origin_field()
    origin_endpoint: str = origin_endpoint_field()
    origin_poll_s: float = origin_poll_field()
    origin_timeout_s: float = origin_timeout_field()
    origin_max_bytes: int = origin_max_bytes_field()
    max_pois: int = field(default=300, metadata=help_text("Cap on POIs per /v1/nearby answer; `truncated` says it cut."))
    level_few_below: int = field(default=100, metadata=help_text(
        "Answers show a prize with fewer than this many left as level `few` (more: `plenty`), not its count: "
        "a level moves only when a threshold is crossed, so answers and their ETags hold while claims land."))
    level_last_below: int = field(default=10, metadata=help_text(
        "Answers show a prize with fewer than this many left (and some) as level `last`; none left: `none`."))
    next_poll_ms: int = field(default=5000, metadata=help_text("Poll interval told to clients when the service is idle."))
    max_next_poll_ms: int = field(default=60000, metadata=help_text("Upper bound of the poll interval under load."))
    busy_inflight: int = field(default=256, metadata=help_text("In-flight requests above which clients are slowed."))
    shed_inflight: int = field(default=2048, metadata=help_text("In-flight requests above which requests get 503."))
    busy_lag_ms: float = field(default=20.0, metadata=help_text("Event-loop lag above which clients are slowed."))
    shed_lag_ms: float = field(default=500.0, metadata=help_text("Event-loop lag above which requests get 503."))
    max_query_bytes: int = field(default=2048, metadata=help_text("Longest accepted query string (414 beyond)."))
    collector: str = field(default="", metadata=help_text("Collector base URL for task status, e.g. http://127.0.0.1:8081 "
                                                      "(empty: the snapshot's windows and flags only)."))
    status_poll_s: float = field(default=1.0, metadata=help_text("How often to poll the collector for task status."))
    data_dir: Path = field(default=Path("var"), metadata=help_text(
        "Folder for the service's own files: the default ledger, and under mapped/ the private copy of the live "
        "snapshot its workers map (so damage to the snapshots folder cannot reach them)."))
    ledger: str = field(default="", repr=False,
                        metadata=help_text("Ledger DSN: sqlite:///PATH, mysql://user:pass@host:port/db, "
                                       "redis://host:port[/db] or redis+cluster://host:port[,host:port...] "
                                       "(empty: sqlite:///<data_dir>/ledger.sqlite3)."))
    record_db: str = field(default="", repr=False,
                           metadata=help_text("MySQL DSN the Redis ledger's flow log is shipped into: the ledger answers a "
                                          "claim id past its binding from there, gives a new ledger its epoch against "
                                          "it, and `ledger reconcile` reads the claims there (a Redis ledger only)."))
    token_secret: str = field(default="", repr=False,
                              metadata=help_text("HMAC secret of player tokens; empty disables POST /v1/claims."))
    token_ttl_s: int = field(default=86400, metadata=help_text("Lifetime of tokens minted by `geo-service token`."))
    catch_radius_m: float = field(default=50.0, metadata=help_text("How close (great-circle) a player must be to a POI."))
    win_cap: int = field(default=5, metadata=help_text("Most wins one player may take from one task."))
    max_speed_mps: float = field(default=30.0,
                                 metadata=help_text("Fastest plausible movement between a player's claims, m/s."))
    admin_token: str = field(default="", repr=False,
                             metadata=help_text("Bearer token for POST /v1/admin/reload; empty disables the route."))
    ask_again_every_s: float = field(default=10.0, metadata=help_text(
        "How often a player may ask for one prize again (POST /v1/me/prizes/{claim_id}/deliver); sooner: 429."))
    ledger_unsafe_ok: bool = field(default=False, metadata=help_text(
        "Let claims settle on a ledger whose server lacks the guarantees (on Redis: AOF with fsync always, "
        "noeviction, no replica failing over on its own), which /healthz lists: a throwaway test box only, said in "
        "the log at start and in /healthz."))
    claim_timeout_s: float = field(default=3.0, metadata=help_text(
        "Longest a claim waits for the ledger before answering 503 ledger_unavailable (a stalled database "
        "must not hold players and connections; a retry with the same claim_id settles it once)."))
    keepalive_timeout_s: float = field(default=20.0, metadata=help_text(
        "Seconds a connection may sit idle, or take to send a whole request (headers, then body), before it is "
        "closed: idle keep-alive connections and slow-drip clients give their sockets back."))
    shutdown_timeout_s: float = field(default=5.0, metadata=help_text("Grace period for requests in flight at shutdown."))
    access_log: bool = field(default=False, metadata=help_text("Log every request (quiet by default)."))
    uvloop: bool = field(default=True, metadata=help_text(
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
        problems += secret_problems(self.host, {"token_secret": self.token_secret, "admin_token": self.admin_token})
        if self.poll_interval_s <= 0 or self.origin_poll_s <= 0:
            problems.append("poll_interval_s and origin_poll_s: must be positive")
        problems += origin_problems(self.origin_timeout_s, self.origin_max_bytes) + url_problems("origin", self.origin)
        if min(self.claim_timeout_s, self.keepalive_timeout_s) <= 0 or self.ask_again_every_s < 0:
            problems.append("claim_timeout_s and keepalive_timeout_s: must be positive; ask_again_every_s: 0 or more")
        if problems:
            raise SettingsError(problems)

    @property
    def ledger_dsn(self) -> str:
        return self.ledger or f"sqlite:///{self.data_dir / 'ledger.sqlite3'}"

    @property
    def stage_dir(self) -> Path:
        return self.data_dir / "mapped"
