"""Player JWTs as an app's own login mints them: HS256 with a shared secret, RS256 and EdDSA (Ed25519) with the keys
of a JWKS URL, kept by key id (kid) and fetched again when a token names a key not seen yet (a rotation).

Nothing here knows HTTP routes: a refused token raises JwtError (a 401 in auth.py), and a token whose key could not
be looked up because the JWKS is unreachable raises KeysUnavailable (the token may be good; a 503 says try again).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import jwt
import orjson
from jwt.types import Options

from geo_service.settings import ServiceSettings

log = logging.getLogger("geodrop.jwt")

# Three base64url parts, unpadded: the compact JWS form (the third may be empty only to be refused with its reason,
# `alg: none`). Two parts are the service's own HMAC tokens (tokens.py).
JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_TOKEN_CHARS = 8192  # aiohttp refuses longer header lines anyway; a bound before any decoding
# Player ids go into SQL rows and Redis keys: no braces (a Redis hash tag), no whitespace, nothing to quote.
PLAYER_RE = re.compile(r"[A-Za-z0-9_.@|:+-]{1,64}")
MAX_JWKS_BYTES = 1 << 20  # a key set is a few KiB; a body past this is a wrong URL or an attack, not keys
MAX_WAITING = 64  # requests of one worker parked on a key set fetch at once; more answer 503 at once
MIN_RSA_BITS = 2048
# The one algorithm each usable key type verifies: a token cannot choose how its key is read (RFC 8725 2.1), and
# HS256 is never given a JWKS key (an RSA public key taken as an HMAC secret forges anything).
KEY_ALGS: dict[tuple[object, object], str] = {("RSA", None): "RS256", ("OKP", "Ed25519"): "EdDSA"}
_REQUIRED: Options = {"require": ["exp", "iat", "iss", "aud"]}
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad token signature"),
)


class JwtError(ValueError):
    """A player JWT that is malformed, badly signed, expired or not for this service; the message is the reason."""


class KeysUnavailable(Exception):
    """The JWKS could not be fetched when a token needed a key from it: the token may well be good."""


def is_jwt(token: str) -> bool:
    """Return whether a bearer token has the JWT's shape (three base64url parts), not the service's own (two)."""
    return len(token) <= MAX_TOKEN_CHARS and JWT_RE.fullmatch(token) is not None


def shown_url(url: str) -> str:
    """Return a URL as logs and /healthz may show it: a user:password@ as user:***@ and any query as ?***."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.password else ("***@" if parts.username else "")
    return urlunsplit(parts._replace(netloc=user + host, query="***" if parts.query else "", fragment=""))


@dataclass(frozen=True, slots=True)
class JwtRules:
    """What a player JWT must say to be taken, and where its player id is."""

    issuer: str
    audience: str
    player_claim: str = "sub"
    leeway_s: int = 30
    max_lifetime_s: int = 86400
    secret: str = field(default="", repr=False)  # HS256; empty: HS256 tokens are refused


@dataclass(frozen=True, slots=True)
class Jwk:
    """A usable signing key of the JWKS: its id, the one algorithm it verifies, the public key."""

    kid: str
    alg: str
    key: Any = field(repr=False)  # a cryptography RSAPublicKey or Ed25519PublicKey


def usable_key(item: object) -> Jwk | None:
    """Return a JWK as a Jwk if it is a public signing key of an allowed type with a kid; None to skip it."""
    if not isinstance(item, dict) or "d" in item:  # "d": private key material published by mistake
        return None
    kid, alg = item.get("kid"), KEY_ALGS.get((item.get("kty"), item.get("crv")))
    if not isinstance(kid, str) or not kid or alg is None or item.get("use", "sig") != "sig" or item.get("alg", alg) != alg:
        return None
    try:
        key = jwt.PyJWK(item, alg).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    if alg == "RS256" and key.key_size < MIN_RSA_BITS:
        return None
    return Jwk(kid, alg, key)


def parse_jwks(body: bytes) -> tuple[dict[str, Jwk], int]:
    """Return a JWKS's usable keys by kid and how many of its keys were skipped; raise ValueError for a body that is
    no JWKS or holds no usable key (that is taken as a broken answer: the last good keys stay)."""
    doc = orjson.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWKS (no "keys" list)')
    keys: dict[str, Jwk] = {}
    for item in doc["keys"]:
        jwk = usable_key(item)
        if jwk is not None and jwk.kid not in keys:  # a kid twice: the first; a key set should not do that
            keys[jwk.kid] = jwk
    if not keys:
        raise ValueError(f"no usable key (RSA 2048+ or Ed25519, with a kid) among its {len(doc['keys'])}")
    return keys, len(doc["keys"]) - len(keys)


@dataclass(frozen=True, slots=True)
class _Fetch:
    task: asyncio.Task[bool]  # True: the keys were replaced
    send_at: float  # monotonic time its request goes out, no sooner than min_refresh_s after the one before


class JwksCache:
    """The JWKS's keys by kid. One fetch at a time, which every request that needs it awaits (single flight), and at
    most one per min_refresh_s. A kid not held makes a fetch sent after the request came (the key may have been
    published a moment ago); the keys are fetched again in the background once refresh_s old; a failed fetch keeps
    the last good keys."""

    def __init__(self, url: str, refresh_s: float = 300.0, min_refresh_s: float = 1.0, timeout_s: float = 5.0,
                 max_bytes: int = MAX_JWKS_BYTES) -> None:
        # Credentials in the URL go in an Authorization header; `shown` is what logs, errors and /healthz say.
        parts = urlsplit(url)
        self._url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self._headers = {"Authorization": aiohttp.encode_basic_auth(unquote(parts.username or ""),
                                                                    unquote(parts.password or ""))} if parts.username else {}
        self.shown = shown_url(url)
        self.refresh_s, self.min_refresh_s, self.timeout_s, self.max_bytes = refresh_s, min_refresh_s, timeout_s, max_bytes
        self._keys: dict[str, Jwk] = {}
        self._fetch: _Fetch | None = None
        self._waiting = 0  # requests waiting for a fetch
        self._sent_at = -math.inf  # monotonic
        self._ok: bool | None = None  # how the last fetch went (None: none yet)
        self.fetched_at: float | None = None  # wall clock of the last good fetch
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.fetches = self.failures = self.skipped = 0

    async def key(self, kid: str, session: aiohttp.ClientSession) -> Jwk:
        """Return the key `kid`; raise JwtError if a fetch sent after this call began does not list it, or
        KeysUnavailable if that fetch failed."""
        arrived = time.monotonic()
        jwk = self._keys.get(kid)
        if jwk is not None:
            # Stale keys keep serving while the fetch runs: a JWKS that is slow or down delays no request.
            if arrived - self._sent_at >= (self.refresh_s if self._ok else self._retry_s()):
                self.start(session)
            return jwk
        if self._waiting >= MAX_WAITING:
            # Tokens naming keys not held, by the hundred, are a flood more than a rotation: they are not parked.
            raise KeysUnavailable(f"over {MAX_WAITING} tokens already wait for a key set fetch")
        self._waiting += 1
        try:
            return await self._fetched(kid, arrived, session)
        finally:
            self._waiting -= 1

    async def _fetched(self, kid: str, arrived: float, session: aiohttp.ClientSession) -> Jwk:
        while True:  # at most twice: a fetch sent before we came, then one sent after
            fetch = self.start(session)
            ok = await asyncio.shield(fetch.task)  # a request that goes away leaves the fetch to the others
            jwk = self._keys.get(kid)
            if jwk is not None:
                return jwk
            if fetch.send_at >= arrived:
                if not ok:
                    raise KeysUnavailable(f"the key set could not be fetched: {self.last_error}")
                raise JwtError("unknown key")

    def _retry_s(self) -> float:
        # After a failed fetch the background retries come sooner than refresh_s, yet do not hammer a JWKS that is down.
        return min(self.refresh_s, 10 * self.min_refresh_s)

    def start(self, session: aiohttp.ClientSession) -> _Fetch:
        """Return the fetch in flight or waiting for its turn; start one if there is none."""
        if self._fetch is None:
            now = time.monotonic()
            send_at = max(now, self._sent_at + self.min_refresh_s)
            self._fetch = _Fetch(asyncio.create_task(self._run(session, send_at - now), name="jwks-fetch"), send_at)
        return self._fetch

    async def _run(self, session: aiohttp.ClientSession, delay_s: float) -> bool:
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            self._sent_at = time.monotonic()
            self.fetches += 1
            try:
                keys, skipped = parse_jwks(await self._get(session))
            except TimeoutError:
                self._failed(f"TimeoutError: no whole answer within jwks_timeout_s ({self.timeout_s:g} s)")
                return False
            except Exception as exc:  # any failure at all keeps the last good keys, and says why
                self._failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                return False
            gone = sorted(self._keys.keys() - keys.keys())
            if gone:
                log.info("JWKS keys withdrawn", extra={"jwks": self.shown, "kids": gone})
            self._keys, self.skipped, self._ok, self.fetched_at = keys, skipped, True, time.time()
            return True
        finally:
            self._fetch = None

    def _failed(self, error: str) -> None:
        # An aiohttp message may hold the URL (with its query): only the shown form leaves this object.
        self.last_error = error.replace(self._url, self.shown)
        self._ok, self.last_error_at = False, time.time()
        self.failures += 1
        log.warning("JWKS fetch failed; the last good keys stay", extra={"jwks": self.shown, "error": self.last_error,
                                                                         "kids": sorted(self._keys)})

    async def _get(self, session: aiohttp.ClientSession) -> bytes:
        async with asyncio.timeout(self.timeout_s):  # the whole fetch, body included: a drip-fed JWKS fails too
            async with session.get(self._url, headers=self._headers, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                if (resp.content_length or 0) > self.max_bytes:
                    raise ValueError(f"body of {resp.content_length} bytes, over the {self.max_bytes}-byte cap")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise ValueError(f"body over the {self.max_bytes}-byte cap")
                return bytes(body)

    def view(self) -> dict[str, object]:
        """The key set's state for /healthz: never the URL's credentials or query."""
        now = time.time()
        return {"url": self.shown, "kids": sorted(self._keys), "last_fetch_ok": self._ok,
                "fetched_s_ago": None if self.fetched_at is None else round(now - self.fetched_at, 1),
                "last_error": self.last_error,
                "last_error_s_ago": None if self.last_error_at is None else round(now - self.last_error_at, 1),
                "fetches": self.fetches, "failures": self.failures, "skipped_keys": self.skipped}

    async def close(self) -> None:
        fetch = self._fetch
        if fetch is not None:
            fetch.task.cancel()
            await asyncio.gather(fetch.task, return_exceptions=True)


def _one_spelling(token: str) -> bool:
    # Signature bytes have more than one base64url spelling (unused low bits of the last character), and the
    # signature check covers only the first two parts: a limit keyed on the token must see one spelling only.
    sig = token.rpartition(".")[2]
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)) if len(sig) % 4 != 1 else b""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == sig


def _refusal(exc: jwt.PyJWTError) -> JwtError:
    """Return PyJWT's refusal as the reason a client is told."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return JwtError(f"token lacks the {exc.claim} claim")
    return JwtError(next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "invalid token"))


class JwtVerifier:
    """Checks player JWTs: the signature with the key the algorithm allows, then the claims; returns the player."""

    def __init__(self, rules: JwtRules, jwks: JwksCache | None) -> None:
        self.rules, self.jwks = rules, jwks

    async def verify(self, token: str, session: aiohttp.ClientSession) -> str:
        """Return the player id of a JWT; raise JwtError with the reason, or KeysUnavailable."""
        if not is_jwt(token) or not _one_spelling(token):
            raise JwtError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise JwtError("malformed token") from None
        alg = header.get("alg")
        key: Any
        if alg == "HS256" and self.rules.secret:
            key = self.rules.secret
        elif alg in ("RS256", "EdDSA") and self.jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise JwtError("token names no key (kid)")
            self._precheck(token)
            jwk = await self.jwks.key(kid, session)
            if jwk.alg != alg:
                raise JwtError("token algorithm does not match its key")
            key = jwk.key
        else:
            raise JwtError("token algorithm not accepted")
        return self._player(self._claims(token, key, alg))

    def _precheck(self, token: str) -> None:
        """Refuse, before a key is looked up (and maybe fetched), a token whose unverified claims are not for us: a
        token of another issuer or audience, or already expired, is no reason to ask the key set."""
        try:
            # Without the signature PyJWT checks no claim unless told to, each by name.
            jwt.decode(token, options={"verify_signature": False, "verify_exp": True, "verify_iss": True,
                                       "verify_aud": True, "require": ["exp", "iss", "aud"]},
                       audience=self.rules.audience, issuer=self.rules.issuer, leeway=self.rules.leeway_s)
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from None

    def _claims(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        rules = self.rules
        try:
            payload: dict[str, Any] = jwt.decode(token, key, algorithms=[alg], audience=rules.audience,
                                                 issuer=rules.issuer, leeway=rules.leeway_s, options=_REQUIRED)
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from None
        exp, iat = payload["exp"], payload["iat"]
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (exp, iat)):
            raise JwtError("token exp and iat must be numbers")
        if exp - iat > rules.max_lifetime_s:
            raise JwtError("token lifetime above jwt_max_lifetime_s")
        return payload

    def _player(self, payload: dict[str, Any]) -> str:
        claim = self.rules.player_claim
        player = payload.get(claim)
        if player is None:
            raise JwtError(f"token lacks the {claim} claim")
        if not isinstance(player, str) or not PLAYER_RE.fullmatch(player):
            raise JwtError(f"token {claim} claim is no player id (1-64 of A-Z a-z 0-9 _ . @ | : + -)")
        return player

    def warm(self, session: aiohttp.ClientSession) -> None:
        """Start fetching the JWKS now, so the first token does not wait for it (nor does serving)."""
        if self.jwks is not None:
            self.jwks.start(session)

    def view(self) -> dict[str, object]:
        """What /healthz shows: which kinds of JWT are taken and the key set's state."""
        return {"hs256": bool(self.rules.secret), "jwks": None if self.jwks is None else self.jwks.view()}

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()


def verifier_of(settings: ServiceSettings) -> JwtVerifier | None:
    """Return the JWT verifier the settings ask for; None when neither jwt_secret nor jwt_jwks_url is set."""
    if not (settings.jwt_secret or settings.jwt_jwks_url):
        return None
    rules = JwtRules(settings.jwt_issuer, settings.jwt_audience, settings.jwt_player_claim, settings.jwt_leeway_s,
                     settings.jwt_max_lifetime_s, settings.jwt_secret)
    jwks = JwksCache(settings.jwt_jwks_url, settings.jwks_refresh_s, settings.jwks_min_refresh_s,
                     settings.jwks_timeout_s) if settings.jwt_jwks_url else None
    return JwtVerifier(rules, jwks)
