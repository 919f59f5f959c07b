"""A build from the console's MySQL tables equals a build from the same draft exported to a folder, array for array
and table for table; and a draft seeded from a folder exports to a folder that builds what the folder builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from geo_service.snapshot.folder import open_current
from geo_service.snapshot.format import ROW_ARRAYS
from loaders.pois import PoiColumns
from loaders.records import Prize, parse_task, parse_zone
from placement import store
from placement.db import Cursor, Db
from placement.folders import seed
from tests.conftest import SAMPLE
from tests.placement.conftest import fresh_mysql_draft, points


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, timeout=300, capture_output=True)


def _build(source: str, out: Path) -> None:
    _run("loaders", "build", "--source", source, "--out", str(out), "--quiet")


def _same(a: Path, b: Path) -> None:
    one, two = open_current(a), open_current(b)
    for name in ROW_ARRAYS:
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    assert one.tasks == two.tasks and one.districts == two.districts
    assert one.manifest["counts"] == two.manifest["counts"] and one.manifest["screening"] == two.manifest["screening"]


async def _edit(db: Db) -> None:
    """Edits of every kind the console makes: a new staggered task on placed points, a changed task, a new zone."""
    pts = points(300, seed=7)
    columns = PoiColumns(np.zeros(len(pts), np.int64), np.zeros(len(pts), np.int64), np.array([p["lat"] for p in pts]),
                         np.array([p["lng"] for p in pts]), np.zeros(len(pts), np.int64))
    task = parse_task({"task_id": 1, "name": "新春 walk ✨", "district_code": 440305, "poi_set_id": 1,
                       "starts_at": "2026-01-01T00:00:00+08:00", "ends_at": "2027-01-01T00:00:00+08:00",
                       "stagger_s": 60, "stagger_groups": 3})
    prizes = [Prize(1, "cash", 10, 1.0, 0.5), Prize(1, "coupon", 99, 2.5, None)]
    zone = parse_zone({"id": "console-zone", "reason": "a pond"},
                      {"type": "Polygon", "coordinates": [[[113.92, 22.52], [113.925, 22.52], [113.925, 22.525],
                                                           [113.92, 22.525], [113.92, 22.52]]]})

    def work(cur: Cursor) -> None:
        store.save_task(cur, "test", None, 0, store.TaskSave(task, prizes, columns, None))
        old = store.task_detail(cur, 44030300)
        changed = parse_task({**old, "name": "renamed", "poi_set_id": 1, "enabled": "0"})
        store.save_task(cur, "test", 44030300, 0, store.TaskSave(changed, prizes[:1], None, None))
        store.save_zone(cur, "test", zone, "console-zone", 0)

    await db.write(work)


async def test_a_build_from_the_mysql_draft_equals_a_build_of_its_export(tmp_path: Path) -> None:
    dsn = fresh_mysql_draft()
    db = Db(dsn)
    await db.create_tables()
    await seed(db, SAMPLE)
    await _edit(db)
    _build(dsn, tmp_path / "from-mysql")
    _run("placement", "export", "--draft", dsn, "--out", str(tmp_path / "exported"))
    _build(str(tmp_path / "exported"), tmp_path / "from-folder")
    _same(tmp_path / "from-mysql", tmp_path / "from-folder")
    built = {t["task_id"]: t for t in open_current(tmp_path / "from-mysql").tasks}
    assert built[44030300]["name"] == "renamed" and not built[44030300]["enabled"]
    assert max(built) > 44030300 and built[max(built)]["stagger_groups"] == 3


async def test_a_seeded_sqlite_draft_exports_what_its_folder_builds(tmp_path: Path) -> None:
    db = Db(f"sqlite:///{tmp_path / 'draft.sqlite3'}")
    await db.create_tables()
    await seed(db, SAMPLE)
    _run("placement", "export", "--draft", db.dsn, "--out", str(tmp_path / "exported"))
    _build(str(SAMPLE), tmp_path / "from-sample")
    _build(str(tmp_path / "exported"), tmp_path / "from-export")
    _same(tmp_path / "from-sample", tmp_path / "from-export")
