"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a real collector and
service on the sample: districts drawn, figures moving live, the kill switch, the probe."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import ConsoleMessage, Page

from geo_service.snapshot.folder import open_current
from geo_service.snapshot.format import Snapshot
from geo_service.tokens import mint
from tests.conftest import ARTIFACTS, SAMPLE
from tests.support.processes import Process, collector, get_json, running_pair, service

SECRET, ADMIN = "dash-secret", "dash-admin"
DISTRICT = 440305
TASKLESS = 440307


@dataclass
class Site:
    service: Process
    collector: Process
    snapshot: Snapshot


@contextmanager
def running_site(source: Path, tmp_path: Path) -> Iterator[Site]:
    snaps, ledger = tmp_path / "snaps", f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    # A process of its own: Playwright's sync API runs an event loop in this thread, which asyncio.run refuses.
    subprocess.run([sys.executable, "-m", "loaders", "build", "--source", str(source), "--out", str(snaps), "--quiet"],
                   check=True, timeout=120)
    svc = service(snaps, tmp_path / "var", "--ledger", ledger, "--token-secret", SECRET, "--status-poll-s", "0.2",
                  "--max-speed-mps", "1000000000", workers=1)
    col = collector(snaps, ledger, "--admin-token", ADMIN, "--service", svc.url, "--tick-floor-s", "0.3")
    with running_pair(svc, col):
        yield Site(svc, col, open_current(snaps))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with running_site(SAMPLE, tmp_path) as site:
        yield site


@pytest.fixture
def taskless_district(tmp_path: Path) -> Iterator[Site]:
    """The sample with no task in Longgang (440307)."""
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    with (data / "tasks.csv").open(newline="", encoding="utf-8") as f:
        tasks = list(csv.DictReader(f))
    gone = {t["task_id"] for t in tasks if t["district_code"] == str(TASKLESS)}
    for name in ("tasks.csv", "task_prizes.csv"):
        with (data / name).open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        with (data / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if r["task_id"] not in gone)
    with running_site(data, tmp_path) as site:
        yield site


def open_page(page: Page, collector_url: str, errors: list[str]) -> None:
    page.on("console", lambda m: _console(m, errors))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(collector_url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=20_000)


def _console(message: ConsoleMessage, errors: list[str]) -> None:
    if message.type == "error":
        errors.append(message.text)


def task_poi(snapshot: Snapshot, district: int) -> tuple[int, int, float, float]:
    """Return (task_id, poi_id, lat, lng) of a POI of an active task of the district."""
    now = time.time()
    for i, t in enumerate(snapshot.tasks):
        if t["district_code"] == district and t["enabled"] and t["starts_at"] <= now < t["ends_at"]:
            row = int((snapshot.task_index == i).nonzero()[0][0])
            lat, lng = snapshot.degrees(row)
            return t["task_id"], int(snapshot.poi_ids[row]), float(lat), float(lng)
    raise LookupError(f"no active task in {district}")


def claim(site: Site, n: int, task_id: int, poi_id: int, lat: float, lng: float) -> dict[str, Any]:
    body = orjson.dumps({"claim_id": f"dash-{n}", "task_id": task_id, "poi_id": poi_id, "lat": lat, "lng": lng})
    request = urllib.request.Request(f"{site.service.url}/v1/claims", data=body, method="POST", headers={
        "Authorization": f"Bearer {mint(f'dash{n}', SECRET, int(time.time()) + 600)}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(orjson.loads(resp.read()))


def left(page: Page) -> int:
    """Return what the panel says the district has left, over its prize types ("cash: 2,250 / 2,250" ...)."""
    texts = page.locator("#district-totals .remaining").all_inner_texts()
    assert texts
    return sum(int(t.split(":")[1].split("/")[0].replace(",", "")) for t in texts)


def test_the_page_loads_clean_shows_every_district_and_moves_live_with_claims(page: Page, site: Site) -> None:
    errors: list[str] = []
    open_page(page, site.collector.url, errors)
    assert page.locator("path.district").count() == len(site.snapshot.districts) == 9
    assert page.inner_text("#h-seq") == "1" and page.inner_text("#h-stream") == "stream on"
    page.locator(f"path.district[data-code='{DISTRICT}']").dispatch_event("click")
    page.wait_for_selector("#district-totals")
    before = left(page)
    task_id, poi_id, lat, lng = task_poi(site.snapshot, DISTRICT)
    won = sum(claim(site, n, task_id, poi_id, lat, lng)["outcome"] == "won" for n in range(6))
    assert won >= 1
    deadline = time.monotonic() + 2 * 0.3 + 2.0  # two ticks of the collector, and the stream's way to the page
    # A tick may see some of the wins and the next the rest: wait for all of them, within the deadline.
    while left(page) != before - won and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert left(page) == before - won  # no reload: the stream moved it
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
    assert errors == []


def test_a_district_without_tasks_reads_as_such_and_the_chart_reads_clock_time(page: Page,
                                                                               taskless_district: Site) -> None:
    errors: list[str] = []
    open_page(page, taskless_district.collector.url, errors)
    fill = page.locator(f"path.district[data-code='{TASKLESS}']").get_attribute("fill")
    others = {page.locator(f"path.district[data-code='{d['code']}']").get_attribute("fill")
              for d in taskless_district.snapshot.districts if d["code"] != TASKLESS}
    assert fill == "#eceff1" and fill not in others  # not "0% left" in red, as a district with tasks all gone reads
    assert "no tasks" in page.inner_text(".legend")
    page.wait_for_function("document.getElementById('chart').uplot !== undefined", timeout=10_000)
    chart = "document.getElementById('chart').uplot"
    labels = page.evaluate(f"(c => c.axes[0].values(c, [c.scales.x.min, c.scales.x.max], 0, 0, 0))({chart})")
    span = page.evaluate(f"(c => c.scales.x.max - c.scales.x.min)({chart})")
    assert all(re.fullmatch(r"\d{2}:\d{2}", label) for label in labels), labels
    assert abs(span - 900) < 1  # the whole 15 minutes, however little the collector has seen yet
    assert errors == []


def test_the_kill_switch_on_the_page_takes_the_task_out_of_nearby(page: Page, site: Site) -> None:
    errors: list[str] = []
    page.on("dialog", lambda dialog: dialog.accept(ADMIN))  # the page asks for the admin token once
    open_page(page, site.collector.url, errors)
    task_id, _, lat, lng = task_poi(site.snapshot, DISTRICT)
    nearby = f"{site.service.url}/v1/nearby?lat={lat}&lng={lng}"
    assert task_id in {t["task_id"] for t in get_json(nearby)["tasks"]}
    page.locator(f"path.district[data-code='{DISTRICT}']").dispatch_event("click")
    page.click(f"button.kill[data-task-id='{task_id}']")
    page.wait_for_selector(f".task[data-task-id='{task_id}'][data-status='disabled']", timeout=10_000)
    deadline = time.monotonic() + 5.0
    while task_id in {t["task_id"] for t in get_json(nearby)["tasks"]}:  # bounded by the deadline
        assert time.monotonic() < deadline, "the task is still in /v1/nearby"
        time.sleep(0.1)
    # The token bought an HttpOnly session: nothing a script of the page can read holds it.
    assert page.evaluate("() => [sessionStorage.length, localStorage.length, document.cookie]") == [0, 0, ""]
    assert any(c["name"] == "geodrop_admin" and c["httpOnly"] for c in page.context.cookies())
    assert errors == []


def test_a_probe_click_draws_the_windows_cells_and_the_answers_pois(page: Page, site: Site) -> None:
    errors: list[str] = []
    open_page(page, site.collector.url, errors)
    _, _, lat, lng = task_poi(site.snapshot, DISTRICT)
    page.click("#probe-toggle")
    point = page.evaluate(f"window.dashboardMap.latLngToContainerPoint([{lat}, {lng}])")
    box = page.locator("#map").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])
    page.wait_for_selector("#probe-summary")
    # 25 cells, or up to 35 where the window reaches into a band of another column count.
    assert page.locator("path.probe-cell").count() == len(site.snapshot.grid.window_cells(lat, lng))
    assert page.locator("path.probe-poi").count() >= 1  # the POI the click was on
    assert errors == []


# Names that would run the page's trap if any of them reached the DOM as markup, or an attribute as code.
HOSTILE = ['<img src=x onerror="__trap()">', "<script>__trap()</script>", '"><svg onload=__trap()>',
           "javascript:__trap()", "</span><iframe srcdoc='<script>parent.__trap()</script>'>"]


def hostile_source(into: Path) -> Path:
    """The sample with every district name, task name and prize type replaced by script and markup."""
    shutil.copytree(SAMPLE, into)
    (into / "channels.json").unlink()  # its prize types are the sample's: a build would refuse the hostile ones
    outlines = orjson.loads((into / "districts.geojson").read_bytes())
    for i, f in enumerate(outlines["features"]):
        f["properties"]["name"] = HOSTILE[i % len(HOSTILE)]
    (into / "districts.geojson").write_bytes(orjson.dumps(outlines))
    for name, column in (("tasks.csv", "name"), ("task_prizes.csv", "prize_type")):
        with (into / name).open(newline="") as f:
            rows = list(csv.DictReader(f))
        kinds = sorted({r[column] for r in rows})
        for i, r in enumerate(rows):
            r[column] = HOSTILE[(kinds.index(r[column]) if column == "prize_type" else i) % len(HOSTILE)]
        with (into / name).open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(rows[0]))
            out.writeheader()
            out.writerows(rows)
    return into


@pytest.fixture
def hostile_site(tmp_path: Path) -> Iterator[Process]:
    snaps = tmp_path / "snaps"
    subprocess.run([sys.executable, "-m", "loaders", "build", "--source", str(hostile_source(tmp_path / "src")),
                    "--out", str(snaps), "--quiet"], check=True, timeout=120)
    col = collector(snaps, f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "--admin-token", ADMIN).start()
    try:
        col.wait_ready()
        yield col
    finally:
        col.stop()


def test_names_of_script_and_markup_show_as_text_and_run_nothing_under_the_csp(page: Page, hostile_site: Process) -> None:
    errors: list[str] = []
    page.add_init_script("window.__trapped = 0; window.__trap = () => { window.__trapped += 1; };")
    csp: list[str] = []
    page.on("response", lambda r: csp.append(r.headers.get("content-security-policy", "")) if r.url.endswith("/") else None)
    open_page(page, hostile_site.url, errors)
    assert csp and "script-src 'self'" in csp[0]
    page.locator(f"path.district[data-code='{DISTRICT}']").dispatch_event("mouseover")
    page.locator(f"path.district[data-code='{DISTRICT}']").dispatch_event("click")
    page.wait_for_selector("#district-totals")
    panel, tip = page.inner_text("#panel"), page.inner_text(".leaflet-tooltip")
    shown = panel + tip
    assert {h for h in HOSTILE if h in shown} >= set(HOSTILE[:4]), "the names must show as they are, as text"
    assert page.locator("#panel img, #panel script, #panel svg, #panel iframe, .leaflet-tooltip img").count() == 0
    page.wait_for_timeout(300)  # an onerror or onload would have run by now
    assert page.evaluate("() => window.__trapped") == 0
    assert errors == []
