"""The partner contract and the channels file: signatures, what each answer means, and bad files named."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from delivery.channels import ChannelsError, load_channels
from delivery.cli import main
from delivery.contract import MAX_ANSWER_BYTES, SignatureError, backoff_s, classify, payload, sign, verify
from tests.support.deliveries import channel, write_channels

SECRET = "a-partner-secret-of-some-length"


def test_a_signature_holds_for_its_body_and_time_only() -> None:
    body = payload("c1", "u1", 7, "cash", 1.5, "wallet", 1)
    header = sign(SECRET, 1_000_000, body)
    verify(SECRET, header, body, 1_000_010)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, header, body.replace(b"u1", b"u2"), 1_000_010)
    with pytest.raises(SignatureError, match="does not match"):
        verify("another-secret-entirely-here", header, body, 1_000_010)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(SECRET, header, body, 1_000_000 + 301)  # a replay after five minutes
    for bad in ("", "t=abc,v1=00", "v1=00", "t=1000000"):
        with pytest.raises(SignatureError, match="malformed"):
            verify(SECRET, bad, body, 1_000_000)
    # The timestamp is inside the MAC: moving it breaks the signature.
    mac = header.split("v1=")[1]
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, f"t=1000005,v1={mac}", body, 1_000_005)
    # A stray byte, as aiohttp decodes one (a lone surrogate): a mismatch, not a UnicodeEncodeError (a 500).
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, "t=1000000,v1=\udcff", body, 1_000_000)


def test_the_payload_names_the_delivery_and_its_win() -> None:
    body = orjson.loads(payload("c1", "u1", 7, "cash", 1.5, "wallet", 3))
    assert body == {"delivery_id": "c1", "claim_id": "c1", "user_id": "u1", "task_id": 7, "prize_type": "cash",
                    "won_at": 1.5, "channel": "wallet", "attempt": 3}


@pytest.mark.parametrize(("status", "body", "kind"), [
    (200, {"status": "delivered", "reference": "r1"}, "delivered"),
    (201, {"status": "already_delivered", "reference": "r1"}, "delivered"),
    (409, {"status": "already_delivered", "reference": "r1"}, "delivered"),
    (409, {"status": "no_account"}, "parked"),
    (429, {}, "slow"),
    (503, {}, "slow"),
    (400, {"status": "bad"}, "failed"),
    (404, {}, "slow"),  # a wrong route or a refused signature is the channel's trouble: never a dead letter
    (401, {"status": "bad_signature"}, "slow"),
    (410, {}, "failed"),
    (422, {"status": "invalid"}, "failed"),
    (500, {"status": "delivered", "reference": "r1"}, "retry"),
    (502, None, "retry"),
    # Garbage never marks a delivery delivered:
    (200, {"status": "delivered"}, "retry"),
    (200, {"status": "delivered", "reference": ""}, "retry"),
    (200, {"status": "delivered", "reference": "x" * 129}, "retry"),
    (200, {"status": "delivered", "reference": 5}, "retry"),
    (200, ["delivered"], "retry"),
    (200, "not json", "retry"),
    (302, {"status": "delivered", "reference": "r1"}, "retry"),
    (409, {"status": "something_else"}, "failed"),
])
def test_each_answer_means_one_thing(status: int, body: object, kind: str) -> None:
    raw = b"<html>" if body == "not json" else (b"" if body is None else orjson.dumps(body))
    assert classify(status, raw).kind == kind


def test_an_oversize_answer_is_retried_and_retry_after_is_honoured_within_a_cap() -> None:
    assert classify(200, None).kind == "retry"  # read_answer gives None past MAX_ANSWER_BYTES
    assert MAX_ANSWER_BYTES < 1_000_000
    assert classify(429, b"", "7").retry_after_s == 7
    assert classify(503, b"", "99999").retry_after_s == 300
    assert classify(503, b"", "Wed, 21 Oct 2015 07:28:00 GMT").retry_after_s is None  # a date: the backoff then
    assert classify(429, b"", "-5").retry_after_s == 0
    assert classify(429, b"", "nan").retry_after_s is None and classify(503, b"", "inf").retry_after_s is None


def test_the_backoff_grows_to_a_cap_with_jitter() -> None:
    rng = random.Random(1)
    waits = [backoff_s(a, rng) for a in range(1, 30)]
    assert 0.25 <= waits[0] <= 0.5 and all(w <= 60 for w in waits) and max(waits) > 30
    assert len({round(w, 6) for w in waits[-10:]}) == 10  # jittered: no two retries in lockstep


@pytest.mark.parametrize(("change", "named"), [
    ({"class": "medium"}, "field class"),
    ({"rate_per_s": 0}, "field rate_per_s"),
    ({"rate_per_s": True}, "field rate_per_s"),
    ({"max_in_flight": 1.5}, "field max_in_flight"),
    ({"timeout_s": -1}, "field timeout_s"),
    ({"url": "ftp://x/y"}, "field url"),
    ({"url": "http://user:pw@127.0.0.1/x"}, "field url"),
    ({"url": "http://wallet.example/x"}, "must be https off loopback"),
    ({"url": "https://wallet.example/x?key=secret"}, "no credentials, query or fragment"),
    ({"rate_per_s": 0.0001}, "field rate_per_s"),
    ({"name": "Wallet!"}, "field name"),
    ({"prizes": []}, "field prizes"),
    ({"colour": "red"}, "field colour"),
])
def test_a_bad_channel_is_named_by_file_channel_and_field(tmp_path: Path, change: dict[str, object], named: str) -> None:
    path = write_channels(tmp_path / "channels.json", channel("wallet", "http://127.0.0.1:9", ["cash"]) | change)
    with pytest.raises(ChannelsError, match=named) as caught:
        load_channels(path)
    assert str(path) in str(caught.value) and "channel 1" in str(caught.value)


def test_one_prize_on_two_channels_and_two_channels_of_one_name_are_refused(tmp_path: Path) -> None:
    a, b = channel("a", "http://127.0.0.1:9", ["cash"]), channel("b", "http://127.0.0.1:9", ["cash"])
    with pytest.raises(ChannelsError, match="'cash' is delivered by a too"):
        load_channels(write_channels(tmp_path / "c.json", a, b))
    with pytest.raises(ChannelsError, match="two channels have this name"):
        load_channels(write_channels(tmp_path / "c.json", a, channel("a", "http://127.0.0.1:9", ["coupon"])))
    with pytest.raises(ChannelsError, match="names no channel"):
        load_channels(write_channels(tmp_path / "c.json"))
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ChannelsError, match="not JSON"):
        load_channels(tmp_path / "c.json")


def test_the_cli_refuses_bad_input_with_exit_2_and_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_channels(tmp_path / "c.json", channel("wallet", "http://127.0.0.1:9", ["cash"]))
    ledger = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    monkeypatch.delenv("GEODROP_TEST_PARTNER_SECRET", raising=False)
    assert main(["run", "--ledger", ledger, "--channels", str(path)]) == 2
    assert "set GEODROP_TEST_PARTNER_SECRET" in capsys.readouterr().err  # the secret's variable, never a value
    assert main(["channel", "nosuch", "--pause", "--ledger", ledger, "--channels", str(path)]) == 2
    assert "no channel named 'nosuch'" in capsys.readouterr().err
    assert main(["run", "--ledger", "redis://127.0.0.1:1", "--channels", str(path)]) == 2
    assert "record_db" in capsys.readouterr().err
    (tmp_path / "statement.txt").write_text("c1\nçà\n")
    assert main(["reconcile", "--statement", str(tmp_path / "statement.txt"), "--ledger", ledger,
                 "--channels", str(path)]) == 2
    assert "statement.txt: line 2" in capsys.readouterr().err


def test_a_demo_or_short_secret_is_refused_for_a_partner_off_loopback(tmp_path: Path) -> None:
    far = load_channels(write_channels(tmp_path / "c.json", channel("wallet", "https://wallet.example/x", ["cash"])))
    near = load_channels(write_channels(tmp_path / "d.json", channel("wallet", "http://127.0.0.1:8082/x", ["cash"])))
    demo = {"GEODROP_TEST_PARTNER_SECRET": "geodrop-demo-partner-secret"}
    with pytest.raises(ChannelsError, match="demo secrets are published"):
        far.channels[0].secret(demo)
    assert near.channels[0].secret(demo) == "geodrop-demo-partner-secret"  # a laptop demo on loopback
    with pytest.raises(ChannelsError, match="at least 32 bytes"):
        far.channels[0].secret({"GEODROP_TEST_PARTNER_SECRET": "only-twenty-chars!!"})
    assert far.channels[0].secret({"GEODROP_TEST_PARTNER_SECRET": "k" * 40}) == "k" * 40
