"""geo-deliver settings: one frozen dataclass, loaded like the services' (geo_service/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from geo_service.config import SettingsError, help_text
from geo_service.dsn import ledger_problems


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """geo-deliver settings. Env: GEODROP_DELIVER_<FIELD>; TOML: top-level keys named as the fields."""

    ledger: str = field(default="sqlite:///var/ledger.sqlite3", repr=False, metadata=help_text(
        "Ledger DSN whose won claims are delivered: sqlite:///PATH, mysql://user:pass@host:port/db, or a Redis "
        "ledger's (redis://..., redis+cluster://...), whose deliveries are in record_db."))
    record_db: str = field(default="", repr=False, metadata=help_text(
        "MySQL DSN of a Redis ledger's record database, where the shipper writes claims and deliveries."))
    channels: str = field(default="data/sample/channels.json", metadata=help_text(
        "Channels file (JSON): each partner's URL, class, rate, in-flight limit, timeout, secret variable, ETA and "
        "prize types (README: geo-deliver)."))
    only: str = field(default="", metadata=help_text(
        "Comma-separated channel names this dispatcher serves (empty: every channel in the file)."))
    host: str = field(default="127.0.0.1", metadata=help_text("Address of /healthz and /metrics."))
    port: int = field(default=0, metadata=help_text("TCP port of /healthz and /metrics (0: none)."))

    def __post_init__(self) -> None:
        problems = ledger_problems(self.ledger, self.record_db)
        if self.ledger.startswith(("redis://", "redis+cluster://")) and not self.record_db:
            problems.append("record_db: a Redis ledger's deliveries are in its record database; set record_db")
        if not 0 <= self.port <= 65535:
            problems.append(f"port: must be 0-65535, got {self.port}")
        if problems:
            raise SettingsError(problems)

    def channel_names(self) -> list[str]:
        return [n.strip() for n in self.only.split(",") if n.strip()]
