"""Named operators: who may read (viewer) and who may change and publish (admin).

The operators file holds each operator's name, role and the SHA-256 of their token (never the token), and a random
key sessions are signed with. A script sends `Authorization: Bearer <token>`; the page trades the token once at
POST /v1/session for an HttpOnly, SameSite=Strict cookie `<name>.<expires>.<HMAC>` (the HMAC covers the name,
role, expiry and the token's hash: removing an operator or giving them a new token ends their sessions), which
counts only with the page's X-Geodrop-Session header (no other origin can send that without a preflight).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from geo_service.config import DEMO_SECRETS, is_loopback
from geo_service.web.errors import ApiError, Unauthorized

log = logging.getLogger("geodrop.console")
COOKIE = "geodrop_console"
SESSION_HEADER = "X-Geodrop-Session"
ROLES = ("admin", "viewer")
NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_TOKEN_BYTES = 16  # what a guess must find; generated ones are 43


class Forbidden(ApiError):
    status, code = 403, "forbidden"


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: str
    token_sha256: str


@dataclass(frozen=True, slots=True)
class Operators:
    session_key: bytes
    by_name: dict[str, Operator]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode(errors="surrogateescape")).hexdigest()


class OperatorsFileError(ValueError):
    """An operators file that cannot be read or is not the shape `operator add` writes."""


def read_operators(path: Path) -> Operators:
    """Read the operators file; a missing one has nobody (every request is refused)."""
    try:
        doc = orjson.loads(path.read_bytes())
        ops = {o["name"]: Operator(o["name"], o["role"], o["token_sha256"]) for o in doc.get("operators", [])}
        key = bytes.fromhex(doc["session_key"])
    except FileNotFoundError:
        return Operators(b"", {})
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise OperatorsFileError(f"{path}: not an operators file ({type(exc).__name__}: {exc})") from None
    if any(op.role not in ROLES for op in ops.values()):
        raise OperatorsFileError(f"{path}: a role other than {', '.join(ROLES)}")
    return Operators(key, ops)


def add_operator(path: Path, name: str, role: str, token: str | None) -> str:
    """Add (or re-key) an operator; return their token (a new random one unless given). The file is rewritten
    whole and replaced atomically, readable by its owner only."""
    if not NAME.fullmatch(name) or role not in ROLES:
        raise ValueError(f"name must be 1-64 of A-Z a-z 0-9 _ . @ - and role one of {', '.join(ROLES)}")
    token = token or secrets.token_urlsafe(32)
    if len(token.encode()) < MIN_TOKEN_BYTES:
        raise ValueError(f"a token must be at least {MIN_TOKEN_BYTES} bytes")
    try:
        doc: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        doc = {"session_key": secrets.token_hex(32), "operators": []}
    doc["operators"] = [o for o in doc["operators"] if o["name"] != name]
    doc["operators"].append({"name": name, "role": role, "token_sha256": token_hash(token)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)
    return token


class OperatorBook:
    """The operators file, read again when it changes (a stat a request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._ops = Operators(b"", {})

    def current(self) -> Operators:
        """The operators as the file says now; a file broken after start keeps the last good ones (and says so)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            try:
                self._ops = read_operators(self.path)
            except OperatorsFileError as exc:
                log.error("operators file not read; the last good one stays", extra={"problem": str(exc)})
            self._stamp = stamp
        return self._ops


def demo_problems(ops: Operators, host: str) -> list[str]:
    """Why the operators must not guard a console listening on `host`: off loopback, a published demo token (the
    Makefile's) would let anyone in. The file keeps hashes, so the published tokens are recognised by theirs."""
    if is_loopback(host):
        return []
    demo = {token_hash(t) for t in DEMO_SECRETS}
    return [f"operator {op.name}: a console listening on {host} needs a token of their own (the demo tokens are "
            "published); give one with geo-console operator add" for op in ops.by_name.values() if op.token_sha256 in demo]


def _mac(ops: Operators, op: Operator, expires: int) -> str:
    return hmac.new(ops.session_key, f"{op.name}\n{op.role}\n{expires}\n{op.token_sha256}".encode(),
                    hashlib.sha256).hexdigest()


def session_value(ops: Operators, op: Operator, expires: int) -> str:
    return f"{op.name}.{expires}.{_mac(ops, op, expires)}"


def from_session(ops: Operators, value: str, now: float) -> Operator | None:
    parts = value.rsplit(".", 2)
    if len(parts) != 3:
        return None
    name, expires, mac = parts
    op = ops.by_name.get(name)
    if op is None or not (expires.isascii() and expires.isdigit() and len(expires) <= 12 and int(expires) > now):
        return None
    good = hmac.compare_digest(mac.encode(errors="surrogateescape"), _mac(ops, op, int(expires)).encode())
    return op if good else None


def from_bearer(ops: Operators, authorization: str) -> Operator | None:
    scheme, _, token = authorization.partition(" ")
    if scheme != "Bearer" or not token:
        return None
    digest = token_hash(token)
    return next((op for op in ops.by_name.values() if hmac.compare_digest(op.token_sha256, digest)), None)


def operator(request: web.Request, book: OperatorBook, role: str = "viewer") -> Operator:
    """Return who is asking (bearer token, or the page's session with its header); 401 if nobody, 403 if a viewer
    asks for an admin's action."""
    ops = book.current()
    op = from_bearer(ops, request.headers.get("Authorization", ""))
    if op is None and request.headers.get(SESSION_HEADER):
        op = from_session(ops, request.cookies.get(COOKIE, ""), time.time())
    if op is None:
        raise Unauthorized("sign in: Authorization: Bearer <operator token>, or the console page's session")
    if role == "admin" and op.role != "admin":
        raise Forbidden(f"{op.name} is a viewer; this needs an admin")
    return op
