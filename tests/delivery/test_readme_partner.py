"""The README's partner endpoint runs as printed, honours the contract, and takes a storm of deliveries once each."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from delivery.app import dispatching, make_dispatcher
from delivery.channels import load_channels
from delivery.settings import DeliverySettings
from tests.conftest import REPO
from tests.support.deliveries import SECRET_ENV, channel, land_wins, states, write_channels
from tests.support.ledgers import execute, sql_rows
from tests.support.partner_stub import SECRET
from tests.support.processes import free_port


def readme_partner() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Writing a partner endpoint"):]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None, "the README's partner example is gone"
    return found.group(1)


def test_the_readme_partner_takes_deliveries_once_each_and_refuses_bad_signatures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    script = tmp_path / "partner.py"
    script.write_text(readme_partner())
    port = free_port()
    partner = subprocess.Popen([sys.executable, str(script)], env={"PARTNER_SECRET": SECRET, "PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):  # bounded: until it listens
            try:
                urllib.request.urlopen(urllib.request.Request(f"{url}/deliver/wallet", data=b"{}"), timeout=1)
            except urllib.error.HTTPError as exc:
                assert exc.code == 401  # unsigned: refused
                break
            except OSError:
                time.sleep(0.05)
        dsn = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        ids = [f"readme-{i}" for i in range(300)]
        land_wins(dsn, ids, "cash")
        channels = write_channels(tmp_path / "channels.json", channel("wallet", url, ["cash"], rate_per_s=2000))
        settings = DeliverySettings(ledger=dsn, channels=str(channels))

        async def deliver() -> None:
            async with dispatching(make_dispatcher(settings, load_channels(channels))):
                for _ in range(100):  # bounded: 10 s
                    if set(states(dsn).values()) == {"delivered"}:
                        return
                    await asyncio.sleep(0.1)

        asyncio.run(deliver())
        first = dict(sql_rows(dsn, "SELECT claim_id, partner_ref FROM deliveries"))
        assert set(states(dsn).values()) == {"delivered"} and len(set(first.values())) == 300  # one credit each
        # Sent again (a re-drive after a lost answer): it answers already_delivered, with the first reference.
        execute(dsn, "UPDATE deliveries SET state = 'pending', due_at = 0 WHERE claim_id LIKE 'readme-1%'")
        asyncio.run(deliver())
        assert dict(sql_rows(dsn, "SELECT claim_id, partner_ref FROM deliveries")) == first
    finally:
        partner.terminate()
        partner.wait(timeout=10)
