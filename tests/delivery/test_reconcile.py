"""Delivery reconciliation: won claims vs delivery rows vs a partner's statement; --repair re-drives what is missing,
and a delivery with no win behind it is never sent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from delivery.app import dispatching, make_dispatcher
from delivery.channels import load_channels
from delivery.cli import main
from delivery.settings import DeliverySettings
from tests.conftest import fresh_ledger
from tests.support.deliveries import channel, land_wins, secret_env, states, write_channels
from tests.support.ledgers import execute
from tests.support.partner_stub import Stub, serving


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in secret_env().items():
        monkeypatch.setenv(name, value)


def deliver_all(stub: Stub, dsn: str, tmp_path: Path, expected: int) -> Path:
    """Run a dispatcher against the stub until `expected` deliveries are delivered; return the channels file."""
    async def run() -> Path:
        async with serving(stub) as url:
            channels = write_channels(tmp_path / "channels.json", channel("wallet", url, ["cash"]))
            settings = DeliverySettings(ledger=dsn, channels=str(channels))
            async with dispatching(make_dispatcher(settings, load_channels(channels))):
                for _ in range(200):  # bounded: 20 s
                    if list(states(dsn).values()).count("delivered") >= expected:
                        break
                    await asyncio.sleep(0.1)
            return channels

    return asyncio.run(run())


def reconcile(dsn: str, channels: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, object]]:
    code = main(["reconcile", "--ledger", dsn, "--channels", str(channels), "--channel", "wallet", *extra])
    return code, orjson.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
def test_a_lost_row_and_a_short_statement_are_found_repaired_and_then_clean(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = fresh_ledger(kind, request, tmp_path)
    ids = [f"r-{i:03d}" for i in range(300)]
    land_wins(dsn, ids, "cash")
    stub = Stub(["wallet"])
    channels = deliver_all(stub, dsn, tmp_path, 300)
    assert stub.applied() == set(ids)
    execute(dsn, "DELETE FROM deliveries WHERE claim_id IN ('r-010', 'r-020')")  # rows lost
    statement = tmp_path / "statement.txt"
    statement.write_text("".join(f"{d}\n" for d in sorted(stub.applied() - {"r-030", "r-031", "r-032"})))

    code, report = reconcile(dsn, channels, capsys, "--statement", str(statement))
    assert code == 1
    assert report["never_made"] == ["r-010", "r-020"]
    assert report["unknown_to_partner"] == ["r-030", "r-031", "r-032"]
    assert report["no_win"] == [] and report["partner_no_win"] == []
    code, report = reconcile(dsn, channels, capsys, "--statement", str(statement), "--repair")
    assert code == 1 and report["repaired"] is True
    assert {states(dsn)[c] for c in ("r-010", "r-020", "r-030")} == {"pending"}  # re-driven, same delivery ids

    deliver_all(stub, dsn, tmp_path, 300)
    assert stub.duplicates() == []  # the partner had them all: it answered already_delivered
    statement.write_text("".join(f"{d}\n" for d in sorted(stub.applied())))  # the partner's next statement
    code, report = reconcile(dsn, channels, capsys, "--statement", str(statement))
    assert (code, report["differences"]) == (0, 0)


def test_a_delivery_with_no_win_is_failed_never_sent_and_reported(
        request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = fresh_ledger("sqlite", request, tmp_path)
    land_wins(dsn, ["real-1", "forged-1", "forged-2"], "cash")
    execute(dsn, "DELETE FROM claims WHERE claim_id = 'forged-1'")  # a row someone wrote with no win behind it
    execute(dsn, "UPDATE claims SET user_id = 'mallory' WHERE claim_id = 'forged-2'")  # not this player's win
    stub = Stub(["wallet"])
    channels = deliver_all(stub, dsn, tmp_path, 1)
    assert stub.applied() == {"real-1"}
    assert {c for _, _, c in stub.log.received} == {"real-1"}  # the others were never sent
    assert states(dsn) == {"real-1": "delivered", "forged-1": "failed", "forged-2": "failed"}
    statement = tmp_path / "statement.txt"
    statement.write_text("real-1\nghost-9\n")
    code, report = reconcile(dsn, channels, capsys, "--statement", str(statement))
    assert code == 1 and report["no_win"] == ["forged-1", "forged-2"] and report["partner_no_win"] == ["ghost-9"]


def test_a_statement_reconciles_its_own_channel_only_and_an_empty_one_is_refused(
        request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = fresh_ledger("sqlite", request, tmp_path)
    land_wins(dsn, ["cash-1", "cash-2"], "cash")
    land_wins(dsn, ["coupon-1"], "coupon")
    execute(dsn, "UPDATE deliveries SET state = 'delivered', due_at = NULL")
    channels = write_channels(tmp_path / "channels.json", channel("wallet", "http://127.0.0.1:9", ["cash"]),
                              channel("coupons", "http://127.0.0.1:9", ["coupon"], kind="slow"))
    statement = tmp_path / "wallet.txt"
    statement.write_text("cash-1\n")
    code, report = reconcile(dsn, channels, capsys, "--statement", str(statement), "--repair")
    assert code == 1 and report["unknown_to_partner"] == ["cash-2"]
    assert states(dsn) == {"cash-1": "delivered", "cash-2": "pending", "coupon-1": "delivered"}  # coupons untouched
    statement.write_text("\n")
    assert main(["reconcile", "--ledger", dsn, "--channels", str(channels), "--channel", "wallet",
                 "--statement", str(statement), "--repair"]) == 2
    assert "names no delivery id" in capsys.readouterr().err
    statement.write_text("cash-1\n")  # a good statement: only the missing --channel can refuse it
    assert main(["reconcile", "--ledger", dsn, "--channels", str(channels), "--statement", str(statement)]) == 2
    assert "needs --channel" in capsys.readouterr().err
    assert states(dsn)["cash-1"] == "delivered"
