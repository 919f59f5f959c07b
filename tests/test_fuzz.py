"""Schemathesis against the services and the placement console on the sample, every check and phase on (schemathesis.toml):
the published contracts say what the services do, and no generated request gets a 5xx. Its examples also hold
ids of Unicode digits and past int64 (tests/support/fuzz_hooks.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from geo_service.tokens import mint
from placement.auth import add_operator
from tests.conftest import REPO, SAMPLE
from tests.support.processes import Process, collector, running_pair, service

SECRET, ADMIN = "fuzz-secret", "fuzz-admin-token-0123"
HOOKS = REPO / "tests" / "support" / "fuzz_hooks.py"  # ids of Unicode digits and past int64 in every operation's examples


@dataclass
class Site:
    service: Process
    collector: Process
    console: Process


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("fuzz")
    snaps, ledger = tmp / "snaps", f"sqlite:///{tmp / 'ledger.sqlite3'}"
    subprocess.run([sys.executable, "-m", "loaders", "build", "--source", str(SAMPLE), "--out", str(snaps), "--quiet"],
                   check=True, timeout=120)
    svc = service(snaps, tmp / "var", "--ledger", ledger, "--token-secret", SECRET, "--admin-token", ADMIN, workers=1)
    col = collector(snaps, ledger, "--admin-token", ADMIN, "--service", svc.url, "--stream-max-s", "0.3")
    # The console publishes into snapshots of its own: its fuzzing must not change what the others answer.
    shutil.copytree(snaps, tmp / "console-snaps")
    add_operator(tmp / "operators.json", "fuzzer", "admin", ADMIN)
    console = Process("placement", ["serve", "--draft", f"sqlite:///{tmp / 'draft.sqlite3'}", "--seed", str(SAMPLE),
                                    "--snapshots", str(tmp / "console-snaps"), "--operators", str(tmp / "operators.json"),
                                    "--work-dir", str(tmp / "console-work")])
    with running_pair(svc, col):
        console.start()
        try:
            console.wait_ready()
            yield Site(svc, col, console)
        finally:
            console.stop()


def fuzz(url: str, examples: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Run schemathesis with `examples` an operation, but the fewer schemathesis.toml gives some operations: a CLI
    --max-examples would override those too, so the count goes into a copy of the config instead."""
    text = (REPO / "schemathesis.toml").read_text(encoding="utf-8")
    assert "\ngeneration.max-examples = 100\n" in text
    config = tmp / "schemathesis.toml"
    config.write_text(text.replace("\ngeneration.max-examples = 100\n", f"\ngeneration.max-examples = {examples}\n", 1),
                      encoding="utf-8")
    env = {**os.environ, "GEODROP_FUZZ_PLAYER_TOKEN": mint("fuzzer", SECRET, int(time.time()) + 3600),
           "GEODROP_FUZZ_ADMIN_TOKEN": ADMIN, "SCHEMATHESIS_HOOKS": str(HOOKS)}
    command = [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run", f"{url}/openapi.json",
               "--seed", "1", "--no-color"]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env, cwd=REPO)


@pytest.mark.parametrize("which", ["service", "collector", "console"])
def test_schemathesis_finds_nothing(site: Site, which: str, tmp_path: Path) -> None:
    done = fuzz(getattr(site, which).url, 50, tmp_path)  # `make slow` runs 2,000 an operation
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "failed" not in done.stdout.split("SUMMARY")[-1]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["service", "collector", "console"])
def test_schemathesis_finds_nothing_in_2000_examples_an_operation(site: Site, which: str, tmp_path: Path) -> None:
    done = fuzz(getattr(site, which).url, 2000, tmp_path)
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
