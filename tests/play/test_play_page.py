"""The player page in a phone-sized Chromium against a real geo-service on the sample: a player walks a route with
the browser's geolocation emulated, sees the envelopes appear, catches one, sees it among their prizes; at the
event's limit (player_win_cap 2) the page stops offering catches and the client sends no claim; ten seconds
offline, and the page recovers by itself. The first load's bytes and time are printed."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, Route

from geo_service.snapshot.folder import open_current
from geo_service.snapshot.format import Snapshot
from geo_service.snapshot.grid import M_PER_DEG, distance_m
from geo_service.stagger import group_of
from tests.play.conftest import Site, requests_total, running_service, token
from tests.support.ledgers import sql_rows
from tests.support.pageload import watch

PLAYER = "walker"
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
FIRST_LOAD_MAX_BYTES = 300 * 1024  # the page and its files, before any map data


@pytest.fixture(scope="module")
def site(play_snapshots: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_service(play_snapshots, tmp_path_factory.mktemp("page"), "--player-win-cap", "2",
                         "--next-poll-ms", "1000") as site:
        yield site


Point = tuple[float, float]


def walking_route(snapshot: Snapshot) -> tuple[Point, dict[str, int | float], dict[str, int | float]]:
    """Return a start with nothing in its window (every POI over 380 m away), an envelope A of an active task 450 m
    east of it, and the nearest other envelope B of an active task."""
    lats, lngs = (np.asarray(a) for a in snapshot.degrees(np.arange(len(snapshot.poi_ids))))
    now = time.time()
    active = np.array([t["enabled"] and t["starts_at"] <= now < t["ends_at"] for t in snapshot.tasks])[snapshot.task_index]
    for i in np.nonzero(active)[0].tolist():
        start = (float(lats[i]), float(lngs[i]) + 450 / (M_PER_DEG * math.cos(math.radians(lats[i]))))
        ground = np.hypot((lats - start[0]) * M_PER_DEG, (lngs - start[1]) * M_PER_DEG * math.cos(math.radians(start[0])))
        if ground.min() > 380:
            near = np.hypot((lats - lats[i]) * M_PER_DEG, (lngs - lngs[i]) * M_PER_DEG * math.cos(math.radians(lats[i])))
            near[~active | (snapshot.task_index == snapshot.task_index[i])] = np.inf
            j = int(near.argmin())
            return start, _poi(snapshot, i), _poi(snapshot, j)
    raise LookupError("no quiet start on the sample")


def _poi(snapshot: Snapshot, row: int) -> dict[str, int | float]:
    lat, lng = snapshot.degrees(row)
    return {"poi_id": int(snapshot.poi_ids[row]), "task_id": snapshot.tasks[int(snapshot.task_index[row])]["task_id"],
            "lat": float(lat), "lng": float(lng)}


def walk(context: BrowserContext, page: Page, start: Point, end: Point, step_m: float = 60) -> None:
    """Move the emulated geolocation from start to end in steps, a moment apart."""
    steps = max(1, math.ceil(distance_m(*start, *end) / step_m))
    for k in range(1, steps + 1):
        lat, lng = (start[0] + (end[0] - start[0]) * k / steps, start[1] + (end[1] - start[1]) * k / steps)
        context.set_geolocation({"latitude": lat, "longitude": lng, "accuracy": 5})
        page.wait_for_timeout(150)


def envelopes(page: Page) -> int:
    return page.locator("path.envelope").count()


@pytest.mark.browser_context_args(**PHONE)
def test_a_player_walks_catches_sees_the_prize_stops_at_the_limit_and_rides_out_an_outage(
        page: Page, context: BrowserContext, site: Site) -> None:
    errors: list[str] = []
    page.on("console", lambda m: _console(m, errors))
    page.on("pageerror", lambda e: errors.append(str(e)))
    start, a, b = walking_route(open_current(site.snapshots))
    context.grant_permissions(["geolocation"], origin=site.service.url)
    context.set_geolocation({"latitude": start[0], "longitude": start[1], "accuracy": 5})

    # First visit: the page asks for the token (a password field); nothing of it goes into a URL or lasting storage.
    load = watch(context, page)
    started = time.perf_counter()
    page.goto(f"{site.service.url}/play")
    page.wait_for_selector("body[data-ready=login]")
    assert page.get_attribute("#token", "type") == "password"
    secret = token(PLAYER)
    page.fill("#token", secret)
    page.click("#login button[type=submit]")
    page.wait_for_function("() => window.geodrop && window.geodrop.answer !== null && window.geodrop.grid !== null")
    first_s = time.perf_counter() - started
    page.wait_for_load_state("networkidle")
    load.stop()
    print(f"\nfirst load (cold): page and files {load.bytes_of(False) / 1024:.1f} KiB ({load.requests} requests in all), "
          f"map data {load.bytes_of(True) / 1024:.1f} KiB; token form to first answer and grid {first_s * 1000:.0f} ms")
    assert 0 < load.bytes_of(False) < FIRST_LOAD_MAX_BYTES
    assert "token" not in page.url and page.evaluate("() => localStorage.length") == 0
    assert page.evaluate("() => sessionStorage.getItem('geodrop.token')") == secret
    assert page.locator("path.cell").count() >= 25 and envelopes(page) == 0  # the window drawn, nothing in it

    # Warm: the page again from the cache (only the page itself is asked again, and answers 304).
    load = watch(context, page)
    page.reload()
    page.wait_for_function("() => window.geodrop && window.geodrop.answer !== null")
    page.wait_for_load_state("networkidle")
    load.stop()
    print(f"reload (warm): page and files {load.bytes_of(False) / 1024:.1f} KiB on the network, "
          f"{len(load.cached)} served from cache")
    assert load.bytes_of(False) < 4 * 1024

    # Walk to envelope A: the envelopes appear on the way, the catch button wakes only within the catch radius.
    at_a = (float(a["lat"]), float(a["lng"]))
    short = (at_a[0], at_a[1] + 150 / (M_PER_DEG * math.cos(math.radians(at_a[0]))))  # 150 m east of A
    walk(context, page, start, short)
    page.wait_for_selector("path.envelope", state="attached")
    assert page.get_attribute("#catch", "data-state") == "far" and page.is_disabled("#catch")
    walk(context, page, short, at_a)
    page.wait_for_selector("#catch[data-state=ready]", timeout=10_000)
    page.click("#catch")
    page.wait_for_selector("#message.won", timeout=10_000)
    page.click("#show-prizes")
    page.wait_for_selector("#prize-list li")
    won = page.locator("#prize-list li")
    assert won.count() == 1
    assert won.locator(".state").inner_text() in {"pending", "sending", "delivered"}
    page.click("#close-prizes")

    # Walk to B and catch again: the second win is the event's last for this player.
    walk(context, page, at_a, (float(b["lat"]), float(b["lng"])), step_m=30)
    page.wait_for_selector("#catch[data-state=ready]", timeout=10_000)
    page.click("#catch")
    page.wait_for_selector("#catch[data-state=limit]", timeout=10_000)
    assert envelopes(page) == 0 and "limit" in page.inner_text("#message")
    assert requests_total(site.service.url, "/v1/claims") == 2
    walk(context, page, (float(b["lat"]), float(b["lng"])), at_a, step_m=30)
    assert page.get_attribute("#catch", "data-state") == "limit" and page.is_disabled("#catch")
    refused = page.evaluate("(poi) => window.geodrop.claim(poi)", a)
    assert refused["outcome"] == "not_sent" and refused["reason"] == "limit"
    page.wait_for_timeout(500)
    assert requests_total(site.service.url, "/v1/claims") == 2  # no claim left the phone
    rows = sql_rows(site.ledger, f"SELECT outcome FROM claims WHERE user_id = '{PLAYER}'")
    assert sorted(r[0] for r in rows) == ["won", "won"]

    # Ten seconds without a network, then back: the page says so and recovers by itself.
    polls_before = page.evaluate("() => window.geodrop.polls.ok + window.geodrop.polls.notModified")
    context.set_offline(True)
    page.wait_for_function("() => document.getElementById('net').textContent.startsWith('offline')", timeout=10_000)
    page.wait_for_timeout(10_000)
    context.set_offline(False)
    back = time.perf_counter()
    page.wait_for_function("(before) => document.getElementById('net').textContent === 'online' && "
                           "window.geodrop.polls.ok + window.geodrop.polls.notModified > before", arg=polls_before,
                           timeout=20_000)
    print(f"back online: answering again {(time.perf_counter() - back) * 1000:.0f} ms after the network returned")
    assert errors == []  # no script error, no refusal by the Content-Security-Policy


def _console(message: ConsoleMessage, errors: list[str]) -> None:
    # A fetch cut by the outage is logged by Chromium as a network error: that is the drill, not a fault of the page.
    if message.type == "error" and "ERR_INTERNET_DISCONNECTED" not in message.text:
        errors.append(message.text)


@pytest.mark.browser_context_args(viewport={"width": 1280, "height": 800})
def test_without_geolocation_a_click_on_the_map_walks_there(page: Page, context: BrowserContext, site: Site) -> None:
    # A token the service refuses brings the form back, saying so; no permission for geolocation: the page says so
    # and lets the player walk by clicking, as on a desktop.
    page.goto(f"{site.service.url}/play")
    page.fill("#token", token("clicker")[:-2] + "AA")  # forged
    page.click("#login button[type=submit]")
    page.wait_for_selector("body[data-ready=login]")
    assert "refused" in page.inner_text("#login-error") and page.evaluate("() => sessionStorage.length") == 0
    page.fill("#token", token("clicker"))
    page.click("#login button[type=submit]")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_function("() => document.getElementById('hint').textContent.includes('tap the map')")
    box = page.locator("#map").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # the map opens on Shenzhen
    page.wait_for_function("() => window.geodrop.position !== null && window.geodrop.answer !== null")
    assert page.locator("path.me").count() == 1 and page.locator("path.cell").count() >= 25


@pytest.mark.browser_context_args(**PHONE)
def test_an_envelope_opens_for_the_player_at_their_groups_time(page: Page, context: BrowserContext, site: Site) -> None:
    player, groups, step_s = "latecomer", 3, 600
    opening = time.time() + 3  # this player's group opens in 3 s, the others 10 minutes apart
    starts_at = datetime.fromtimestamp(opening - group_of(player, groups) * step_s, UTC)
    stagger = {"groups": groups, "step_s": step_s, "starts_at": starts_at.isoformat().replace("+00:00", "Z")}

    def staggered(route: Route) -> None:  # the service's answers, every task staggered (the contract's field)
        response = route.fetch()
        answer = response.json() if response.status == 200 else None
        for task in (answer or {}).get("tasks", []):
            task["stagger"] = stagger
        route.fulfill(response=response, json=answer) if answer else route.fulfill(response=response)

    page.route("**/v1/cells/*", staggered)
    page.route("**/v1/nearby*", staggered)
    _, a, _ = walking_route(open_current(site.snapshots))
    context.grant_permissions(["geolocation"], origin=site.service.url)
    context.set_geolocation({"latitude": float(a["lat"]), "longitude": float(a["lng"]), "accuracy": 5})
    context.add_init_script(f"sessionStorage.setItem('geodrop.token', {token(player)!r});")
    page.goto(f"{site.service.url}/play")
    page.wait_for_selector("#catch[data-state=not_open]", timeout=10_000)
    assert page.inner_text("#catch").startswith("Opens for you in 0:0") and page.is_disabled("#catch")
    assert page.locator("path.envelope.closed").count() == page.locator("path.envelope").count() > 0
    page.wait_for_selector("#catch[data-state=ready]", timeout=10_000)
    assert time.time() >= opening - 0.5 and page.locator("path.envelope.closed").count() == 0
