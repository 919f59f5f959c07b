"""The console in Debian's Chromium against real processes (the service and the console on the sample, the draft in
SQLite and in MariaDB): an operator creates a task from an uploaded CSV and points placed by clicking, sees an
upload's bad lines, another operator's stale save is refused with what changed, the draft is previewed and
published and its POIs are in the service's answers within 10 s of the click, a rollback brings the old seq back,
and the audit holds every step."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import ARTIFACTS, SAMPLE
from tests.placement.conftest import TOKENS, draft_dsn, operators_file
from tests.support.processes import Process, get_json, service

BAD_LINES = {3: "abc,113.93", 5: "22.53,", 8: "95,113.93", 10: "22.53,200", 12: ","}


@dataclass
class Site:
    service: Process
    console: Process
    good_csv: Path
    bad_csv: Path
    points: list[tuple[float, float]]


def _csv_files(folder: Path) -> tuple[Path, Path, list[tuple[float, float]]]:
    rng = random.Random(5)
    pts = [(round(22.52 + rng.random() * 0.02, 6), round(113.92 + rng.random() * 0.02, 6)) for _ in range(1000)]
    good = folder / "pois-1000.csv"
    good.write_text("lat,lng\n" + "".join(f"{a},{b}\n" for a, b in pts))
    lines = [f"{a},{b}" for a, b in pts[:10]]
    for line_no, text in sorted(BAD_LINES.items()):
        lines.insert(line_no - 2, text)
    bad = folder / "pois-bad.csv"
    bad.write_text("lat,lng\n" + "\n".join(lines) + "\n")
    return good, bad, pts


@pytest.fixture(params=["sqlite", "mysql"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    snaps = tmp_path / "snaps"
    subprocess.run([sys.executable, "-m", "loaders", "build", "--source", str(SAMPLE), "--out", str(snaps), "--quiet"],
                   check=True, timeout=120)
    svc = service(snaps, tmp_path / "var", "--ledger", f"sqlite:///{tmp_path / 'ledger.sqlite3'}", "--poll-interval-s",
                  "0.2", workers=1)
    console = Process("placement", ["serve", "--draft", draft_dsn(request.param, tmp_path), "--seed", str(SAMPLE),
                                    "--snapshots", str(snaps), "--operators", str(operators_file(tmp_path)),
                                    "--work-dir", str(tmp_path / "work"), "--service", svc.url])
    try:
        svc.start()
        console.start()
        svc.wait_ready()
        console.wait_ready()
        yield Site(svc, console, *_csv_files(tmp_path))
    finally:
        console.stop()
        svc.stop()


# Chromium logs every answered refusal as a console error; the checks (422) and the stale save (409) are the page
# working, not failing. Anything else (a script error, a CSP violation, a 5xx) is not.
EXPECTED = re.compile(r"Failed to load resource: the server responded with a status of (409|422) ")


def _sign_in(page: Page, url: str, name: str, errors: list[str]) -> None:
    page.on("console", lambda m: errors.append(f"{name}: {m.text}") if m.type == "error" and not EXPECTED.match(m.text)
            else None)
    page.on("pageerror", lambda e: errors.append(f"{name}: {e} at {e.stack}"))
    page.goto(url)
    page.fill("#token", TOKENS[name])
    page.click("#sign-in button")
    expect(page.locator(".task-row").first).to_be_visible()


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"))


def _nearby_has(site: Site, task_id: int, lat: float, lng: float) -> bool:
    answer: dict[str, Any] = get_json(f"{site.service.url}/v1/nearby?lat={lat}&lng={lng}")
    return any(t["task_id"] == task_id for t in answer["tasks"])


def _create_task(page: Page, site: Site) -> int:
    page.click("#new-task")
    page.fill("#f-name", "Lantern walk")
    page.select_option("#f-district", "440305")
    page.set_input_files("#f-upload", str(site.bad_csv))
    bad = page.locator("#upload-problems li.bad-line")
    expect(bad).to_have_count(len(BAD_LINES) + 1)  # line 12 lacks both lat and lng: two problems
    lines = {int(re.match(r"line (\d+):", t).group(1)) for t in bad.all_text_contents()}  # type: ignore[union-attr]
    assert lines == set(BAD_LINES)
    page.set_input_files("#f-upload", str(site.good_csv))
    expect(page.locator("#points-summary")).to_contain_text("1000 points: 0 dropped")
    page.click("#place-points")
    box = page.locator("#map").bounding_box()
    assert box is not None
    for dx in (-60, 0, 60):
        page.mouse.click(box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2 + 40)
    page.click("#place-points")
    expect(page.locator("#points-summary")).to_contain_text("1003 points")
    rows = page.locator("#prize-rows tr.prize")
    rows.nth(0).locator(".type").fill("cash")
    rows.nth(0).locator(".quota").fill("100")
    page.click("#add-prize")
    rows.nth(1).locator(".type").fill("coupon")
    rows.nth(1).locator(".quota").fill("500")
    rows.nth(1).locator(".weight").fill("3")
    _shot(page, "editor")
    page.click("#save")
    expect(page.locator("#save-result")).to_contain_text("as version 1")
    found = re.search(r"task #(\d+)", page.locator("#save-result").inner_text())
    assert found is not None
    return int(found.group(1))


def _stale_save_is_refused(page: Page, other: Page, task_id: int) -> None:
    other.locator(f'.task-row[data-task-id="{task_id}"]').click()
    expect(other.locator("#editor h2")).to_contain_text("version 1")
    page.fill("#f-name", "Lantern walk, east gate")
    page.click("#save")
    expect(page.locator("#save-result")).to_contain_text("as version 2")
    other.locator("#prize-rows tr.prize").nth(0).locator(".quota").fill("150")
    other.click("#save")
    conflict = other.locator(".conflict")
    expect(conflict).to_contain_text("at version 2")
    expect(conflict).to_contain_text("alice")
    expect(conflict).to_contain_text("name: Lantern walk → Lantern walk, east gate")
    _shot(other, "conflict")


def _publish(page: Page, site: Site, task_id: int) -> float:
    page.click('nav button[data-tab="publish"]')
    page.click("#preview")
    expect(page.locator("#diff-totals")).to_contain_text("1 tasks added")
    expect(page.locator("#diff-totals")).to_contain_text("+1003")
    _shot(page, "preview")
    clicked = time.monotonic()
    page.click("#publish")
    lat, lng = site.points[0]
    while not _nearby_has(site, task_id, lat, lng):  # bounded below
        assert time.monotonic() - clicked < 10, "the published task was not served within 10 s of the click"
        time.sleep(0.05)
    served = time.monotonic() - clicked
    expect(page.locator("#job-state")).to_contain_text("snapshot 2 served", timeout=15_000)
    return served


@pytest.mark.browser_context_args(viewport={"width": 1400, "height": 900})
def test_an_operator_places_publishes_and_rolls_back_a_task(page: Page, browser: Browser, site: Site) -> None:
    errors: list[str] = []
    _sign_in(page, site.console.url, "alice", errors)
    task_id = _create_task(page, site)
    other = browser.new_page(viewport={"width": 1400, "height": 900})
    _sign_in(other, site.console.url, "bob", errors)
    _stale_save_is_refused(page, other, task_id)
    served = _publish(page, site, task_id)
    print(f"\npublish click to served at {site.points[0]}: {served:.2f} s")
    assert site.service.health()["snapshot"]["seq"] == 2
    page.click("#rollback")
    expect(page.locator("#job-state")).to_contain_text("rollback: snapshot 1 served", timeout=15_000)
    assert site.service.health()["snapshot"]["seq"] == 1 and not _nearby_has(site, task_id, *site.points[0])
    page.click('nav button[data-tab="audit"]')
    expect(page.locator(".audit li").first).to_have_attribute("data-action", "rollback")
    actions = page.locator(".audit li").evaluate_all("(items) => items.map((i) => i.dataset.action)")
    assert actions[:4] == ["rollback", "publish", "update_task", "create_task"]
    audit = page.locator(".audit").inner_text()
    assert "alice · create_task" in audit and "POIs +1003" in audit
    _shot(page, "audit")
    other.close()
    assert errors == []

