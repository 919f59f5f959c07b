"""geo-snapshot in-process: bad input exits 2 naming file, row and field, and publishes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from geo_service.snapshot.folder import open_current
from loaders.cli import main
from loaders.synth import write_synthetic
from tests.support.builders import csv_records, folder_state, set_csv_field, set_feature_geometry

BOWTIE = {"type": "Polygon", "coordinates": [[[114.0, 22.5], [114.1, 22.6], [114.1, 22.5], [114.0, 22.6], [114.0, 22.5]]]}


def _published(data: Path, out: Path) -> None:
    assert main(["build", "--source", str(data), "--out", str(out), "--quiet"]) == 0


Edit = Callable[[Path], object]
CASES: list[tuple[str, Edit, str]] = [
    ("non-numeric lat", lambda d: set_csv_field(d / "pois.csv", 1042, "lat", "4O.1"),
     "pois.csv:1042: lat: not a number ('4O.1')"),
    ("out-of-range lat", lambda d: set_csv_field(d / "pois.csv", 17, "lat", "95.5"), "pois.csv:17: lat: 95.5 is outside"),
    ("out-of-range lng", lambda d: set_csv_field(d / "pois.csv", 18, "lng", "-181"), "pois.csv:18: lng: -181 is outside"),
    ("NaN lng", lambda d: set_csv_field(d / "pois.csv", 19, "lng", "nan"), "pois.csv:19: lng: not a number ('nan')"),
    ("empty poi_id", lambda d: set_csv_field(d / "pois.csv", 20, "poi_id", ""), "pois.csv:20: poi_id: missing"),
    ("duplicate poi_id", lambda d: set_csv_field(d / "pois.csv", 30, "poi_id", "10000001"),
     "pois.csv:30: poi_id: duplicate 10000001 (first at row 2)"),
    ("unknown poi_set", lambda d: set_csv_field(d / "tasks.csv", 5, "poi_set_id", "999"),
     "tasks.csv:5: poi_set_id: unknown poi_set 999: no POI has it"),
    ("ends before it starts", lambda d: set_csv_field(d / "tasks.csv", 6, "ends_at", "2025-12-31T00:00:00+08:00"),
     "tasks.csv:6: ends_at: ends at"),
    ("negative stagger", lambda d: set_csv_field(d / "tasks.csv", 6, "stagger_s", "-5"),
     "tasks.csv:6: stagger_s: -5 is outside [0, 3600]"),
    ("no stagger groups", lambda d: set_csv_field(d / "tasks.csv", 6, "stagger_groups", "0"),
     "tasks.csv:6: stagger_groups: 0 is outside [1, 60]"),
    ("time without zone", lambda d: set_csv_field(d / "tasks.csv", 7, "starts_at", "2026-01-01T00:00:00"),
     "tasks.csv:7: starts_at: ISO-8601 time without a zone"),
    ("unknown district", lambda d: set_csv_field(d / "tasks.csv", 8, "district_code", "110101"),
     "tasks.csv:8: district_code: unknown district 110101"),
    ("bad quota", lambda d: set_csv_field(d / "task_prizes.csv", 3, "quota", "-5"), "task_prizes.csv:3: quota: -5 is outside"),
    ("tab in prize type", lambda d: set_csv_field(d / "task_prizes.csv", 4, "prize_type", "cash\tback"),
     "task_prizes.csv:4: prize_type: control characters in 'cash\\tback'"),
    ("invalid polygon", lambda d: set_feature_geometry(d / "districts.geojson", 2, BOWTIE),
     "districts.geojson:2: geometry: invalid polygon: Self-intersection"),
    ("invalid zone", lambda d: set_feature_geometry(d / "exclusions.geojson", 1, {"type": "Point", "coordinates": [1, 2]}),
     "exclusions.geojson:1: geometry: Point, expected Polygon or MultiPolygon"),
    ("missing file", lambda d: (d / "tasks.csv").unlink(), "tasks.csv: missing"),
    ("missing column", lambda d: (d / "pois.csv").write_text("poi_id,lat,lng\n1,22.5,114.0\n"), "pois.csv"),
    ("broken json", lambda d: (d / "districts.geojson").write_text("{nope"), "districts.geojson: not JSON"),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_file_row_and_field_and_publishes_nothing(
    sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Edit, expected: str
) -> None:
    out = tmp_path / "snaps"
    _published(sample_data, out)
    before = folder_state(out)
    edit(sample_data)
    capsys.readouterr()
    assert main(["build", "--source", str(sample_data), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert folder_state(out) == before


def test_skip_bad_rows_publishes_the_rest_and_reports_what_it_dropped(
    sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_csv_field(sample_data / "pois.csv", 100, "lat", "x")
    set_csv_field(sample_data / "tasks.csv", 5, "poi_set_id", "999")
    out = tmp_path / "snaps"
    assert main(["build", "--source", str(sample_data), "--out", str(out), "--skip-bad-rows", "--json"]) == 0
    manifest = orjson.loads(capsys.readouterr().out)
    assert manifest["screening"]["skipped_problems"] == 2
    assert any("pois.csv:100: lat" in e for e in manifest["screening"]["skipped_examples"])
    assert manifest["counts"]["tasks"] == 89
    assert manifest["counts"]["pois_read"] == 24_300


def test_unreachable_mysql_exits_2_naming_the_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "snaps"
    code = main(["build", "--source", "mysql://root:secret@127.0.0.1:1/test", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "mysql://root@127.0.0.1:1/test: cannot connect" in err
    assert "secret" not in err
    assert not (out / "CURRENT").exists()


def test_a_build_killed_mid_way_publishes_nothing(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "snaps"
    write_synthetic(data, 1_500_000, seed=5, progress=lambda stage, n: None)
    _published(data, out)
    before = folder_state(out)
    cmd = [sys.executable, "-m", "loaders", "build", "--source", str(data), "--out", str(out), "--quiet"]
    killed_while_writing = False
    for _ in range(3):  # bounded: the kill must land while the new snapshot is being written
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(".tmp-") and any(p.iterdir()) for p in out.iterdir()):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.wait(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            killed_while_writing = True
            break
        subprocess.run(["true"])
    assert killed_while_writing
    current, entries = folder_state(out)
    assert current == before[0]
    assert [e for e in entries if not e.startswith(".tmp-")] == before[1]
    # The next build clears the dead writer's temp folder and publishes the next seq.
    _published(data, out)
    assert folder_state(out)[0] == "2\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("build", "inspect", "query", "rollback", "publish", "synth", "import"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        options = [w for w in text.split() if w.startswith("--") and w != "--help"]
        assert options, command
    with pytest.raises(SystemExit) as done:
        main(["build"])
    assert done.value.code == 2


def test_the_summary_names_the_largest_exclusion_zones_and_counts_the_rest(
        sample_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loaders.cli import summary

    assert main(["build", "--source", str(sample_data), "--out", str(tmp_path / "out"), "--json"]) == 0
    manifest = orjson.loads(capsys.readouterr().out)
    zones = manifest["screening"]["excluded_by_zone"]
    assert sum(zones.values()) == manifest["counts"]["pois_excluded"]  # --json keeps every zone
    many = {f"zone-{k}": k for k in range(300)}  # 299 zones dropped POIs (zone-0 dropped none)
    line = next(x for x in summary({**manifest, "screening": {**manifest["screening"], "excluded_by_zone": many}},
                                   tmp_path, 1.0).splitlines() if x.startswith("pois"))
    assert "(zone-299: 299, zone-298: 298, zone-297: 297 and 296 more zones)" in line


@pytest.mark.parametrize("argv", [
    ["loaders", "build", "--source", "data/sample", "--out", "unused", "--memory-mb", "\u00b2"],
    ["delivery", "partner", "--port", "\u00b2"],
])
def test_a_unicode_digit_in_a_number_flag_is_exit_2_with_a_message(argv: list[str]) -> None:
    # str.isdigit() takes '²' and int() refuses it: these were tracebacks.
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "'²'" in done.stderr


def test_an_explicit_plus_sign_on_an_id_is_read_as_the_number(sample_data: Path, tmp_path: Path,
                                                              sample_snapshots: Path) -> None:
    """'+10001857' passes the id pattern as the CSV cell it is: it builds the sample's snapshot (once a traceback)."""
    first = csv_records(sample_data / "pois.csv")[0]
    set_csv_field(sample_data / "pois.csv", 2, "poi_id", f"+{first['poi_id']}")
    set_csv_field(sample_data / "pois.csv", 2, "poi_set_id", f" +{first['poi_set_id']}")
    assert main(["build", "--source", str(sample_data), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert np.array_equal(open_current(tmp_path / "out").poi_ids, open_current(sample_snapshots).poi_ids)
