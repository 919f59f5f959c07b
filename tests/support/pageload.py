"""What loading the player page costs a phone, read from Chromium's DevTools protocol: bytes on the wire (headers and
bodies as sent, compressed; a cache hit is 0) of the page's own files and of its map data (/v1/), and the times to the
page being ready and to its first answer drawn."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import BrowserContext, CDPSession, Page

# Lighthouse's mobile throttling ("slow 4G"): 150 ms round trips, 1.6 Mbit/s down, 750 kbit/s up.
SLOW_NETWORK = {"offline": False, "latency": 150, "downloadThroughput": 1_600_000 / 8, "uploadThroughput": 750_000 / 8}


@dataclass
class Load:
    """One page load: bytes received per request, and the times."""

    urls: dict[str, str] = field(default_factory=dict)  # request id -> URL
    received: dict[str, int] = field(default_factory=dict)  # request id -> bytes on the wire
    cached: set[str] = field(default_factory=set)  # request ids served from the browser's cache
    ready_s: float = 0.0  # navigation to body[data-ready=true]
    answer_s: float = 0.0  # navigation to the first answer drawn
    session: CDPSession | None = None

    def stop(self) -> None:
        """Stop counting."""
        if self.session is not None:
            self.session.detach()
            self.session = None

    def bytes_of(self, data: bool) -> int:
        """Bytes of the map data (/v1/ requests) or of everything else (the page and its files)."""
        return sum(n for rid, n in self.received.items() if ("/v1/" in self.urls.get(rid, "")) == data)

    @property
    def requests(self) -> int:
        return sum(1 for rid in self.received if rid not in self.cached)

    def summary(self, name: str) -> str:
        return (f"{name}: page and files {self.bytes_of(False) / 1024:.1f} KiB, map data {self.bytes_of(True) / 1024:.1f} "
                f"KiB, {self.requests} requests on the network ({len(self.cached)} from cache); ready in "
                f"{self.ready_s * 1000:.0f} ms, first answer drawn in {self.answer_s * 1000:.0f} ms")


def watch(context: BrowserContext, page: Page, network: dict[str, Any] | None = None) -> Load:
    """Start counting what `page` receives (on an emulated network, if given); the Load fills as it goes."""
    cdp = context.new_cdp_session(page)
    load = Load(session=cdp)
    cdp.send("Network.enable")
    if network is not None:
        cdp.send("Network.emulateNetworkConditions", network)
    cdp.on("Network.requestWillBeSent", lambda p: load.urls.__setitem__(p["requestId"], p["request"]["url"]))
    cdp.on("Network.requestServedFromCache", lambda p: load.cached.add(p["requestId"]))
    cdp.on("Network.loadingFinished", lambda p: load.received.__setitem__(p["requestId"], int(p["encodedDataLength"])))
    return load


def measure_load(context: BrowserContext, page: Page, url: str, network: dict[str, Any] | None = None) -> Load:
    """Load `url` in `page` (a context with geolocation and a token in session storage) and measure it."""
    load = watch(context, page, network)
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    load.ready_s = time.perf_counter() - started
    page.wait_for_function("() => window.geodrop && window.geodrop.answer !== null", timeout=60_000)
    load.answer_s = time.perf_counter() - started
    page.wait_for_load_state("networkidle")  # the grid, and the files' way into the cache
    load.stop()
    return load
