"""Channels: where each prize type is delivered, read from the operators' channels file (JSON).

    {"channels": [{"name": "wallet", "url": "https://wallet.example/geodrop", "class": "fast",
                   "rate_per_s": 2000, "max_in_flight": 64, "timeout_s": 2, "secret_env": "WALLET_SECRET",
                   "eta": "within a minute", "prizes": ["cash"]}]}

The file holds no secret: `secret_env` names the environment variable the signing secret is in. A leaf: the
build (which refuses a prize with no channel), the dispatchers and the collector all read it; it imports only the
settings leaf.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from geo_service.config import is_loopback, secret_problems

CLASSES = ("fast", "slow")
MIN_RATE_PER_S = 0.001  # the ledger keeps rates in thousandths a second: less would be a silent zero
MAX_RATE_PER_S = 1e6


def rate_problem(rate: float) -> str | None:
    """Say what is wrong with a channel's rate (calls a second), from the file, the CLI or the dashboard."""
    if math.isfinite(rate) and MIN_RATE_PER_S <= rate <= MAX_RATE_PER_S:
        return None
    return f"must be in [{MIN_RATE_PER_S:g}, {MAX_RATE_PER_S:g}], got {rate:g}"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_FIELDS = {"name", "url", "class", "rate_per_s", "max_in_flight", "timeout_s", "secret_env", "eta", "prizes"}


class ChannelsError(ValueError):
    """A channels file that cannot be used; the message names the file, the channel and the field."""


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    url: str  # the partner's endpoint: http(s), no credentials in it
    kind: str  # fast (cash: must arrive at once) or slow (coupons): separate pools, never sharing a budget
    rate_per_s: float  # the partner's capacity, across every dispatcher together
    max_in_flight: int  # calls open at once, per dispatcher
    timeout_s: float  # a call not answered in this long is retried (and slows the channel)
    secret_env: str  # the environment variable holding the signing secret
    eta: str  # what players are told ("within 24 h")
    prizes: tuple[str, ...]

    @property
    def rate_milli(self) -> int:
        return round(self.rate_per_s * 1000)

    def secret(self, environ: Mapping[str, str] = os.environ) -> str:
        """Return the signing secret; raise ChannelsError if its variable is unset or too short to be one, or holds a
        published demo secret (or one under 32 bytes) for a partner off loopback."""
        value = environ.get(self.secret_env, "")
        if len(value) < 16:
            raise ChannelsError(f"channel {self.name}: set {self.secret_env} to its signing secret (16 characters or more)")
        problems = secret_problems(urlsplit(self.url).hostname or "", {self.secret_env: value})
        if problems:
            raise ChannelsError(f"channel {self.name}: {problems[0]}")
        return value


@dataclass(frozen=True, slots=True)
class Channels:
    path: str
    channels: tuple[Channel, ...]

    def of_prize(self, prize_type: str) -> Channel | None:
        return next((c for c in self.channels if prize_type in c.prizes), None)

    def named(self, name: str) -> Channel:
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise ChannelsError(f"{self.path}: no channel named {name!r} (have: {', '.join(c.name for c in self.channels)})")

    def manifest(self) -> dict[str, dict[str, str]]:
        """Return prize type -> channel and ETA, as a snapshot's manifest carries it for the players' view."""
        return {p: {"channel": c.name, "eta": c.eta} for c in self.channels for p in c.prizes}


def _field(raw: dict[str, Any], key: str, kinds: tuple[type, ...], where: str, what: str) -> Any:
    value = raw.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ChannelsError(f"{where}, field {key}: must be {what}, got {value!r}")
    return value


def _channel(raw: Any, where: str) -> Channel:
    if not isinstance(raw, dict):
        raise ChannelsError(f"{where}: must be an object")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ChannelsError(f"{where}, field {unknown[0]}: unknown (fields are {', '.join(sorted(_FIELDS))})")
    name = _field(raw, "name", (str,), where, "a name of a-z 0-9 _ -")
    if not name or len(name) > 64 or set(name) - _NAME_CHARS:
        raise ChannelsError(f"{where}, field name: must be 1-64 characters of a-z 0-9 _ -, got {name!r}")
    where = f"{where} ({name})"
    url = _field(raw, "url", (str,), where, "an http(s) URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChannelsError(f"{where}, field url: must be an http(s) URL, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ChannelsError(f"{where}, field url: must hold no credentials, query or fragment (the secret goes in "
                            "secret_env)")
    if parts.scheme != "https" and not is_loopback(parts.hostname):
        raise ChannelsError(f"{where}, field url: must be https off loopback (answers say what was delivered)")
    kind = _field(raw, "class", (str,), where, "fast or slow")
    if kind not in CLASSES:
        raise ChannelsError(f"{where}, field class: must be fast or slow, got {kind!r}")
    rate = float(_field(raw, "rate_per_s", (int, float), where, "a number of calls a second"))
    in_flight = _field(raw, "max_in_flight", (int,), where, "a whole number")
    timeout = float(_field(raw, "timeout_s", (int, float), where, "seconds"))
    if problem := rate_problem(rate):
        raise ChannelsError(f"{where}, field rate_per_s: {problem}")
    if not 1 <= in_flight <= 10_000:
        raise ChannelsError(f"{where}, field max_in_flight: must be 1 to 10000, got {in_flight}")
    if not 0 < timeout <= 300:
        raise ChannelsError(f"{where}, field timeout_s: must be in (0, 300], got {timeout:g}")
    secret_env = _field(raw, "secret_env", (str,), where, "an environment variable's name")
    eta = _field(raw, "eta", (str,), where, "a text for players")
    prizes = _field(raw, "prizes", (list,), where, "a list of prize types")
    if not prizes or not all(isinstance(p, str) and p for p in prizes):
        raise ChannelsError(f"{where}, field prizes: must be a list of one or more prize types")
    return Channel(name, url, kind, rate, in_flight, timeout, secret_env, eta[:200], tuple(prizes))


def load_channels(path: str | Path) -> Channels:
    """Read and check a channels file; raise ChannelsError naming the file, the channel and the field."""
    try:
        raw = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ChannelsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ChannelsError(f"{path}: not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("channels"), list):
        raise ChannelsError(f"{path}: must be an object with a list of channels under \"channels\"")
    channels = tuple(_channel(c, f"{path}: channel {i + 1}") for i, c in enumerate(raw["channels"]))
    if not channels:
        raise ChannelsError(f"{path}: names no channel")
    seen: dict[str, str] = {}
    names: set[str] = set()
    for c in channels:
        if c.name in names:
            raise ChannelsError(f"{path}: channel {c.name}, field name: two channels have this name")
        names.add(c.name)
        for prize in c.prizes:
            if prize in seen:
                raise ChannelsError(f"{path}: channel {c.name}, field prizes: {prize!r} is delivered by {seen[prize]} too")
            seen[prize] = c.name
    return Channels(str(path), channels)
