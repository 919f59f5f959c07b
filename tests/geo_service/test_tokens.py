"""Player tokens: round trip, forgery, expiry, malformed input."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from geo_service.tokens import TokenError, mint, verify

ALICE = mint("alice", "s3cret", 2000)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _with_payload(token: str, payload: str) -> str:
    """Return `token` with its payload replaced and its signature kept: well formed, signed for something else."""
    return f"{_b64(payload.encode())}.{token.split('.')[1]}"


def test_a_minted_token_verifies_to_its_user() -> None:
    assert verify(mint("alice-1", "s3cret", 2000), "s3cret", 1999.0) == "alice-1"


@pytest.mark.parametrize("payload", ["v1:mallory:2000", "v1:alice:9999999999"], ids=["other-user", "later-expiry"])
def test_a_payload_changed_under_its_signature_is_refused_by_the_signature_check(payload: str) -> None:
    # The forged payload is well formed and unexpired: only the signature check stands between it and a user id.
    assert verify(ALICE, "s3cret", 1000.0) == "alice"  # the token it was cut from is good
    with pytest.raises(TokenError, match=r"^bad token signature$"):
        verify(_with_payload(ALICE, payload), "s3cret", 1000.0)


@pytest.mark.parametrize(
    ("token", "secret", "now", "message"),
    [
        (ALICE, "other", 1000.0, "bad token signature"),
        (ALICE, "s3cret", 2000.0, "token expired"),
        ("not-a-token", "s3cret", 1000.0, "malformed token"),
        ("a.b.c", "s3cret", 1000.0, "malformed token"),
        ("", "s3cret", 1000.0, "malformed token"),
    ],
    ids=["wrong-secret", "expired", "garbage", "three-parts", "empty"],
)
def test_bad_tokens_are_refused_with_their_reason(token: str, secret: str, now: float, message: str) -> None:
    # The whole message: every refusal names "token", so a part of one would match any of them.
    with pytest.raises(TokenError, match=f"^{re.escape(message)}$"):
        verify(token, secret, now)


def test_minting_refuses_odd_user_ids_and_no_secret() -> None:
    with pytest.raises(ValueError):
        mint("alice:admin", "s3cret", 2000)
    with pytest.raises(ValueError):
        mint("alice", "", 2000)


def _signed(payload: str, secret: str = "s3cret") -> str:
    sig = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{_b64(payload.encode())}.{_b64(sig)}"


def _other_trailing_bits(token: str) -> str:
    """The same bytes spelled with other unused low bits in the payload's last character (loose decoders take it)."""
    payload, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(payload[-1])
    return f"{payload[:-1]}{alphabet[last ^ 1]}.{sig}"


@pytest.mark.parametrize("spelling", [
    "!!!!" + ALICE, ALICE[:5] + "\t" + ALICE[5:], ALICE + "=", " " + ALICE, _other_trailing_bits(ALICE),
    _signed("v1:alice:+2000"), _signed("v1:alice: 2000"), _signed("v1:alice:\u0662000"),
], ids=["junk-prefix", "tab", "padding", "space", "trailing-bits", "plus-sign", "space-sign", "arabic-digit"])
def test_a_token_has_one_spelling_and_every_other_is_refused(spelling: str) -> None:
    # A limit keyed on the token (nginx's claims_per_player) counts one player once only if no other spelling passes.
    assert _signed("v1:alice:2000") == ALICE  # the helper signs as mint() does
    with pytest.raises(TokenError, match=r"^malformed token$"):
        verify(spelling, "s3cret", 1000.0)
