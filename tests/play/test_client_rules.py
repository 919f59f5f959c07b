"""geodrop-client.js's rules in Chromium against a real geo-service on the sample: the cells it computes are the
service's, and the player groups its stagger uses are geo_service.stagger's; a standing player revalidates (304s);
503 with Retry-After backs off with jitter; a claim whose answer a cut connection lost is retried with its id and
settled once; a task is not claimed before it opens for the player, nor anything past the event's limit.

Faults: 503s come from page.route (the browser's own request interception) on the one URL, and the cut connection
from tests/support/http_proxy.py, a real proxy the page is loaded through, which passes the claim to the service
and resets the browser's connection once the service has answered."""

from __future__ import annotations

import random
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from playwright.sync_api import Page, Route

from geo_service.snapshot.folder import open_current
from geo_service.snapshot.grid import SquareGrid
from geo_service.stagger import fnv1a_32, group_of, opens_at
from tests.geo_service.test_caching import _edge_points
from tests.play.conftest import Site, requests_total, running_service, token
from tests.support.http_proxy import HttpProxy
from tests.support.ledgers import sql_rows

NEXT_POLL_MS = 300
HERE = {"lat": 22.5329, "lng": 113.9305}  # Nanshan: envelopes all around
# What every test page runs first: the module, and a log of the client's events (without the answers' bulk).
HARNESS = """async () => {
  window.G = await import("/static/geodrop-client.js");
  window.events = [];
  window.make = (options) => {
    const client = new G.GeodropClient(options);
    for (const type of ["poll", "answer", "grid", "player", "claim", "outcome", "limit", "backoff", "offline", "online",
                        "error"]) {
      client.addEventListener(type, (e) => {
        const d = e.detail || {};
        events.push({ type, at: performance.now(), path: d.path, status: d.status, reason: d.reason,
                      delay_ms: d.delay_ms, retry_after_ms: d.retry_after_ms, failures: d.failures,
                      claim_id: d.claim_id, attempt: d.attempt, outcome: d.outcome, source: d.source });
      });
    }
    return client;
  };
}"""


@pytest.fixture(scope="module")
def site(play_snapshots: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_service(play_snapshots, tmp_path_factory.mktemp("rules"), "--next-poll-ms", str(NEXT_POLL_MS)) as site:
        yield site


def open_harness(page: Page, base: str) -> None:
    """A page of the service's origin with the client module loaded (a JSON page: no policy of the player page's)."""
    page.goto(f"{base}/healthz")
    page.evaluate(HARNESS)


def events(page: Page, *types: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate("() => events")
    return [e for e in found if not types or e["type"] in types]


def nearby(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/v1/nearby?lat={HERE['lat']}&lng={HERE['lng']}", timeout=5) as resp:
        return dict(orjson.loads(resp.read()))


def a_poi(base: str) -> dict[str, Any]:
    return dict(nearby(base)["pois"][0])


def test_the_client_computes_the_cells_the_service_does(page: Page, site: Site) -> None:
    open_harness(page, site.service.url)
    live = open_current(site.snapshots).grid
    published = page.evaluate("async () => (await fetch('/v1/grid')).json()")
    for grid in (live, SquareGrid(cell_m=250.0, radius=3), SquareGrid(cell_m=37.0, radius=1)):
        params = published if grid is live else {"seq": 1, **grid.client_params()}
        points = _edge_points(grid, np.random.default_rng(7))
        cells = page.evaluate("([points, grid]) => points.map(([lat, lng]) => G.cellOf(lat, lng, grid))", [points, params])
        wrong = [(p, c) for p, c in zip(points, cells) if c != grid.cell_of(*p)]
        assert len(points) > 3000 and not wrong, wrong[:5]
    # And the service agrees with the cell the client asks it by: /v1/cells/{cell} is the window of the point.
    rng = random.Random(3)
    for _ in range(20):
        lat, lng = 22.5 + rng.random() * 0.1, 113.85 + rng.random() * 0.3
        cell = page.evaluate("([lat, lng, g]) => G.cellOf(lat, lng, g)", [lat, lng, published])
        by_point = page.evaluate(f"async () => (await fetch('/v1/nearby?lat={lat}&lng={lng}')).json()")
        assert by_point["center_cell"] == cell
        assert page.evaluate(f"async () => (await fetch('/v1/cells/{cell}')).json()")["pois"] == by_point["pois"]


def test_on_an_h3_grid_the_client_asks_by_position(page: Page, site: Site) -> None:
    # A dependency-free module cannot compute H3 ids (nor hold them in a JavaScript number): it polls /v1/nearby.
    h3 = {"seq": 1, "kind": "h3", "h3_res": 9, "radius": 2}
    page.route("**/v1/grid", lambda r: r.fulfill(status=200, json=h3))
    open_harness(page, site.service.url)
    page.evaluate(f"""() => {{ window.c = make({{ minPollMs: 0 }}); c.start();
                             c.setPosition({HERE['lat']}, {HERE['lng']}); }}""")
    page.wait_for_function("() => events.filter(e => e.type === 'poll').length >= 3", timeout=10_000)
    page.evaluate("() => c.stop()")
    polls = events(page, "poll")
    assert all(e["path"] == f"/v1/nearby?lat={HERE['lat']:.6f}&lng={HERE['lng']:.6f}" for e in polls)
    assert [e["status"] for e in polls][:3] == [200, 304, 304]
    assert page.evaluate("() => G.cellOf(22.5, 113.9, window.c.grid)") is None


def test_the_player_group_is_the_one_geo_service_stagger_computes(page: Page, site: Site) -> None:
    rng = random.Random(11)
    alphabet = "abcXYZ019_-é漢字ü😀 \u00a0ßØ€𝄞"
    ids = [f"player{i}" for i in range(100)] + ["", "a", "foobar", "红包", "🧧🧧", "Ωmega"]
    ids += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(250)]
    groups = [1, 2, 5, 7, 10, 1000, 2**31 - 1]
    open_harness(page, site.service.url)
    js = page.evaluate("([ids, groups]) => ids.map(id => [G.fnv1a32(id), ...groups.map(g => G.groupOf(id, g))])",
                       [ids, groups])
    assert js == [[fnv1a_32(i.encode()), *(group_of(i, g) for g in groups)] for i in ids]
    assert [fnv1a_32(b""), fnv1a_32(b"a"), fnv1a_32(b"foobar")] == [0x811C9DC5, 0xE40C292C, 0xBF9CF968]  # FNV's own vectors
    stagger = {"groups": 7, "step_s": 90, "starts_at": "2026-02-10T12:00:00Z"}
    start = datetime(2026, 2, 10, 12, tzinfo=UTC).timestamp()
    opening = page.evaluate("([ids, s]) => ids.map(id => G.openingOf({ task_id: 1, stagger: s }, id))", [ids[:50], stagger])
    assert opening == [opens_at(i, 7, 90, start) * 1000 for i in ids[:50]]


def test_a_standing_player_revalidates_and_waits_what_the_service_says(page: Page, site: Site) -> None:
    open_harness(page, site.service.url)
    route = "/v1/cells/{cell}"
    before = requests_total(site.service.url, route, "304")
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("if-none-match"))) if "/v1/cells/" in r.url else None)
    page.evaluate("""async () => { window.c = make({ minPollMs: 0 }); c.start();
                     await new Promise(r => c.addEventListener("grid", r, { once: true })); }""")
    page.evaluate(f"() => c.setPosition({HERE['lat']}, {HERE['lng']})")
    page.wait_for_timeout(3000)
    page.evaluate("() => c.stop()")
    polls = events(page, "poll")
    statuses = [e["status"] for e in polls]
    assert statuses[0] == 200 and set(statuses[1:]) == {304} and len(statuses) >= 7, statuses
    assert requests_total(site.service.url, route, "304") - before == len(statuses) - 1
    assert all(tag for _, tag in sent[1:])  # every poll after the first carried the answer's ETag
    key = orjson.loads(urllib.request.urlopen(f"{site.service.url}/v1/grid", timeout=5).read())["key"]
    assert {url.partition("?")[2] for url, _ in sent} == {f"grid={key}"}  # and named its grid (the edge keys on it)
    gaps = np.diff([e["at"] for e in polls])
    assert gaps.min() >= NEXT_POLL_MS * 0.9 and gaps.max() < NEXT_POLL_MS * 3, gaps


def test_503_with_retry_after_backs_off_with_jitter_then_polling_resumes(page: Page, site: Site) -> None:
    seen: list[float] = []
    refusals = 4

    def overloaded(route: Route) -> None:
        seen.append(time.monotonic())
        if len(seen) <= refusals:
            body = {"error": {"status": 503, "code": "overloaded", "message": "try again later"}}
            route.fulfill(status=503, json=body, headers={"Retry-After": "1"})
        else:
            route.continue_()

    page.route("**/v1/cells/*", overloaded)
    open_harness(page, site.service.url)
    page.evaluate("""async () => { window.c = make({ minPollMs: 0 }); c.start();
                     await new Promise(r => c.addEventListener("grid", r, { once: true })); }""")
    page.evaluate(f"() => c.setPosition({HERE['lat']}, {HERE['lng']})")
    page.wait_for_function("() => events.some(e => e.type === 'answer')", timeout=20_000)
    page.wait_for_timeout(2 * NEXT_POLL_MS)
    page.evaluate("() => c.stop()")
    backoffs = events(page, "backoff")
    assert [b["failures"] for b in backoffs] == [1, 2, 3, 4] and all(b["retry_after_ms"] == 1000 for b in backoffs)
    delays = [b["delay_ms"] for b in backoffs]
    # The longer of Retry-After (plus up to a fifth) and half to all of 0.5 s * 2^n: 1-1.2 s, 1-1.2 s, 1-2 s, 2-4 s.
    assert all(1000 <= d <= 1200 for d in delays[:2]) and 1000 <= delays[2] <= 2000 and 2000 <= delays[3] <= 4000
    assert len(set(delays)) == 4  # jittered
    gaps = np.diff(seen[: refusals + 1])
    assert all(gap >= d / 1000 - 0.05 for gap, d in zip(gaps, delays)), (gaps, delays)
    after = [e["status"] for e in events(page, "poll")][refusals:]
    assert after[0] == 200 and len(after) >= 2  # polling at next_poll_ms again


@pytest.fixture
def proxy(site: Site) -> Iterator[HttpProxy]:
    proxy = HttpProxy(site.service.url).start()
    yield proxy
    proxy.stop()


def test_a_claim_whose_answer_a_cut_connection_lost_is_retried_with_its_id_and_settled_once(
        page: Page, site: Site, proxy: HttpProxy) -> None:
    poi = a_poi(site.service.url)
    headers: list[dict[str, str]] = []
    page.on("request", lambda r: headers.append(r.headers) if "/v1/me" in r.url or "/v1/claims" in r.url else None)
    open_harness(page, proxy.url)
    proxy.fail("POST", "/v1/claims", "503", "cut", "cut")
    answered_before = requests_total(site.service.url, "/v1/claims", "200")
    result = page.evaluate("""async ([token, poi]) => {
        window.c = make({ token, backoff: { firstMs: 200 } }); c.start();
        await new Promise(r => c.addEventListener("player", r, { once: true }));
        c.setPosition(poi.lat, poi.lng);
        return c.claim(poi);
    }""", [token("cutter"), poi])
    page.evaluate("() => c.stop()")
    posts = [s for s in proxy.seen if s.method == "POST"]
    assert {orjson.loads(s.body)["claim_id"] for s in posts} == {result["claim_id"]} and len(posts) >= 3
    assert [s.fault for s in posts][:3] == ["503", "cut", "cut"] and posts[-1].fault == ""
    backoffs = events(page, "backoff")
    assert backoffs[0]["status"] == 503 and any(b["reason"] == "network" for b in backoffs)
    assert [e["attempt"] for e in events(page, "claim")] == list(range(len(events(page, "claim"))))
    # The service settled the claim on its first arrival and answered every later one with that outcome.
    assert requests_total(site.service.url, "/v1/claims", "200") - answered_before == len(posts) - 1
    rows = sql_rows(site.ledger, f"SELECT user_id, outcome, prize_type FROM claims WHERE claim_id = '{result['claim_id']}'")
    assert rows == [("cutter", result["outcome"], result.get("prize_type"))]
    assert result["outcome"] == "won"
    player_requests = [h for h in headers if "authorization" in h]
    assert player_requests and all(h.get("x-geodrop-player") == "cutter" for h in player_requests)


def test_a_staggered_task_is_not_claimed_before_it_opens_for_the_player(page: Page, site: Site) -> None:
    poi = a_poi(site.service.url)
    player, groups, step_s = "early-bird", 4, 3600
    opening = time.time() + 2.5  # the player's group opens in 2.5 s; the others an hour or more apart
    starts_at = opening - group_of(player, groups) * step_s
    stagger = {"groups": groups, "step_s": step_s,
               "starts_at": datetime.fromtimestamp(starts_at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}

    def staggered(route: Route) -> None:  # the service's answer, every task staggered (the contract's field)
        response = route.fetch()
        if response.status != 200:
            route.fulfill(response=response)
            return
        answer = response.json()
        for task in answer["tasks"]:
            task["stagger"] = stagger
        route.fulfill(response=response, json=answer)

    page.route("**/v1/cells/*", staggered)
    page.route("**/v1/nearby*", staggered)
    open_harness(page, site.service.url)
    claims_before = requests_total(site.service.url, "/v1/claims")
    early = page.evaluate("""async ([token, player, poi]) => {
        window.c = make({ token, player }); c.start();
        c.setPosition(poi.lat, poi.lng);
        await new Promise(r => c.addEventListener("answer", r, { once: true }));
        return [c.opensAt(poi.task_id), c.isOpen(poi.task_id), c.whyNot(poi), await c.claim(poi)];
    }""", [token(player), player, poi])
    assert abs(early[0] / 1000 - opening) < 0.01 and early[1] is False and early[2] == "not_open"
    assert early[3]["outcome"] == "not_sent" and early[3]["reason"] == "not_open"
    assert requests_total(site.service.url, "/v1/claims") == claims_before  # nothing was sent
    page.wait_for_timeout(max(0.0, opening - time.time()) * 1000 + 200)
    late = page.evaluate("(poi) => c.claim(poi)", poi)
    assert late["outcome"] == "won" and requests_total(site.service.url, "/v1/claims") == claims_before + 1

    # The service's word wins over the client's reckoning: a not_yet answer names the opening; until then, no claim.
    later = datetime.fromtimestamp(time.time() + 60, UTC).isoformat().replace("+00:00", "Z")
    page.route("**/v1/claims", lambda r: r.fulfill(json={"claim_id": orjson.loads(r.request.post_data or "{}")["claim_id"],
                                                         "outcome": "not_yet", "opens_at": later}))
    told = page.evaluate("async (poi) => [await c.claim(poi), await c.claim(poi), c.opensAt(poi.task_id)]", poi)
    page.evaluate("() => c.stop()")
    assert told[0]["outcome"] == "not_yet" and told[1]["outcome"] == "not_sent" and told[1]["reason"] == "not_open"
    assert told[2] == pytest.approx(datetime.fromisoformat(later).timestamp() * 1000, abs=1)


@pytest.mark.parametrize("answer", [{"outcome": "won", "prize_type": "cash", "wins_left": 0},
                                    {"outcome": "player_cap_reached"}], ids=["wins_left", "outcome"])
def test_at_the_events_limit_the_client_stops_claiming_and_says_so(page: Page, site: Site, answer: dict[str, Any]) -> None:
    poi = a_poi(site.service.url)
    posts: list[str] = []

    def capped(route: Route) -> None:
        posts.append(route.request.post_data or "")
        route.fulfill(json={"claim_id": orjson.loads(posts[-1])["claim_id"], **answer})

    page.route("**/v1/claims", capped)
    open_harness(page, site.service.url)
    outcomes = page.evaluate("""async ([token, poi]) => {
        window.c = make({ token }); c.start();
        c.setPosition(poi.lat, poi.lng);
        const first = await c.claim(poi);
        const limited = c.limitReached;
        const second = await c.claim(poi);
        c.stop();
        return [first, limited, second, c.whyNot(poi)];
    }""", [token("capped"), poi])
    assert outcomes[0]["outcome"] == answer["outcome"] and outcomes[1] is True
    assert outcomes[2] == {"claim_id": None, "outcome": "not_sent", "reason": "limit", "task_id": poi["task_id"],
                           "poi_id": poi["poi_id"]}
    assert outcomes[3] == "limit" and len(posts) == 1
    assert [e["source"] for e in events(page, "limit")] == ["answer"]
