"""Real parts the tests need (servers, binaries, a mountable tmpfs): missing under CI fails, elsewhere skips."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(part: str, how: str) -> NoReturn:
    """Stop a test that lacks a real part: under CI=true that is a failure, on a laptop a skip saying how to get it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{part} is required under CI")
    pytest.skip(f"{part} is missing; {how}")
