"""Logs are JSON lines and quiet: a request that is not HTTP does not put a traceback in them."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
from aiohttp.http_exceptions import BadHttpMessage

from geo_service.web.logs import configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def _error(exc: Exception) -> None:
    try:
        raise exc
    except Exception:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")


@pytest.mark.parametrize(("level", "shown"), [("info", 1), ("debug", 2)])
def test_malformed_requests_are_quiet_unless_debugging(restored_logging: None, capsys: pytest.CaptureFixture[str],
                                                       level: str, shown: int) -> None:
    configure_logging(level, worker=3)
    _error(BadHttpMessage("Invalid header value char"))
    _error(ValueError("a real fault"))
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == shown
    assert lines[-1]["level"] == "error" and "ValueError: a real fault" in lines[-1]["exc"] and lines[-1]["worker"] == 3
