"""Settings shared by the processes: database connection settings parsed from a DSN."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


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
