"""Player tokens: round trip, forgery, expiry, malformed input."""

from __future__ import annotations

import pytest

from geo_service.tokens import TokenError, mint, verify


def test_a_minted_token_verifies_to_its_user() -> None:
    assert verify(mint("alice-1", "s3cret", 2000), "s3cret", 1999.0) == "alice-1"


@pytest.mark.parametrize(
    ("token", "secret", "now", "message"),
    [
        (mint("alice", "s3cret", 2000), "other", 1000.0, "signature"),
        (mint("alice", "s3cret", 2000), "s3cret", 2000.0, "expired"),
        (mint("alice", "s3cret", 2000).replace("dj", "dk", 1), "s3cret", 1000.0, "token"),
        ("not-a-token", "s3cret", 1000.0, "malformed"),
        ("a.b.c", "s3cret", 1000.0, "malformed"),
        ("", "s3cret", 1000.0, "malformed"),
    ],
    ids=["wrong-secret", "expired", "tampered", "garbage", "three-parts", "empty"],
)
def test_bad_tokens_are_refused(token: str, secret: str, now: float, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        verify(token, secret, now)


def test_minting_refuses_odd_user_ids_and_no_secret() -> None:
    with pytest.raises(ValueError):
        mint("alice:admin", "s3cret", 2000)
    with pytest.raises(ValueError):
        mint("alice", "", 2000)
