"""The dashboard's deliveries panel in a real browser: each channel's figures, a partner's words shown as text,
and an operator retrying a dead letter."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.collector.test_dashboard import open_page
from tests.conftest import SAMPLE
from tests.support.deliveries import channel, land_wins, states, write_channels
from tests.support.ledgers import execute
from tests.support.processes import Process, collector

ADMIN = "dash-admin"
MARKUP = 'HTTP 400 <img src=x onerror="document.body.dataset.owned=1">'


@pytest.fixture
def panel_site(tmp_path: Path) -> Iterator[tuple[Process, str]]:
    snaps, ledger = tmp_path / "snaps", f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    subprocess.run([sys.executable, "-m", "loaders", "build", "--source", str(SAMPLE), "--out", str(snaps), "--quiet"],
                   check=True, timeout=120)
    land_wins(ledger, [f"w-{i}" for i in range(12)], "cash")
    execute(ledger, f"UPDATE deliveries SET state = 'failed', due_at = NULL, last_error = '{MARKUP}' WHERE claim_id = 'w-5'")
    channels = write_channels(tmp_path / "channels.json", channel("wallet", "http://127.0.0.1:9", ["cash"], rate_per_s=250),
                              channel("coupons", "http://127.0.0.1:9", ["coupon"], kind="slow"))
    col = collector(snaps, ledger, "--admin-token", ADMIN, "--channels", str(channels)).start()
    try:
        col.wait_ready()
        yield col, ledger
    finally:
        col.stop()


def test_the_panel_shows_channels_and_retries_a_dead_letter_shown_as_text(page: Page,
                                                                          panel_site: tuple[Process, str]) -> None:
    col, ledger = panel_site
    errors: list[str] = []
    page.on("dialog", lambda dialog: dialog.accept(ADMIN))
    open_page(page, col.url, errors)
    page.wait_for_selector("#deliveries tr[data-channel='wallet']")
    assert page.inner_text("#deliveries tr[data-channel='wallet'] .backlog") == "11"
    assert "/ 250" in page.inner_text("#deliveries tr[data-channel='wallet'] .rate")
    letter = page.locator("li.dead-letter[data-claim-id='w-5']")
    assert letter.locator(".error-text").inner_text() == MARKUP  # the partner's words, as text
    assert page.locator("#deliveries img").count() == 0 and page.evaluate("document.body.dataset.owned") is None
    letter.locator("button.retry").click()
    page.wait_for_selector("li.dead-letter[data-claim-id='w-5']", state="detached", timeout=10_000)
    assert states(ledger)["w-5"] == "pending"
    assert errors == []
