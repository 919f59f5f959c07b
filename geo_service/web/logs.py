"""Structured logs: one JSON object per line on stderr, with the record's `extra` fields."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry |= {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, **context: Any) -> None:
    """Send JSON lines to stderr at `level`; `context` (e.g. worker=1) is added to every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    if context:
        handler.addFilter(_ContextFilter(context))
    if logging.getLevelName(level.upper()) > logging.DEBUG:
        handler.addFilter(_quiet_malformed_requests)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _ContextFilter(logging.Filter):
    def __init__(self, context: dict[str, Any]) -> None:
        super().__init__()
        self.context = context

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.context.items():
            setattr(record, key, value)
        return True


def _quiet_malformed_requests(record: logging.LogRecord) -> bool:
    """Drop aiohttp's error-level traceback for a request that is not valid HTTP (a NUL in a header, say): the
    client got its 400, and on an open port such requests are the internet's noise, not the service's fault."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (record.name == "aiohttp.server" and isinstance(exc, HttpProcessingError))
