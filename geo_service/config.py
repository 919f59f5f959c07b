"""The settings mechanism both services use: frozen dataclasses loaded from defaults < TOML file <
environment < CLI flags, each field's help beside its default, and one --flag per field.

A leaf beside dsn.py: it imports nothing of geodrop.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, TypeVar

S = TypeVar("S")


class SettingsError(ValueError):
    """Settings that do not parse; lists every problem at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# The published demo secrets (the Makefile's `make run`): anyone can read them, so they guard a laptop only.
DEMO_SECRETS = frozenset({"geodrop-demo-only", "geodrop-demo-admin", "geodrop-demo-partner-secret",
                          "geodrop-demo-console"})
MIN_SECRET_BYTES = 32


def secret_problems(host: str, secrets: Mapping[str, str]) -> list[str]:
    """Return why secrets must not guard a service listening on `host`: off loopback, a published demo secret or
    one shorter than MIN_SECRET_BYTES is refused (empty: the feature it guards is off)."""
    if is_loopback(host):
        return []
    return [f"{name}: a service listening on {host} needs a secret of its own, at least {MIN_SECRET_BYTES} bytes "
            "(the demo secrets are published)" for name, value in secrets.items()
            if value and (value in DEMO_SECRETS or len(value.encode()) < MIN_SECRET_BYTES)]


def is_loopback(host: str) -> bool:
    """Return whether a host name or address is this machine's loopback (a name other than localhost: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def help_text(text: str) -> dict[str, str]:
    """Return a settings field's metadata: its help, shown by --help and checked by the docs test."""
    return {"help": text}


# The origin settings of every process that pulls snapshots (geo-service, geo-collector).
def origin_field() -> Any:
    return field(default="", repr=False, metadata=help_text(
        "Origin to pull snapshots from into `snapshots`: http(s)://base URL of the folder a static server serves, "
        "s3://bucket/prefix, or a folder path (empty: local builds write `snapshots`)."))


def origin_endpoint_field() -> Any:
    return field(default="", metadata=help_text("S3 endpoint URL for an s3:// origin, e.g. http://127.0.0.1:9000 "
                                            "(empty: AWS); credentials from the AWS_* environment variables."))


def origin_poll_field() -> Any:
    return field(default=1.0, metadata=help_text("How often to check the origin's CURRENT (backs off to 30 s while it fails)."))


def origin_timeout_field() -> Any:
    return field(default=30.0, metadata=help_text(
        "Seconds the origin may stay silent, and may take over CURRENT or a manifest in all, before the poll fails; "
        "a file gets that plus its size at 256 KiB/s (a stalled or drip-feeding origin must not hold the host)."))


def origin_max_bytes_field() -> Any:
    return field(default=8 << 30, metadata=help_text(
        "Most bytes a pulled snapshot's files may add up to; a manifest listing more is refused before a byte is "
        "downloaded, and a file longer than its manifest says is cut off (the host's disk stays safe)."))


def origin_problems(timeout_s: float, max_bytes: int) -> list[str]:
    """Return what is wrong with the origin limits of a process that pulls snapshots."""
    return [] if timeout_s > 0 and max_bytes > 0 else ["origin_timeout_s and origin_max_bytes: must be positive"]


def _convert(name: str, kind: Any, value: Any) -> Any:
    if isinstance(kind, types.UnionType):
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
        raise ValueError(f"{name}: should be true or false; got {value!r}")
    if kind in (int, float) and isinstance(value, bool):
        raise ValueError(f"{name}: should be {kind.__name__}; got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: should be {getattr(kind, '__name__', kind)}; got {value!r}") from None


def load_settings(cls: type[S], prefix: str, toml_path: Path | None, env: Mapping[str, str],
                  overrides: Mapping[str, Any] | None = None) -> S:
    """Return settings from defaults < TOML file < env (PREFIX + FIELD) < overrides; raise SettingsError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    raw: dict[str, Any] = {}
    problems: list[str] = []
    if toml_path is not None:
        try:
            raw |= tomllib.loads(toml_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{toml_path}: {exc}")
        problems += [f"{toml_path}: unknown setting {k!r}" for k in raw if k not in names]
    raw |= {name: env[prefix + name.upper()] for name in names if prefix + name.upper() in env}
    raw |= {k: v for k, v in (overrides or {}).items() if v is not None}
    values = {}
    for name, value in raw.items():
        if name in names:
            try:
                values[name] = _convert(name, hints[name], value)
            except ValueError as exc:
                problems.append(str(exc))
    if problems:
        raise SettingsError(problems)
    return cls(**values)


def documented(cls: type) -> list[tuple[str, Any, str]]:
    """Return (name, default, help) for every settings field, for --help and the docs."""
    out = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        out.append((f.name, default, f.metadata.get("help", "")))
    return out


# Set by the supervising process, never by operators: no flag.
_INTERNAL = frozenset({"worker_id"})


def add_settings_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add --config and one flag per settings field (help and default from the field)."""
    parser.add_argument("--config", type=Path, help="TOML file of settings (keys named as the flags, with underscores).")
    for f in fields(cls):
        if f.name in _INTERNAL:
            continue
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default {'on' if f.default else 'off'})")
        else:
            parser.add_argument(flag, dest=f.name, help=f"{help_text} (default {f.default if f.repr else '(secret)'})")


def settings_from_args(cls: type[S], prefix: str, args: argparse.Namespace, env: Mapping[str, str]) -> S:
    """Return settings from defaults < args.config TOML < env < the flags add_settings_flags made."""
    overrides = {f.name: getattr(args, f.name, None) for f in fields(cls) if f.name not in _INTERNAL}  # type: ignore[arg-type]
    return load_settings(cls, prefix, args.config, env, overrides)


def cli_settings(cls: type[S], prefix: str, args: argparse.Namespace, program: str) -> S | None:
    """Return settings_from_args with the process environment, or print each problem as
    `program: problem` on stderr and return None (the command then exits 2)."""
    try:
        return settings_from_args(cls, prefix, args, os.environ)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"{program}: {problem}", file=sys.stderr)
        return None
