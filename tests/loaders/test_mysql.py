"""The MySQL source against the real MariaDB: import, then build identical arrays from either source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pymysql
import pytest

from geo_service.snapshot.folder import open_current
from geo_service.snapshot.format import ROW_ARRAYS
from loaders.cli import main
from tests.conftest import MYSQL_DSN, SAMPLE
from tests.support.builders import csv_records, set_csv_field


def _count(conn: pymysql.connections.Connection, table: str) -> int:
    conn.commit()  # a fresh snapshot of the data for this connection
    with conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        return int(cur.fetchone()[0])


def test_build_from_mysql_gives_the_same_arrays_as_from_the_folder(
    mysql_conn: pymysql.connections.Connection, sample_snapshots: Path, tmp_path: Path
) -> None:
    assert main(["import", "--source", str(SAMPLE), "--mysql", MYSQL_DSN, "--quiet"]) == 0
    assert main(["import", "--source", str(SAMPLE), "--mysql", MYSQL_DSN, "--quiet"]) == 0  # idempotent
    assert _count(mysql_conn, "pois") == len(csv_records(SAMPLE / "pois.csv"))
    assert _count(mysql_conn, "tasks") == len(csv_records(SAMPLE / "tasks.csv"))
    out = tmp_path / "snaps"
    assert main(["build", "--source", MYSQL_DSN, "--out", str(out), "--quiet"]) == 0
    a, b = open_current(sample_snapshots), open_current(out)
    for name in ROW_ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.tasks == b.tasks
    assert a.districts == b.districts
    assert a.manifest["counts"] == b.manifest["counts"]
    assert a.manifest["screening"] == b.manifest["screening"]
    assert b.manifest["source"] == "mysql://root@127.0.0.1:3306/test"
    # The streaming cursor feeds a build that spills its sorted runs just as the folder does.
    spilled = tmp_path / "spilled"
    assert main(["build", "--source", MYSQL_DSN, "--out", str(spilled), "--quiet", "--memory-mb", "1"]) == 0
    c = open_current(spilled)
    assert c.manifest["build"]["runs_spilled"] > 1
    for name in ROW_ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(c, name)), name
    assert a.tasks == c.tasks and a.manifest["counts"] == c.manifest["counts"]


def test_import_of_bad_data_exits_2_and_leaves_the_tables_as_they_were(
    mysql_conn: pymysql.connections.Connection, sample_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", "--source", str(SAMPLE), "--mysql", MYSQL_DSN, "--quiet"]) == 0
    before = _count(mysql_conn, "pois")
    set_csv_field(sample_data / "pois.csv", 20_000, "lng", "east")
    capsys.readouterr()
    assert main(["import", "--source", str(sample_data), "--mysql", MYSQL_DSN, "--quiet"]) == 2
    assert "pois.csv:20000: lng: not a number ('east')" in capsys.readouterr().err
    assert _count(mysql_conn, "pois") == before


def test_bad_rows_in_mysql_are_named_by_table_and_row(
    mysql_conn: pymysql.connections.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import", "--source", str(SAMPLE), "--mysql", MYSQL_DSN, "--quiet"]) == 0
    with mysql_conn.cursor() as cur:
        cur.execute("UPDATE pois SET lat = 91.25 WHERE poi_id = (SELECT MIN(poi_id) + 4 FROM pois)")
        cur.execute("UPDATE tasks SET ends_at = starts_at - 1 WHERE task_id = (SELECT MIN(task_id) FROM tasks)")
    mysql_conn.commit()
    capsys.readouterr()
    out = tmp_path / "snaps"
    assert main(["build", "--source", MYSQL_DSN, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mysql://root@127.0.0.1:3306/test/pois:5: lat: 91.25 is outside" in err
    assert "mysql://root@127.0.0.1:3306/test/tasks:1: ends_at: ends at" in err
    assert not out.exists() or not (out / "CURRENT").exists()
