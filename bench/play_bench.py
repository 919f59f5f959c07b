"""Benchmark the player page's first load in Debian's Chromium, cold and warm, on loopback and on a slow network.

    .venv/bin/python bench/play_bench.py [--runs 3] [--slow]

One geo-service on the sample snapshot serves /play. Each run opens a fresh browser context (a cold cache) on a
phone-sized screen with the browser's geolocation in Nanshan and a player token already in session storage (as
after the token form), loads the page cold, then again in the same context (warm: the hashed files come from the
cache; only the page is revalidated). Printed: bytes on the wire (headers and bodies as sent, compressed) of the
page and its files and of the map data (/v1/me, /v1/grid, the first cell answer), the time to the page being ready
(its scripts run, the client started) and to its first answer drawn; medians over the runs. With --slow, also on
Lighthouse's mobile throttling (150 ms round trips, 1.6 Mbit/s down, 750 kbit/s up) set by the DevTools protocol.
Target: the page and its files under 300 KB before any map data.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import free_port, wait_ready  # noqa: E402
from playwright.sync_api import Geolocation  # noqa: E402

from geo_service.tokens import mint  # noqa: E402
from tests.support.pageload import SLOW_NETWORK, Load, measure_load  # noqa: E402

PY = sys.executable
SECRET = "play-bench-secret"
HERE: Geolocation = {"latitude": 22.5329, "longitude": 113.9305, "accuracy": 5}
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run"]


def run(url: str, runs: int, network: dict[str, Any] | None) -> dict[str, list[Load]]:
    from playwright.sync_api import sync_playwright

    token = mint("bench-player", SECRET, int(time.time()) + 3600)
    loads: dict[str, list[Load]] = {"cold": [], "warm": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                          geolocation=HERE, permissions=["geolocation"])
            context.add_init_script(f"sessionStorage.setItem('geodrop.token', {token!r});")
            page = context.new_page()
            loads["cold"].append(measure_load(context, page, f"{url}/play", network))
            loads["warm"].append(measure_load(context, page, f"{url}/play", network))
            context.close()
        browser.close()
    return loads


def report(name: str, loads: list[Load]) -> None:
    def median(values: list[float]) -> float:
        return statistics.median(values)

    print(f"  {name}: page and files {median([x.bytes_of(False) for x in loads]) / 1024:.1f} KiB, map data "
          f"{median([x.bytes_of(True) for x in loads]) / 1024:.1f} KiB; ready {median([x.ready_s for x in loads]) * 1000:.0f}"
          f" ms, first answer drawn {median([x.answer_s for x in loads]) * 1000:.0f} ms "
          f"(medians of {len(loads)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="Cold and warm page loads to measure.")
    ap.add_argument("--slow", action="store_true", help="Also measure on an emulated slow mobile network.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        snaps = Path(tmp) / "snaps"
        subprocess.run([PY, "-m", "loaders", "build", "--source", "data/sample", "--out", str(snaps), "--quiet"], check=True)
        port = free_port()
        service = subprocess.Popen([PY, "-m", "geo_service", "serve", "--snapshots", str(snaps), "--data-dir",
                                    f"{tmp}/var", "--port", str(port), "--workers", "1", "--log-level", "error"],
                                   env={"GEODROP_SERVICE_TOKEN_SECRET": SECRET, "PATH": "/usr/bin:/bin"})
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz")
            for name, network in [("loopback", None), ("slow mobile network", SLOW_NETWORK)][: 2 if args.slow else 1]:
                loads = run(f"http://127.0.0.1:{port}", args.runs, network)
                print(name)
                report("cold", loads["cold"])
                report("warm", loads["warm"])
        finally:
            service.terminate()
            service.wait(timeout=30)


if __name__ == "__main__":
    main()
