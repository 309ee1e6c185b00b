"""Nights in a column under ``--format delta`` (docs/nights-in-a-column.md): each day's scores are
a partition of the table (``dt=<day>/`` folders, ``dt=__HIVE_DEFAULT_PARTITION__`` for rows
without a day), every session once across nights, backfills and reruns, the same rows and
scores as the plain Parquet run."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import unquote

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import cli

deltalake = pytest.importorskip("deltalake")

DAYS = [dt.date(2026, 11, 20) + dt.timedelta(days=i) for i in range(4)]


def _score(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["score", *args, "--json"], catch_exceptions=False)
    assert result.stdout, result.stderr
    summary = json.loads(result.stdout)
    assert result.exit_code == summary["exit_code"] == 0, result.stderr
    return summary


def _export(path: Path, *, sorted_by_day: bool, rows: int = 4_000, group_rows: int = 700) -> Path:
    """Bundled sessions over four days (a thousand each, every 97th without a day), written by
    DuckDB's ``COPY`` with a ``dt DATE`` column: sorted by day (row groups of one day, some
    straddling midnight) or not (every row group holds every day)."""
    from scorer.model.sessions import load_bundled_sessions

    sessions = load_bundled_sessions().slice(0, rows)
    days = [None if i % 97 == 0 else DAYS[i * len(DAYS) // rows] for i in range(rows)]
    dated = sessions.append_column("dt", pa.array(days, pa.date32()))
    order = "dt NULLS LAST, session_id" if sorted_by_day else "hash(session_id)"
    con = duckdb.connect()
    con.register("dated", dated)
    con.execute(
        f"COPY (SELECT * FROM dated ORDER BY {order}) TO '{path}' "
        f"(FORMAT parquet, ROW_GROUP_SIZE {group_rows})"
    )
    return path


def _current(out: Path) -> pa.Table:
    return deltalake.DeltaTable(str(out / "scores")).to_pyarrow_table()


def _by_day(table: pa.Table) -> dict[str | None, int]:
    counts = table.group_by("dt").aggregate([("session_id", "count")])
    return dict(zip(counts["dt"].to_pylist(), counts["session_id_count"].to_pylist()))


def _expected_by_day(path: Path) -> dict[str | None, int]:
    days = pq.read_table(path, columns=["dt"])["dt"]
    counts = pc.value_counts(days).to_pylist()
    return {None if c["values"] is None else c["values"].isoformat(): c["counts"] for c in counts}


@pytest.mark.parametrize("sorted_by_day", [True, False], ids=["sorted", "unsorted"])
def test_a_day_column_scored_into_delta_is_partitioned_by_day(tmp_path, sorted_by_day):
    path = _export(tmp_path / "sessions.parquet", sorted_by_day=sorted_by_day)
    summary = _score(str(path), str(tmp_path / "delta"), "--format", "delta")
    assert summary["rows"] == pq.read_metadata(path).num_rows == 4_000
    assert summary["rows_without_day"] == _expected_by_day(path)[None]

    table = deltalake.DeltaTable(str(tmp_path / "delta" / "scores"))
    assert table.metadata().partition_columns == ["dt"]
    actions = pa.table(table.get_add_actions(flatten=True))
    files = [unquote(p) for p in actions["path"].to_pylist()]
    assert all(f.split("/")[0].startswith("dt=") for f in files)
    folders = {f.split("/")[0] for f in files}
    assert folders == {f"dt={d}" for d in DAYS} | {"dt=__HIVE_DEFAULT_PARTITION__"}
    for f in files:  # the day is the folder's: not also a column of the data files
        assert "dt" not in pq.read_schema(tmp_path / "delta" / "scores" / f).names

    for day in DAYS:
        one = table.to_pyarrow_table(filters=[("dt", "=", day.isoformat())])
        assert one.num_rows == _expected_by_day(path)[day.isoformat()]
        assert set(one["dt"].to_pylist()) == {day.isoformat()}
    everything = table.to_pyarrow_table()
    assert _by_day(everything) == _expected_by_day(path)
    keys = everything["session_id"].to_pylist()
    assert len(keys) == len(set(keys)) == 4_000

    # The same rows and scores as the plain Parquet run, whose files keep dt as a column.
    _score(str(path), str(tmp_path / "plain"))
    plain = duckdb.sql(
        f"SELECT session_id, intent_raw, intent_calibrated, CAST(dt AS VARCHAR) AS dt "
        f"FROM read_parquet('{tmp_path}/plain/scores/**/*.parquet') ORDER BY session_id"
    ).to_arrow_table()
    delta = everything.select(["session_id", "intent_raw", "intent_calibrated", "dt"])
    delta = delta.sort_by("session_id")
    assert delta["session_id"].equals(plain["session_id"])
    assert delta["intent_raw"].equals(plain["intent_raw"])
    assert delta["intent_calibrated"].equals(plain["intent_calibrated"])
    assert delta["dt"].to_pylist() == plain["dt"].to_pylist()

    # No piece planned empty: one data file per (row groups, day) that holds rows.
    assert pc.all(pc.greater(actions["num_records"], 0)).as_py()
    if sorted_by_day:  # row groups of one day share a file: about one per day, plus straddlers
        assert len(files) < pq.read_metadata(path).num_row_groups + len(DAYS) + 1


def test_a_night_then_a_backfill_into_delta_hold_every_session_once(tmp_path):
    path = _export(tmp_path / "sessions.parquet", sorted_by_day=True)
    out = tmp_path / "delta"
    night = _score(str(path), str(out), "--format", "delta", "--since", "2026-11-21",
                   "--until", "2026-11-21")  # fmt: skip
    expected = _expected_by_day(path)
    assert night["rows"] == expected["2026-11-21"]
    assert night["row_groups_pruned"] > 0
    assert _by_day(_current(out)) == {"2026-11-21": expected["2026-11-21"]}

    again = _score(str(path), str(out), "--format", "delta", "--since", "2026-11-21",
                   "--until", "2026-11-21")  # fmt: skip
    assert again["rows"] == 0

    backfill = _score(str(path), str(out), "--format", "delta")
    assert backfill["rows"] == 4_000 - expected["2026-11-21"]
    current = _current(out)
    keys = current["session_id"].to_pylist()
    assert len(keys) == len(set(keys)) == 4_000
    assert _by_day(current) == expected

    # --overwrite rescores everything into a new version: still each session once.
    _score(str(path), str(out), "--format", "delta", "--overwrite")
    keys = _current(out)["session_id"].to_pylist()
    assert len(keys) == len(set(keys)) == 4_000


def _calibration_rows(path: str) -> list[tuple[str | None, int]]:
    rows = pq.read_table(path.removeprefix("file://")).to_pylist()
    return sorted(
        ((r["dt"], r["rows"]) for r in rows if r["scope"] == "partition"),
        key=lambda p: (p[0] is None, p[0] or ""),
    )


def test_late_labels_find_each_day_partition_and_the_rows_without_a_day(tmp_path):
    """`scorer evaluate` over a Delta run of a day column: each row's day from its partition
    folder, the rows without a day as such, the same per-day counts as the plain Parquet run."""
    path = _export(tmp_path / "sessions.parquet", sorted_by_day=True)
    labels = tmp_path / "labels.parquet"
    pq.write_table(pq.read_table(path, columns=["session_id", "converted"]), labels)
    unlabelled = tmp_path / "unlabelled" / "sessions.parquet"
    unlabelled.parent.mkdir()
    pq.write_table(pq.read_table(path).drop_columns(["converted"]), unlabelled)

    found = []
    for out, options in (("plain", ()), ("delta", ("--format", "delta"))):
        _score(str(unlabelled), str(tmp_path / out), *options)
        result = CliRunner().invoke(
            cli, ["evaluate", str(tmp_path / out), str(labels), "--json"], catch_exceptions=False
        )
        assert result.exit_code == 0, result.stderr
        found.append(_calibration_rows(json.loads(result.stdout)["calibration_path"]))
    expected = sorted(_expected_by_day(path).items(), key=lambda p: (p[0] is None, p[0] or ""))
    assert found[0] == found[1] == expected


def test_a_delta_run_on_a_plain_parquet_run_of_a_day_column_is_refused_until_overwrite(tmp_path):
    """The Parquet run's files hold several days with ``dt`` a column: they cannot be a day's
    partition, so the Delta run exits 2 before scoring, naming the file; --overwrite rescores."""
    path = _export(tmp_path / "sessions.parquet", sorted_by_day=True)
    out = tmp_path / "out"
    _score(str(path), str(out))
    result = CliRunner().invoke(cli, ["score", str(path), str(out), "--format", "delta"])
    assert result.exit_code == 2
    assert "sessions.parquet" in result.stderr and "--overwrite" in result.stderr
    assert not (out / "scores" / "_delta_log").exists()

    _score(str(path), str(out), "--format", "delta", "--overwrite")
    keys = _current(out)["session_id"].to_pylist()
    assert len(keys) == len(set(keys)) == 4_000


def test_a_night_killed_before_its_delta_commit_is_published_once_by_the_backfill(
    tmp_path, drivers, monkeypatch
):
    """Resume: the night's one-day pieces committed, the driver killed at its Delta commit (an
    observed stop, `PAUSE_ENV`); the backfill skips them, scores the rest and publishes all of
    it in one version, every session once in its day's partition."""
    import signal

    import psutil
    from support.faults import wait_for

    from scorer.pipeline.tables import PAUSE_ENV

    path = _export(tmp_path / "sessions.parquet", sorted_by_day=True)
    out = tmp_path / "out"
    expected = _expected_by_day(path)
    monkeypatch.setenv(PAUSE_ENV, "publish")
    night = drivers.start(str(path), str(out), "--format", "delta", "--since", "2026-11-21",
                          "--until", "2026-11-21")  # fmt: skip

    def stopped() -> bool:
        try:
            return psutil.Process(night.pid).status() == psutil.STATUS_STOPPED
        except psutil.NoSuchProcess:
            return False

    wait_for(stopped, 180, "the night's driver stopped before its Delta commit")
    drivers.signal(night, signal.SIGKILL)
    drivers.wait(night, 30)
    assert not (out / "scores" / "_delta_log").exists(), "a killed run published"

    monkeypatch.delenv(PAUSE_ENV)
    backfill = _score(str(path), str(out), "--format", "delta")
    assert backfill["rows"] == 4_000 - expected["2026-11-21"]
    table = deltalake.DeltaTable(str(out / "scores"))
    assert table.version() == 0
    current = table.to_pyarrow_table()
    keys = current["session_id"].to_pylist()
    assert len(keys) == len(set(keys)) == 4_000
    assert _by_day(current) == expected


@pytest.fixture
def drivers(tmp_path):
    """`scorer score` processes of their own (`test_faults._Drivers`), stopped after the test."""
    from support.faults import Drivers

    tracked = Drivers(tmp_path)
    yield tracked
    tracked.close()


def test_a_day_column_on_s3_into_a_delta_table_on_s3(tmp_path):
    """On object storage: the day column of row groups holding several days is read at
    planning through the input's filesystem, and the table's partitions land on S3."""
    import pyarrow.fs as pafs
    from support.servers import moto_s3

    credentials = {"AWS_ACCESS_KEY_ID": "days-key", "AWS_SECRET_ACCESS_KEY": "days-secret-28"}
    path = _export(tmp_path / "sessions.parquet", sorted_by_day=False)
    with moto_s3(credentials) as endpoint:
        s3 = pafs.S3FileSystem(
            endpoint_override=endpoint, scheme="http", allow_bucket_creation=True
        )
        s3.create_dir("lake/exports")
        pafs.copy_files(str(path), "lake/exports/sessions.parquet", destination_filesystem=s3)
        query = f"endpoint_override={endpoint}&scheme=http"
        summary = _score(f"s3://lake/exports?{query}", f"s3://lake/scored?{query}",
                         "--format", "delta")  # fmt: skip
        assert summary["rows"] == 4_000
        options = {
            "AWS_ENDPOINT_URL": f"http://{endpoint}",
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            **credentials,
        }
        table = deltalake.DeltaTable("s3://lake/scored/scores", storage_options=options)
        assert table.metadata().partition_columns == ["dt"]
        current = table.to_pyarrow_table()
    keys = current["session_id"].to_pylist()
    assert len(keys) == len(set(keys)) == 4_000
    assert _by_day(current) == _expected_by_day(path)
