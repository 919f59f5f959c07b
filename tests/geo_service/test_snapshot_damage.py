"""Fault drill: the snapshots folder is damaged under a running service (two workers, a real process
tree). Its files are cut to nothing, a broken snapshot is pointed at, the whole folder is deleted: the
workers keep answering from their private copy, exactly as before, without dying or being restarted;
/healthz and /metrics say what is wrong; the broken snapshot is refused; a rebuild is taken up."""

from __future__ import annotations

import os
import shutil
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from geo_service.snapshot.folder import _point_current
from tests.conftest import SAMPLE, build_into
from tests.support.processes import Process, get_json, service

PLACES = [(22.5329, 113.9305), (22.5431, 114.0579), (22.6, 114.1), (22.52, 113.93)]


class Poller:
    """Polls /v1/nearby from a thread until stopped, counting statuses (and failures to get any)."""

    def __init__(self, url: str) -> None:
        self.url, self.statuses, self.stop = url, Counter[Any](), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():  # bounded by the test's stop()
            lat, lng = PLACES[i % len(PLACES)]
            i += 1
            try:
                with urllib.request.urlopen(f"{self.url}/v1/nearby?lat={lat}&lng={lng}", timeout=5) as resp:
                    self.statuses[resp.status] += 1
            except urllib.error.HTTPError as exc:
                self.statuses[exc.code] += 1
            except OSError as exc:
                self.statuses[type(exc).__name__] += 1

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def answers(url: str) -> list[dict[str, Any]]:
    return [get_json(f"{url}/v1/nearby?lat={lat}&lng={lng}") for lat, lng in PLACES]


def every_worker(proc: Process, holds: Callable[[dict[str, Any]], bool], workers: int = 2) -> dict[int, dict[str, Any]]:
    """Ask /healthz until each worker has answered with a health for which `holds` is true (at most 20 s)."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(400):  # bounded: 400 x 50 ms
        health = proc.health()
        if holds(health):
            seen[health["worker_id"]] = health
            if len(seen) == workers:
                return seen
        threading.Event().wait(0.05)
    raise AssertionError(f"only workers {sorted(seen)} got there; last health: {health}")


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        line = next(x for x in resp.read().decode().splitlines() if x.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Process, Path]]:
    root = tmp_path / "snaps"
    build_into(SAMPLE, root)
    proc = service(root, tmp_path / "var", "--poll-interval-s", "0.1").start()
    try:
        proc.wait_ready(workers=2)
        yield proc, root
    finally:
        assert proc.stop() == 0


def test_a_damaged_snapshots_folder_never_reaches_the_workers(served: tuple[Process, Path], sample_data: Path) -> None:
    proc, root = served
    before, pids = answers(proc.url), {w: h["pid"] for w, h in every_worker(proc, lambda h: True).items()}

    with Poller(proc.url) as poller:
        for path in (root / "1").iterdir():  # cut every file of the live snapshot to nothing, in place
            os.truncate(path, 0)
        damaged = every_worker(proc, lambda h: h["snapshot"]["source_problem"] is not None)
        assert all("0 bytes, the manifest says" in h["snapshot"]["source_problem"] for h in damaged.values())
        assert metric(proc.url, "geodrop_snapshot_source_damaged") == 1
        assert answers(proc.url) == before  # the same answers, from the private copy

        shutil.copytree(root / "1", root / "2")  # a broken snapshot (files of 0 bytes) made live in CURRENT
        _point_current(root, 2)
        refused = every_worker(proc, lambda h: "snaps/2" in (h["snapshot_error"] or ""))
        assert {h["snapshot"]["seq"] for h in refused.values()} == {1}
        assert answers(proc.url) == before

        shutil.rmtree(root)  # the whole folder gone
        gone = every_worker(proc, lambda h: "manifest.json: missing" in (h["snapshot"]["source_problem"] or ""))
        assert {h["snapshot"]["seq"] for h in gone.values()} == {1}
        assert answers(proc.url) == before

        build_into(sample_data, root)  # a rebuild into a fresh folder: seq 1 again, another build
        healed = every_worker(proc, lambda h: h["snapshot"]["source_problem"] is None and h["snapshot_error"] is None
                              and h["snapshot"]["loaded_s_ago"] < 30 and h["snapshot"]["seq"] == 1
                              and h["snapshot"]["age_s"] < 60)
        assert metric(proc.url, "geodrop_snapshot_source_damaged") == 0

    assert set(poller.statuses) == {200}, poller.statuses  # no failed poll, ever
    assert sum(poller.statuses.values()) > 50
    assert {w: h["pid"] for w, h in healed.items()} == pids  # no worker died and was restarted
    data_dir = Path(proc.args[proc.args.index("--data-dir") + 1])
    copies = sorted(p.name for p in (data_dir / "mapped").iterdir() if p.is_dir())
    assert len(copies) == 2 and all(name.startswith("1-") for name in copies), copies  # the old copy and the rebuild's
