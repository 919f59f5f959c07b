"""Collector settings: one frozen dataclass, loaded like the service's."""

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
from geo_service.dsn import ledger_problems, ship_part, url_problems

MAX_ADMIN_SESSION_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """geo-collector settings. Env: GEODROP_COLLECTOR_<FIELD>; TOML: top-level keys named as the fields."""

    snapshots: Path = field(default=Path("snapshots"), metadata=help_text("Snapshots folder: task and district tables."))
    data_dir: Path = field(default=Path("var"), metadata=help_text(
        "Folder for the collector's own files: under mapped/ the private copy of the snapshot the dashboard maps "
        "(shared with a service on the same host and data_dir)."))
    origin: str = origin_field()
    origin_endpoint: str = origin_endpoint_field()
    origin_poll_s: float = origin_poll_field()
    origin_timeout_s: float = origin_timeout_field()
    origin_max_bytes: int = origin_max_bytes_field()
    ledger: str = field(default="sqlite:///var/ledger.sqlite3", repr=False,
                        metadata=help_text("Ledger DSN to read: sqlite:///PATH, mysql://user:pass@host:port/db, "
                                       "redis://host:port[/db] or redis+cluster://host:port[,host:port...]."))
    record_db: str = field(default="", repr=False,
                           metadata=help_text("MySQL DSN to ship a Redis ledger's flow log of claims into (the system of "
                                          "record); the collector then runs the shipper."))
    ship_part: str = field(default="1/1", metadata=help_text(
        "Which buckets of the flow log this collector ships, K/N: run N collectors with 1/N .. N/N to share the "
        "shipping (1/1: all of it)."))
    admin_token: str = field(default="", repr=False, metadata=help_text(
        "Bearer token of the admin routes (live prize changes, the dashboard's kill switch); empty disables them."))
    admin_session_s: int = field(default=900, metadata=help_text(
        "Lifetime of the dashboard's admin session: the page trades the token for an HttpOnly cookie that lasts this "
        "long (at most 12 h), and asks for the token again after."))
    channels: str = field(default="", metadata=help_text(
        "Delivery channels file (JSON, as geo-deliver's): the dashboard then shows each channel's backlog, pace and dead "
        "letters, read from the record database (empty: no deliveries panel)."))
    service: str = field(default="", metadata=help_text(
        "geo-service base URL the dashboard's probe and health strip ask, e.g. http://127.0.0.1:8080 (empty: none)."))
    source: str = field(default="", repr=False,
                        metadata=help_text("MySQL source DSN whose tasks.enabled column also switches tasks off (optional)."))
    host: str = field(default="127.0.0.1", metadata=help_text("Address to listen on."))
    port: int = field(default=8081, metadata=help_text("TCP port of the views."))
    tick_floor_s: float = field(default=1.0, metadata=help_text("Shortest tick interval (the normal pace)."))
    tick_ceiling_s: float = field(default=30.0, metadata=help_text("Longest tick interval when the database is slow or down."))
    slow_read_s: float = field(default=0.5, metadata=help_text("A ledger read slower than this lengthens the interval."))
    sweep_page_rows: int = field(default=10_000, metadata=help_text(
        "Counters read per tick by the sweep, the complete read spread over ticks that fills a new snapshot's index."))
    sweep_every_s: float = field(default=60.0, metadata=help_text(
        "How often the sweep re-reads every counter of the live snapshot (heals what a delta could miss)."))
    preview_horizon_s: int = field(default=86400, metadata=help_text("How far ahead /v1/previews looks for tasks starting."))
    stream_heartbeat_s: float = field(default=15.0, metadata=help_text("Idle time after which the stream sends a comment."))
    stream_max_s: float = field(default=600.0, metadata=help_text(
        "Longest a stream stays open; then it ends and the client reconnects (EventSource does so by itself), "
        "so no connection outlives a deploy or a balancer's limits by long."))
    stream_max_subscribers: int = field(default=500, metadata=help_text(
        "Most /v1/stream connections open at once; past it a new one is answered 503 with Retry-After, so idle "
        "streams cannot take the sockets the services' status polls and the dashboard's reads need."))

    def __post_init__(self) -> None:
        problems = secret_problems(self.host, {"admin_token": self.admin_token})
        if not 0 < self.tick_floor_s <= self.tick_ceiling_s:
            problems.append("tick_floor_s: must be positive and at most tick_ceiling_s")
        if min(self.slow_read_s, self.origin_poll_s, self.sweep_page_rows, self.sweep_every_s, self.preview_horizon_s,
               self.stream_heartbeat_s, self.stream_max_s, self.stream_max_subscribers, self.admin_session_s) <= 0:
            problems.append("slow_read_s, origin_poll_s, sweep_page_rows, sweep_every_s, preview_horizon_s, "
                            "stream_heartbeat_s, stream_max_s, stream_max_subscribers and admin_session_s: must be positive")
        problems += origin_problems(self.origin_timeout_s, self.origin_max_bytes) + url_problems("origin", self.origin)
        problems += url_problems("source", self.source)
        if self.admin_session_s > MAX_ADMIN_SESSION_S:
            problems.append(f"admin_session_s: at most {MAX_ADMIN_SESSION_S} (a stolen session must not last)")
        if self.source and not self.source.startswith("mysql://"):
            problems.append("source: must be mysql://user:pass@host:port/db (or empty)")
        problems += ledger_problems(self.ledger, self.record_db)
        if self.channels and self.ledger.startswith("redis") and not self.record_db:
            problems.append("channels: a Redis ledger's deliveries are in its record database; set record_db")
        try:
            ship_part(self.ship_part)
        except ValueError as exc:
            problems.append(f"ship_part: {exc}")
        if problems:
            raise SettingsError(problems)
