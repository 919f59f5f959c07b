"""Console settings: one frozen dataclass, loaded like the other services' (defaults < TOML < env < flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from geo_service.config import (
    SettingsError,
    help_text,
    origin_endpoint_field,
    origin_field,
    secret_problems,
)
from geo_service.dsn import url_problems
from placement.db import Db

MAX_SESSION_S = 12 * 3600


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """geo-console settings. Env: GEODROP_CONSOLE_<FIELD>; TOML: top-level keys named as the fields."""

    draft: str = field(default="sqlite:///var/console.sqlite3", repr=False, metadata=help_text(
        "The draft operators edit: mysql://user:pass@host:port/db (the source tables the build reads, in production) "
        "or sqlite:///PATH (a file, filled from --seed)."))
    seed: str = field(default="", metadata=help_text(
        "A data folder to fill an empty draft from at start (a draft that holds tasks is left as it is)."))
    snapshots: Path = field(default=Path("snapshots"), metadata=help_text(
        "Snapshots folder publish builds into (the live snapshot previews compare against)."))
    origin: str = origin_field()
    origin_endpoint: str = origin_endpoint_field()
    service: str = field(default="", metadata=help_text(
        "geo-service base URL asked whether it serves a published seq, e.g. http://127.0.0.1:8080 (empty: not asked)."))
    collector: str = field(default="", metadata=help_text(
        "geo-collector base URL whose live routes change quotas, rates and the kill switch without a rebuild."))
    collector_admin_token: str = field(default="", repr=False, metadata=help_text(
        "The collector's admin token, for its live routes (empty: live changes are off)."))
    channels: str = field(default="", metadata=help_text(
        "Delivery channels file: every prize type must have a channel (as the build checks); empty: not checked."))
    operators: Path = field(default=Path("var/operators.json"), metadata=help_text(
        "Operators file (geo-console operator add): each operator's name, role (admin or viewer) and token's "
        "SHA-256, and the key sessions are signed with. Read again when it changes."))
    session_s: int = field(default=900, metadata=help_text(
        "Lifetime of a signed-in page's session cookie (at most 12 h)."))
    work_dir: Path = field(default=Path("var/console"), metadata=help_text(
        "Scratch space for previews and publishes (exports of a SQLite draft, dry-run snapshots)."))
    keep: int = field(default=5, metadata=help_text("Snapshots kept for rollback by a publish."))
    memory_mb: int = field(default=2048, metadata=help_text("The build's working memory, as geo-snapshot build's."))
    max_upload_bytes: int = field(default=24 << 20, metadata=help_text(
        "Largest request body: an upload or a save of 200,000 points (the most one holds) fits."))
    host: str = field(default="127.0.0.1", metadata=help_text("Address to listen on."))
    port: int = field(default=8084, metadata=help_text("TCP port of the console."))

    def __post_init__(self) -> None:
        problems = secret_problems(self.host, {"collector_admin_token": self.collector_admin_token})
        try:
            Db(self.draft).check()
        except ValueError as exc:
            problems.append(f"draft: {exc}")
        problems += url_problems("origin", self.origin) + url_problems("service", self.service)
        problems += url_problems("collector", self.collector)
        if not 0 < self.session_s <= MAX_SESSION_S:
            problems.append(f"session_s: must be in (0, {MAX_SESSION_S}]")
        if min(self.keep, self.memory_mb, self.max_upload_bytes, self.port) <= 0:
            problems.append("keep, memory_mb, max_upload_bytes and port: must be positive")
        if problems:
            raise SettingsError(problems)
