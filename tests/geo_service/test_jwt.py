"""Player JWTs from an app's own login, beside the service's own tokens: a key rotated under a claim load fails no
claim, every bad token is a 401 in the one error shape that never echoes it, and a JWKS down at start is taken up
once it is back. Real parts: a geo-service process tree, a JWKS served from a thread, keys made by cryptography."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from geo_service.config import SettingsError
from geo_service.jwt_tokens import MAX_WAITING, JwksCache, JwtError, KeysUnavailable
from geo_service.settings import ServiceSettings
from geo_service.tokens import mint as mint_hmac
from tests.conftest import MakeClient
from tests.support.processes import Process, free_port, get_json, service
from tests.test_error_shape import assert_error_shape

ISSUER, AUDIENCE, CLAIM = "https://login.test/", "geodrop-test", "uid"  # a non-default player claim
HS_SECRET = "jwt-hs256-secret-5e1d9c3b7a2f4e6d8c0b"
TOKEN_SECRET = "hmac-token-secret-3a9f1c7e5b2d4f6a"
JWKS_USER, JWKS_PASSWORD = "keys", "jwks-password-8c7b6a5f4e3d"
SPOT = "lat=22.5329&lng=113.9305"  # Nanshan, where the sample has POIs


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Signer:
    """A login's signing key: mints tokens with its kid; its public half goes into the JWKS."""

    kid: str
    alg: str  # RS256 or EdDSA
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            return {**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": self.kid, "use": "sig"}
        return {**OKPAlgorithm.to_jwk(public, as_dict=True), "kid": self.kid, "use": "sig"}

    def mint(self, player: Any = "player-1", **claims: Any) -> str:
        """A token for `player` (in CLAIM) valid 10 minutes; a claim given as None is left out."""
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, CLAIM: player, "iat": now, "exp": now + 600, **claims}
        return jwt.encode({k: v for k, v in payload.items() if v is not None}, self.private, algorithm=self.alg,
                          headers={"kid": self.kid})


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


STEADY_RSA, STEADY_ED = Signer("steady-rsa", "RS256", _rsa()), Signer("steady-ed", "EdDSA", ed25519.Ed25519PrivateKey.generate())
ROT_OLD, ROT_NEW = Signer("rot-1", "RS256", _rsa()), Signer("rot-2", "EdDSA", ed25519.Ed25519PrivateKey.generate())
NEVER_PUBLISHED = Signer("never-published", "EdDSA", ed25519.Ed25519PrivateKey.generate())


class KeySet:
    """A JWKS on a loopback port, served by http.server from a thread; it asks for Basic auth, as a JWKS behind a
    password would. The test publishes and withdraws keys and counts the fetches."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.keys: dict[str, dict[str, Any]] = {}
        self.fetches = 0
        self._server: ThreadingHTTPServer | None = None
        self.broken: bytes | None = None  # served instead of the keys while set
        self.stall_s = 0.0  # how long each answer is held back

    @property
    def url(self) -> str:
        return f"http://{JWKS_USER}:{JWKS_PASSWORD}@127.0.0.1:{self.port}/.well-known/jwks.json"

    def publish(self, *signers: Signer) -> None:
        with self.lock:
            self.keys |= {s.kid: s.jwk() for s in signers}

    def withdraw(self, kid: str) -> None:
        with self.lock:
            del self.keys[kid]

    def start(self) -> KeySet:
        keyset, expected = self, "Basic " + base64.b64encode(f"{JWKS_USER}:{JWKS_PASSWORD}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name for it
                with keyset.lock:
                    keyset.fetches += 1
                    body = orjson.dumps({"keys": list(keyset.keys.values())}) if keyset.broken is None else keyset.broken
                time.sleep(keyset.stall_s)
                authorized = self.headers.get("Authorization") == expected
                self.send_response(200 if authorized else 401)
                body = body if authorized else b"{}"
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture(scope="module")
def keyset() -> Iterator[KeySet]:
    keys = KeySet().start()
    keys.publish(STEADY_RSA, STEADY_ED, ROT_OLD)
    yield keys
    keys.stop()


@pytest.fixture(scope="module")
def served(sample_snapshots: Path, tmp_path_factory: pytest.TempPathFactory, keyset: KeySet) -> Iterator[Process]:
    """One geo-service (2 workers, each with its own key cache) taking both kinds of token; secrets by a config
    file, as an operator passes them (flags would show in the process list). Keys older than 2 s are fetched again."""
    folder = tmp_path_factory.mktemp("jwt")
    config = folder / "geo.toml"
    config.write_text("".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in {
        "token_secret": TOKEN_SECRET, "jwt_secret": HS_SECRET, "jwt_jwks_url": keyset.url, "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE, "jwt_player_claim": CLAIM, "jwks_refresh_s": 2.0}.items()))
    proc = service(sample_snapshots, folder / "var", "--config", str(config), workers=2).start()
    try:
        proc.wait_ready(workers=2)
        yield proc
    finally:
        proc.stop()


def _request(url: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any, str]:
    """GET (or POST `body` to) url with the bearer token; return status, headers and the body text."""
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {token}",
                                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def _refused(url: str, token: str, reason: str) -> None:
    """The token gets a 401 invalid_token in the one error shape, with the reason and without the token."""
    status, headers, text = _request(url, token)
    assert status == 401, text
    body = orjson.loads(text)
    assert_error_shape(401, headers, body, "invalid_token")
    assert reason in body["error"]["message"], body
    assert not any(part and part in text for part in token.split(".")), "the body echoes the token"


def _compact(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    """A JWT built by hand, as an attacker would: any header, any signature (none: an empty one)."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(payload))}"
    return f"{signing_input}.{_b64(sign(signing_input.encode())) if sign else ''}"


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, CLAIM: "mallory", "iat": now, "exp": now + 600, **changes}


def _pem_of(signer: Signer) -> bytes:
    return signer.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)


def _respelled(token: str) -> str:
    """The same signature bytes spelled with other unused low bits in its last character (an Ed25519 signature has
    four): a loose decoder takes it, so a limit keyed on the token would count it apart."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]


def _tampered() -> str:
    header, _, sig = STEADY_RSA.mint("alice").split(".")
    return f"{header}.{_b64(orjson.dumps(_claims(uid='alice-admin')))}.{sig}"


REFUSED: dict[str, tuple[Callable[[], str], str]] = {
    "expired": (lambda: STEADY_RSA.mint(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), "token expired"),
    "wrong-audience": (lambda: STEADY_ED.mint(aud="someone-else"), "wrong audience"),
    "wrong-audience-list": (lambda: STEADY_ED.mint(aud=["a", "b"]), "wrong audience"),
    "wrong-issuer": (lambda: STEADY_RSA.mint(iss="https://evil.test/"), "wrong issuer"),
    "alg-none": (lambda: _compact({"alg": "none", "typ": "JWT", "kid": "steady-rsa"}, _claims(), None),
                 "token algorithm not accepted"),
    "unknown-kid": (lambda: NEVER_PUBLISHED.mint(), "unknown key"),
    "no-kid": (lambda: jwt.encode(_claims(), STEADY_ED.private, algorithm="EdDSA"), "token names no key"),
    "lifetime-above-max": (lambda: STEADY_RSA.mint(exp=int(time.time()) + 86400 + 3600),
                           "token lifetime above jwt_max_lifetime_s"),
    # The RSA public key PEM as an HMAC secret: what an alg-confusion forgery signs with.
    "hs256-with-rsa-public-key": (lambda: _compact({"alg": "HS256", "typ": "JWT", "kid": "steady-rsa"}, _claims(),
                                                   lambda m: hmac.new(_pem_of(STEADY_RSA), m, hashlib.sha256).digest()),
                                  "bad token signature"),
    "rs256-on-the-ed25519-key": (lambda: jwt.encode(_claims(), STEADY_RSA.private, algorithm="RS256",
                                                    headers={"kid": "steady-ed"}), "token algorithm does not match"),
    "hs256-wrong-secret": (lambda: jwt.encode(_claims(), "x" * 40, algorithm="HS256"), "bad token signature"),
    "tampered-payload": (_tampered, "bad token signature"),
    "exp-missing": (lambda: STEADY_ED.mint(exp=None), "token lacks the exp claim"),
    "iat-missing": (lambda: STEADY_ED.mint(iat=None), "token lacks the iat claim"),
    "not-yet-valid": (lambda: STEADY_ED.mint(nbf=int(time.time()) + 3600), "token not yet valid"),
    "player-claim-missing": (lambda: STEADY_RSA.mint(None, sub="alice"), "token lacks the uid claim"),
    "player-brace": (lambda: STEADY_RSA.mint("{task-1}x"), "no player id"),
    "player-space": (lambda: STEADY_RSA.mint("al ice"), "no player id"),
    "player-tab": (lambda: STEADY_RSA.mint("al\tice"), "no player id"),
    "player-newline": (lambda: STEADY_RSA.mint("alice\n"), "no player id"),
    "player-65-chars": (lambda: STEADY_RSA.mint("a" * 65), "no player id"),
    "player-empty": (lambda: STEADY_RSA.mint(""), "no player id"),
    "player-number": (lambda: STEADY_RSA.mint(42), "no player id"),
    "garbled": (lambda: "abc.def.ghi", "malformed token"),
    "garbled-json": (lambda: f"{_b64(b'{not json')}.{_b64(b'[]')}.{_b64(b'sig')}", "malformed token"),
    "signature-respelled": (lambda: _respelled(STEADY_ED.mint()), "malformed token"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_bad_token_is_a_401_in_the_error_shape_with_its_reason_and_never_echoed(served: Process, case: str) -> None:
    make, reason = REFUSED[case]
    _refused(f"{served.url}/v1/me", make(), reason)


@pytest.mark.parametrize("signer", [STEADY_RSA, STEADY_ED], ids=["RS256", "EdDSA"])
def test_a_good_jwt_names_its_player_by_the_configured_claim(served: Process, signer: Signer) -> None:
    player = f"web|user:{signer.alg}+1@example.com"  # every character class a player id may use
    token = signer.mint(player, sub="not-this")
    status, _, text = _request(f"{served.url}/v1/me", token)
    assert status == 200 and orjson.loads(text)["user_id"] == player
    poi = get_json(f"{served.url}/v1/nearby?{SPOT}")["pois"][-1]
    claim = {"claim_id": f"odd-id-{signer.alg}", **{k: poi[k] for k in ("task_id", "poi_id", "lat", "lng")}}
    status, _, text = _request(f"{served.url}/v1/claims", token, claim)
    assert status == 200 and orjson.loads(text)["outcome"] == "won", text  # the id goes into the ledger as it is


def test_hs256_with_the_secret_and_the_services_own_tokens_both_pass(served: Process) -> None:
    hs = jwt.encode(_claims(uid="hs.player+1", sub="not-this", aud=["other", AUDIENCE]), HS_SECRET, algorithm="HS256")
    assert orjson.loads(_request(f"{served.url}/v1/me", hs)[2])["user_id"] == "hs.player+1"
    own = mint_hmac("demo-player", TOKEN_SECRET, int(time.time()) + 600)
    assert orjson.loads(_request(f"{served.url}/v1/me", own)[2])["user_id"] == "demo-player"


def test_health_shows_the_key_set_without_its_password(served: Process, keyset: KeySet) -> None:
    health = served.health()
    view = health["player_jwt"]
    assert view["hs256"] is True and view["jwks"]["last_fetch_ok"] is True
    assert {"steady-rsa", "steady-ed"} <= set(view["jwks"]["kids"])
    assert view["jwks"]["url"] == f"http://{JWKS_USER}:***@127.0.0.1:{keyset.port}/.well-known/jwks.json"
    assert JWKS_PASSWORD not in orjson.dumps(health).decode() and HS_SECRET not in orjson.dumps(health).decode()


async def test_a_key_rotated_under_a_claim_load_fails_no_claim(served: Process, keyset: KeySet) -> None:
    """16 claimers, each a player at a POI of the sample, claim for 6 s with the current key's token. At 1.5 s the
    new key is published and minting switches to it at once (its first tokens come before any worker holds it); at
    3 s the old key is withdrawn. No claim is refused; afterwards the old kid is refused on every worker."""
    nearby = get_json(f"{served.url}/v1/nearby?{SPOT}")
    pois = nearby["pois"][:16]
    assert len(pois) == 16
    current = {"signer": ROT_OLD}
    answers: list[tuple[str, int, dict[str, Any]]] = []
    fetches_before = keyset.fetches
    end = time.monotonic() + 6.0

    async def claimer(i: int, session: aiohttp.ClientSession) -> None:
        poi, n = pois[i], 0
        tokens: dict[str, str] = {}
        while time.monotonic() < end:
            signer = current["signer"]
            token = tokens.setdefault(signer.kid, signer.mint(f"rot-player-{i}"))  # a client keeps its token
            body = {"claim_id": f"rot-{i}-{n}", "task_id": poi["task_id"], "poi_id": poi["poi_id"],
                    "lat": poi["lat"], "lng": poi["lng"]}
            async with session.post(f"{served.url}/v1/claims", json=body,
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                answers.append((signer.kid, resp.status, await resp.json()))
            n += 1
            await asyncio.sleep(0.15)

    async def rotate() -> None:
        await asyncio.sleep(1.5)
        keyset.publish(ROT_NEW)
        current["signer"] = ROT_NEW  # signed with the moment it is published
        await asyncio.sleep(1.5)
        keyset.withdraw(ROT_OLD.kid)

    # Fresh connections, so the claims spread over both workers (SO_REUSEPORT), each with its own cache to renew.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        await asyncio.gather(rotate(), *(claimer(i, session) for i in range(16)))
    statuses = Counter(status for _, status, _ in answers)
    by_kid = Counter(kid for kid, _, _ in answers)
    outcomes = Counter(body.get("outcome") for _, status, body in answers if status == 200)
    assert len(answers) >= 300 and by_kid["rot-1"] >= 100 and by_kid["rot-2"] >= 100, (by_kid, statuses)
    assert statuses == {200: len(answers)}, (statuses, [b for _, s, b in answers if s != 200][:3])
    assert set(outcomes) <= {"won", "no_prize_left", "cap_reached", "too_far", "task_inactive", "implausible_movement"}
    assert keyset.fetches - fetches_before >= 2  # each worker fetched the new key
    old = ROT_OLD.mint("rot-player-0")
    # At once (each worker's fetch for them is shared) and on fresh connections, so both workers answer.
    for status, _, text in await asyncio.gather(*(asyncio.to_thread(_request, f"{served.url}/v1/me", old)
                                                  for _ in range(8))):
        assert status == 401 and orjson.loads(text)["error"]["message"] == "unknown key", text
    assert _request(f"{served.url}/v1/me", ROT_NEW.mint("rot-player-0"))[0] == 200


async def test_a_key_published_just_after_a_fetch_is_waited_for_by_one_shared_fetch() -> None:
    """The key cache on its own: tokens naming a kid published right after a fetch wait (at most min_refresh_s) for
    the next allowed fetch, all 20 on one; a withdrawn key stops verifying after the refetch."""
    keys = KeySet().start()
    try:
        keys.publish(STEADY_RSA)
        cache = JwksCache(keys.url, refresh_s=300.0, min_refresh_s=0.5, timeout_s=2.0)
        async with aiohttp.ClientSession() as session:
            assert (await cache.key("steady-rsa", session)).alg == "RS256" and keys.fetches == 1
            keys.publish(ROT_NEW)
            started = time.monotonic()
            found = await asyncio.gather(*(cache.key("rot-2", session) for _ in range(20)))
            waited = time.monotonic() - started
            assert {(k.kid, k.alg) for k in found} == {("rot-2", "EdDSA")} and keys.fetches == 2
            assert 0.3 <= waited <= 1.0, waited  # the next allowed fetch, not a refusal and not a long wait
            keys.withdraw("steady-rsa")
            with pytest.raises(JwtError, match="^unknown key$"):
                await cache.key("never-published", session)  # one more fetch: the withdrawal is seen
            assert keys.fetches == 3 and cache.view()["kids"] == ["rot-2"]
            with pytest.raises(JwtError, match="^unknown key$"):
                await cache.key("steady-rsa", session)
            await cache.close()
    finally:
        keys.stop()


@pytest.mark.parametrize("claims", [{"iss": "https://evil.test/"}, {"aud": "someone-else"}, {"exp": 1}],
                         ids=["issuer", "audience", "expired"])
def test_a_token_not_for_us_naming_an_unknown_key_fetches_nothing(served: Process, keyset: KeySet,
                                                                   claims: dict[str, Any]) -> None:
    token = _compact({"alg": "RS256", "kid": "never-published", "typ": "JWT"}, _claims(**claims), lambda _: b"x" * 256)
    before = keyset.fetches
    status, _, _ = _request(f"{served.url}/v1/me", token)
    assert status == 401 and keyset.fetches == before  # refused on its unverified claims, before any key is sought


async def test_a_flood_of_unknown_kids_parks_at_most_max_waiting_requests_and_fetches_once_a_turn() -> None:
    keys = KeySet().start()
    try:
        keys.publish(STEADY_RSA)
        cache = JwksCache(keys.url, refresh_s=300.0, min_refresh_s=0.5, timeout_s=2.0)
        async with aiohttp.ClientSession() as session:
            await cache.key("steady-rsa", session)
            started = time.monotonic()
            answers = await asyncio.gather(*(cache.key(f"random-{i}", session) for i in range(3 * MAX_WAITING)),
                                           return_exceptions=True)
            assert time.monotonic() - started <= 1.0
            refused_at_once = [a for a in answers if isinstance(a, KeysUnavailable)]
            unknown = [a for a in answers if isinstance(a, JwtError)]
            assert (len(unknown), len(refused_at_once)) == (MAX_WAITING, 2 * MAX_WAITING)
            assert keys.fetches == 2  # the parked ones shared one fetch
            await cache.close()
    finally:
        keys.stop()


@pytest.mark.parametrize(("broken", "stall_s", "error"), [
    (b"<html>login</html>", 0.0, "JSONDecodeError"), (b'{"keys": []}', 0.0, "no usable key"),
    (orjson.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "steady-rsa"}]}), 0.0, "no usable key"),
    (b" " * 5000, 0.0, "over the 4096-byte cap"), (None, 1.0, "TimeoutError: no whole answer within jwks_timeout_s (0.3 s)"),
], ids=["html", "empty", "symmetric-key", "too-big", "stalled"])
async def test_a_bad_key_set_answer_keeps_the_last_good_keys(broken: bytes | None, stall_s: float, error: str) -> None:
    keys = KeySet().start()
    try:
        keys.publish(STEADY_RSA)
        cache = JwksCache(keys.url, refresh_s=0.2, min_refresh_s=0.1, timeout_s=0.3, max_bytes=4096)
        async with aiohttp.ClientSession() as session:
            assert (await cache.key("steady-rsa", session)).alg == "RS256"
            keys.broken, keys.stall_s = broken, stall_s
            with pytest.raises(KeysUnavailable):
                await cache.key("rot-2", session)  # a new kid needs a fetch, which fails: 503, not 401
            assert error in str(cache.view()["last_error"]) and cache.view()["kids"] == ["steady-rsa"]
            assert (await cache.key("steady-rsa", session)).alg == "RS256"  # stale, kept, refetched in the background
            await cache.close()
    finally:
        keys.stall_s = 0.0
        keys.stop()


async def test_a_jwks_down_at_start_is_a_503_for_jwts_until_it_is_up(make_client: MakeClient,
                                                                      sample_snapshots: Path) -> None:
    """Nothing listens at the JWKS URL at start. Nearby serves; a JWT claim is 503 jwks_unavailable with
    Retry-After, not 401: the token may be good, the service cannot tell, and a 401 would send the player to log
    in again for nothing. HS256 tokens, which need no key set, pass. Once the JWKS is up the JWT verifies."""
    keys = KeySet()
    keys.publish(STEADY_ED)
    client = await make_client(sample_snapshots, jwt_jwks_url=keys.url, jwt_secret=HS_SECRET, jwt_issuer=ISSUER,
                               jwt_audience=AUDIENCE, jwt_player_claim=CLAIM)
    try:
        resp = await client.get(f"/v1/nearby?{SPOT}")
        assert resp.status == 200
        poi = (await resp.json())["pois"][0]
        token = STEADY_ED.mint("early-bird")
        claim = {"claim_id": "down-1", **{k: poi[k] for k in ("task_id", "poi_id", "lat", "lng")}}
        resp = await client.post("/v1/claims", json=claim, headers={"Authorization": f"Bearer {token}"})
        text = await resp.text()
        assert_error_shape(503, resp.headers, orjson.loads(text), "jwks_unavailable")
        assert resp.headers["Retry-After"] == "1" and token.split(".")[2] not in text and JWKS_PASSWORD not in text
        hs = jwt.encode(_claims(uid="hs-player"), HS_SECRET, algorithm="HS256")
        assert (await (await client.get("/v1/me", headers={"Authorization": f"Bearer {hs}"})).json())["user_id"] == "hs-player"
        health = await (await client.get("/healthz")).text()
        view = orjson.loads(health)["player_jwt"]["jwks"]
        assert view["last_fetch_ok"] is False and view["kids"] == [] and view["fetched_s_ago"] is None
        assert "ClientConnectorError" in view["last_error"] and view["url"].startswith(f"http://{JWKS_USER}:***@")
        assert JWKS_PASSWORD not in health and HS_SECRET not in health
        keys.start()
        resp = await client.post("/v1/claims", json=claim, headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200 and (await resp.json())["outcome"]
        view = (await (await client.get("/healthz")).json())["player_jwt"]["jwks"]
        assert view["last_fetch_ok"] is True and view["kids"] == ["steady-ed"] and view["fetched_s_ago"] < 5
    finally:
        keys.stop()


def test_jwt_settings_are_checked_and_the_secrets_stay_out_of_repr() -> None:
    with pytest.raises(SettingsError) as refused:
        ServiceSettings(jwt_jwks_url="ftp://keys.example/jwks", jwt_leeway_s=-1, jwks_min_refresh_s=0)
    assert [p.partition(":")[0] for p in refused.value.problems] == [
        "jwt_issuer and jwt_audience", "jwt_jwks_url", "jwt_leeway_s", "jwks_min_refresh_s"]
    with pytest.raises(SettingsError, match="jwt_secret"):
        ServiceSettings(host="0.0.0.0", jwt_secret="short", jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    with pytest.raises(SettingsError, match="percent-encoded"):
        ServiceSettings(jwt_jwks_url="https://u:p/ss@keys.example/jwks", jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    settings = ServiceSettings(jwt_secret=HS_SECRET, jwt_jwks_url=f"https://u:{JWKS_PASSWORD}@keys.example/jwks",
                               jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    assert HS_SECRET not in repr(settings) and JWKS_PASSWORD not in repr(settings)
