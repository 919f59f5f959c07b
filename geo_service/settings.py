"""geo-service's settings: one frozen dataclass, loaded by the mechanism in config.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

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
                              metadata=help_text("HMAC secret of the service's own player tokens (`geo-service token`); "
                                                 "with jwt_secret and jwt_jwks_url empty too, player routes are off."))
    token_ttl_s: int = field(default=86400, metadata=help_text("Lifetime of tokens minted by `geo-service token`."))
    jwt_secret: str = field(default="", repr=False, metadata=help_text(
        "HS256 secret of player JWTs minted by your app's login (empty: HS256 tokens are refused)."))
    jwt_jwks_url: str = field(default="", repr=False, metadata=help_text(
        "URL of the JWKS whose RSA and Ed25519 keys sign player JWTs (RS256, EdDSA), e.g. "
        "https://login.example.com/.well-known/jwks.json; a user:password@ in it is sent as Basic auth and never "
        "shown (empty: RS256 and EdDSA tokens are refused)."))
    jwt_issuer: str = field(default="", metadata=help_text(
        "The `iss` every player JWT must carry (required with jwt_secret or jwt_jwks_url)."))
    jwt_audience: str = field(default="", metadata=help_text(
        "The audience every player JWT's `aud` must name, alone or in a list (required with jwt_secret or "
        "jwt_jwks_url)."))
    jwt_player_claim: str = field(default="sub", metadata=help_text(
        "The JWT claim holding the player id: 1-64 characters of A-Z a-z 0-9 _ . @ : + - and the vertical bar "
        "(else 401)."))
    jwt_leeway_s: int = field(default=30, metadata=help_text("Clock skew allowed in a JWT's `exp`, `nbf` and `iat`."))
    jwt_max_lifetime_s: int = field(default=86400, metadata=help_text(
        "Longest lifetime (`exp` - `iat`) of a player JWT; a longer-lived one is refused."))
    jwks_refresh_s: float = field(default=300.0, metadata=help_text(
        "Age at which the JWKS is fetched again, in the background on the next JWT (a token naming a key not held "
        "fetches it at once)."))
    jwks_min_refresh_s: float = field(default=1.0, metadata=help_text(
        "Least time between two JWKS fetches; a JWT naming a key not held that comes sooner waits for the next "
        "fetch (at most this long) rather than failing (64 such waits at once per worker; more answer 503)."))
    jwks_timeout_s: float = field(default=5.0, metadata=help_text(
        "Seconds a JWKS fetch may take in all (a failed fetch keeps the last good keys)."))
    catch_radius_m: float = field(default=50.0, metadata=help_text("How close (great-circle) a player must be to a POI."))
    win_cap: int = field(default=5, metadata=help_text("Most wins one player may take from one task."))
    player_win_cap: int = field(default=0, metadata=help_text(
        "Most wins one player may take in the whole event, across tasks (0: no such limit); claim answers tell "
        "the player's `wins_left` so a client can stop claiming."))
    capped_players_max: int = field(default=100_000, metadata=help_text(
        "Players each worker remembers as having reached player_win_cap, whose claims it answers without a ledger "
        "call (the oldest forgotten first; ~100 bytes each)."))
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
        if min(self.catch_radius_m, self.win_cap, self.max_speed_mps, self.capped_players_max) <= 0 or self.player_win_cap < 0:
            problems.append("catch_radius_m, win_cap, max_speed_mps and capped_players_max: must be positive; "
                            "player_win_cap: 0 (no limit) or more")
        problems += ledger_problems(self.ledger, self.record_db)
        problems += secret_problems(self.host, {"token_secret": self.token_secret, "admin_token": self.admin_token,
                                                "jwt_secret": self.jwt_secret})
        problems += self._jwt_problems()
        if self.poll_interval_s <= 0 or self.origin_poll_s <= 0:
            problems.append("poll_interval_s and origin_poll_s: must be positive")
        problems += origin_problems(self.origin_timeout_s, self.origin_max_bytes) + url_problems("origin", self.origin)
        if min(self.claim_timeout_s, self.keepalive_timeout_s) <= 0 or self.ask_again_every_s < 0:
            problems.append("claim_timeout_s and keepalive_timeout_s: must be positive; ask_again_every_s: 0 or more")
        if problems:
            raise SettingsError(problems)

    def _jwt_problems(self) -> list[str]:
        problems = []
        if (self.jwt_secret or self.jwt_jwks_url) and not (self.jwt_issuer and self.jwt_audience):
            problems.append("jwt_issuer and jwt_audience: required with jwt_secret or jwt_jwks_url (every JWT is checked "
                            "against both)")
        try:
            host = urlsplit(self.jwt_jwks_url).hostname
        except ValueError:  # a bracketed host that is no IPv6 address, say; the message must not echo the URL
            host = None
        if self.jwt_jwks_url and not (self.jwt_jwks_url.startswith(("http://", "https://")) and host):
            problems.append("jwt_jwks_url: must be an http(s):// URL with a host")
        else:
            problems += url_problems("jwt_jwks_url", self.jwt_jwks_url)
        if not self.jwt_player_claim:
            problems.append("jwt_player_claim: must name a claim")
        if self.jwt_leeway_s < 0 or self.jwt_max_lifetime_s <= 0:
            problems.append("jwt_leeway_s: must be 0 or more; jwt_max_lifetime_s: must be positive")
        if not 0 < self.jwks_min_refresh_s <= self.jwks_refresh_s or self.jwks_timeout_s <= 0:
            problems.append("jwks_min_refresh_s: must be positive and at most jwks_refresh_s; jwks_timeout_s: must be "
                            "positive")
        return problems

    @property
    def ledger_dsn(self) -> str:
        return self.ledger or f"sqlite:///{self.data_dir / 'ledger.sqlite3'}"

    @property
    def stage_dir(self) -> Path:
        return self.data_dir / "mapped"
