"""Nights in a column (docs/nights-in-a-column.md): the day of each row from a column inside the
files, as warehouse unloads and Spark jobs without ``partitionBy`` write it, works per day as
``dt=`` folders do; ``--since/--until`` on it prune row groups by their statistics and score
exactly the rows selected, once, whatever the filters of successive runs."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import cli
from scorer.jobs.generate import Break, generate
from scorer.partitions import PartitionFilter
from scorer.pipeline.day_selection import DaySelection, selected_days

SESSIONS_PER_NIGHT = 6_000  # above [monitor] min_rows (5,000): every night's PSI and ECE count
NIGHTS = 14
BROKEN = "2026-11-18"


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _score(*args: str) -> dict:
    code, out, err = _cli("score", *args, "--json")
    assert out, err
    summary = json.loads(out)
    assert code == summary["exit_code"], err
    return summary


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The store of docs/night.md, smaller: 14 nights, 1.5% conversion, page_value zeroed on
    one night; in dt= folders, labelled."""
    root = tmp_path_factory.mktemp("walk") / "store"
    generate(
        root,
        sessions=SESSIONS_PER_NIGHT * NIGHTS,
        files=NIGHTS,
        days=NIGHTS,
        seed=7,
        conversion_rate=0.015,
        breaks=[Break.parse(f"{BROKEN}:zero=page_value")],
    )
    return root


def _duckdb_one_file(store: Path, target: Path, row_group_rows: int = 2_048) -> Path:
    """The store as one file with a ``dt`` DATE column, as DuckDB's ``COPY`` writes it."""
    con = duckdb.connect()
    con.execute(
        f"""COPY (
            SELECT * EXCLUDE (dt), CAST(dt AS DATE) AS dt
            FROM read_parquet('{store}/**/*.parquet', hive_partitioning = true)
            ORDER BY dt, session_id
        ) TO '{target}' (FORMAT parquet, ROW_GROUP_SIZE {row_group_rows})"""
    )
    return target


def _polars_one_file(store: Path, target: Path) -> Path:
    """The same as Polars writes it: zstd, large strings, its own row groups."""
    frame = pl.read_parquet(f"{store}/**/*.parquet", hive_partitioning=True)
    frame = frame.with_columns(pl.col("dt").cast(pl.Utf8).str.to_date()).sort("dt", "session_id")
    frame.write_parquet(target, compression="zstd", row_group_size=4_000, statistics=True)
    return target


def _table(summary: dict, kind: str) -> pa.Table:
    root = Path(summary["output"].removeprefix("file://"))
    return pq.read_table(root / kind / f"run_id={summary['run_id']}" / "part-0.parquet")


def _per_day_rows(summary: dict) -> dict[str | None, int]:
    rows = _table(summary, "calibration").to_pylist()
    return {r["dt"]: r["rows"] for r in rows if r["scope"] == "partition"}


def _partition_rows(table: pa.Table) -> pa.Table:
    rows = table.filter(pc.equal(table["scope"], "partition"))
    keys = [("dt", "ascending")] + (
        [("column", "ascending")] if "column" in table.column_names else []
    )
    return rows.sort_by(keys)


def _assert_tables_close(folders: pa.Table, column: pa.Table) -> None:
    assert folders.num_rows == column.num_rows
    for name in folders.column_names:
        if name == "run_id":
            continue
        left, right = folders[name].to_pylist(), column[name].to_pylist()
        if folders.schema.field(name).type in (pa.float64(), pa.float32()):
            assert np.allclose(
                np.array(left, dtype=float), np.array(right, dtype=float), rtol=0, atol=1e-9,
                equal_nan=True,
            ), name  # fmt: skip
        elif pa.types.is_list(folders.schema.field(name).type):
            for a, b in zip(left, right, strict=True):
                assert np.allclose(
                    np.array(a, dtype=float), np.array(b, dtype=float), atol=1e-9, equal_nan=True
                ), name
        else:
            assert left == right, name


@pytest.mark.parametrize("writer", ["duckdb", "polars"])
def test_fourteen_nights_in_one_file_match_the_folders(store, tmp_path, writer):
    one = tmp_path / "sessions.parquet"
    (_duckdb_one_file if writer == "duckdb" else _polars_one_file)(store, one)
    assert pq.read_schema(one).field("dt").type == pa.date32()

    by_folder = _score(str(store), str(tmp_path / "by-folder"))
    by_column = _score(str(one), str(tmp_path / "by-column"))
    assert by_column["rows"] == by_folder["rows"] == SESSIONS_PER_NIGHT * NIGHTS

    for kind in ("drift", "calibration"):
        folders, column = (_partition_rows(_table(s, kind)) for s in (by_folder, by_column))
        assert sorted(set(column["dt"].to_pylist())) == sorted(set(folders["dt"].to_pylist()))
        assert len(set(column["dt"].to_pylist())) == NIGHTS
        _assert_tables_close(folders, column)

    def alerts(summary: dict) -> set[tuple[str, str, str]]:
        return {(a["kind"], a["dt"], a["column"]) for a in summary["alerts"]}

    assert alerts(by_column) == alerts(by_folder)
    drifted = {a for a in alerts(by_column) if a[0] == "drift"}
    assert drifted and {night for _, night, _ in drifted} == {BROKEN}
    assert ("drift", BROKEN, "page_value") in drifted

    # The scores keep the day: one night is one filter away.
    scores = duckdb.sql(
        f"SELECT dt, count(*) AS n FROM read_parquet('{tmp_path}/by-column/scores/**/*.parquet') "
        "GROUP BY dt ORDER BY dt"
    ).fetchall()
    assert [n for _, n in scores] == [SESSIONS_PER_NIGHT] * NIGHTS
    assert str(scores[4][0]) == BROKEN


def _days_of(path: Path) -> list[tuple[dt.date, dt.date]]:
    meta = pq.read_metadata(path)
    index = meta.schema.names.index("dt")
    return [
        (
            meta.row_group(g).column(index).statistics.min,
            meta.row_group(g).column(index).statistics.max,
        )
        for g in range(meta.num_row_groups)
    ]


def _scored_keys(out: Path) -> list[int]:
    return (
        duckdb.sql(f"SELECT session_id FROM read_parquet('{out}/scores/**/*.parquet')")
        .fetchnumpy()["session_id"]
        .tolist()
    )


def test_since_until_on_a_column_read_only_their_row_groups_and_score_each_row_once(
    store, tmp_path
):
    one = _duckdb_one_file(store, tmp_path / "sessions.parquet", row_group_rows=2_500)
    table = pq.read_table(one)
    groups = _days_of(one)
    since, until = dt.date(2026, 11, 20), dt.date(2026, 11, 21)
    needed = [g for g, (low, high) in enumerate(groups) if low <= until and high >= since]
    straddling = [g for g in needed if not (since <= groups[g][0] and groups[g][1] <= until)]
    assert straddling and len(needed) < len(groups) / 3

    plan = _score(str(one), str(tmp_path / "out"), "--since", str(since), "--until", str(until),
                  "--dry-run")["plan"]  # fmt: skip
    planned = sorted(
        g for s in plan["shards"] for p in s["pieces"] for g in range(p["rg_start"], p["rg_stop"])
    )
    assert planned == needed

    out = tmp_path / "out"
    first = _score(str(one), str(out), "--since", str(since), "--until", str(until))
    days = pc.field("dt")
    selected = table.filter((days >= since) & (days <= until))
    assert first["rows"] == selected.num_rows == 2 * SESSIONS_PER_NIGHT
    read = sum(pq.read_metadata(one).row_group(g).num_rows for g in needed)
    assert first["rows_read"] == read > first["rows"]
    assert first["row_groups_pruned"] == len(groups) - len(needed)
    assert sorted(_scored_keys(out)) == sorted(selected["session_id"].to_pylist())

    # The next night, and a rerun of both: the straddling row group gives each day once.
    second = _score(str(one), str(out), "--since", "2026-11-21", "--until", "2026-11-22")
    assert second["rows"] == SESSIONS_PER_NIGHT
    keys = _scored_keys(out)
    assert len(keys) == len(set(keys)) == 3 * SESSIONS_PER_NIGHT
    again = _score(str(one), str(out), "--since", str(since), "--until", "2026-11-22")
    assert again["rows"] == 0

    # Everything at last: the rest of every row group, each row once.
    rest = _score(str(one), str(out))
    assert rest["rows"] == table.num_rows - 3 * SESSIONS_PER_NIGHT
    keys = _scored_keys(out)
    assert len(keys) == len(set(keys)) == table.num_rows


def test_a_timestamp_column_across_midnight_utc(tmp_path):
    from scorer.model.sessions import load_bundled_sessions

    sessions = load_bundled_sessions().slice(0, 4_000)
    start = dt.datetime(2026, 11, 20, 22, 0, tzinfo=dt.UTC)
    times = [start + dt.timedelta(seconds=4 * i) for i in range(sessions.num_rows)]  # ~4.4 hours
    table = sessions.append_column("event_time", pa.array(times, pa.timestamp("us", tz="UTC")))
    path = tmp_path / "events.parquet"
    pq.write_table(table, path, row_group_size=500)
    after_midnight = sum(t.date() == dt.date(2026, 11, 21) for t in times)

    utc = _score(str(path), str(tmp_path / "utc"), "--date-column", "event_time")
    assert _per_day_rows(utc) == {
        "2026-11-20": 4_000 - after_midnight,
        "2026-11-21": after_midnight,
    }

    # New York is five hours behind: every session is on the 20th there.
    ny = _score(str(path), str(tmp_path / "ny"), "--date-column", "event_time",
                "--date-timezone", "America/New_York")  # fmt: skip
    assert set(_per_day_rows(ny)) == {"2026-11-20"}

    night = _score(str(path), str(tmp_path / "night"), "--date-column", "event_time",
                   "--since", "2026-11-21")  # fmt: skip
    assert night["rows"] == after_midnight
    kept = duckdb.sql(f"SELECT DISTINCT dt FROM '{tmp_path}/night/scores/**/*.parquet'")
    assert kept.fetchall() == [(dt.date(2026, 11, 21),)]


def test_strings_and_rows_without_a_day(tmp_path):
    from scorer.model.sessions import load_bundled_sessions

    sessions = load_bundled_sessions().slice(0, 3_000)
    days = ["2026-11-20"] * 1_000 + [None] * 500 + ["2026-11-21"] * 1_500
    path = tmp_path / "export.parquet"
    pq.write_table(sessions.append_column("dt", pa.array(days, pa.string())), path)
    summary = _score(str(path), str(tmp_path / "out"))
    assert summary["rows"] == 3_000 and summary["rows_without_day"] == 500
    assert _per_day_rows(summary) == {"2026-11-20": 1_000, "2026-11-21": 1_500, None: 500}

    only = _score(str(path), str(tmp_path / "one-day"), "--partition", "dt=2026-11-21")
    assert only["rows"] == 1_500


def test_bad_day_columns_exit_2_naming_file_and_column(tmp_path):
    from scorer.model.sessions import load_bundled_sessions

    sessions = load_bundled_sessions().slice(0, 1_000)
    wrong = tmp_path / "wrong" / "part.parquet"
    wrong.parent.mkdir()
    pq.write_table(sessions.append_column("dt", pa.array(np.arange(1_000), pa.int64())), wrong)
    code, _, err = _cli("score", str(wrong.parent), str(tmp_path / "o1"))
    assert code == 2 and str(wrong) in err and "'dt'" in err and "int64" in err

    folder = tmp_path / "mixed" / "dt=2026-11-20"
    folder.mkdir(parents=True)
    other_day = pa.array([dt.date(2026, 11, 21)] * 1_000, pa.date32())
    pq.write_table(sessions.append_column("dt", other_day), folder / "part.parquet")
    code, _, err = _cli("score", str(tmp_path / "mixed"), str(tmp_path / "o2"))
    assert code == 2 and str(folder / "part.parquet") in err and "'dt'" in err
    assert "2026-11-21" in err

    code, _, err = _cli("score", str(wrong.parent), str(tmp_path / "o3"), "--date-column", "when")
    assert code == 2 and str(wrong) in err and "'when'" in err


def test_a_folder_and_a_column_that_agree_score_by_the_folder(tmp_path):
    from scorer.model.sessions import load_bundled_sessions

    sessions = load_bundled_sessions().slice(0, 1_000)
    folder = tmp_path / "both" / "dt=2026-11-20"
    folder.mkdir(parents=True)
    same_day = pa.array([dt.date(2026, 11, 20)] * 1_000, pa.date32())
    pq.write_table(sessions.append_column("dt", same_day), folder / "part.parquet")
    summary = _score(str(tmp_path / "both"), str(tmp_path / "out"), "--since", "2026-11-20")
    assert summary["rows"] == 1_000 and summary["rows_read"] == 1_000


def test_day_selections_subtract_and_name_themselves():
    every = DaySelection.every()
    wanted = selected_days(PartitionFilter.parse((), "2026-11-20", "2026-11-21"))
    assert not wanted.nulls and wanted.token == "2026-11-20..2026-11-21"
    rest = every.minus(wanted)
    assert rest.nulls and rest.token == "..2026-11-19,2026-11-22..,null"
    assert DaySelection.parse(rest.token) == rest
    assert not (rest & wanted)
    assert every.covers(wanted) and not wanted.covers(every)
    days = pa.array([dt.date(2026, 11, 19), None, dt.date(2026, 11, 21)], pa.date32())
    assert wanted.mask(days).to_pylist() == [False, False, True]
    assert rest.mask(days).to_pylist() == [True, True, False]


def test_late_labels_find_each_night_of_a_column_as_of_a_folder(store, tmp_path):
    """`scorer evaluate` groups the scores of a day-column run by their ``dt`` column: the same
    per-night calibration as the folder layout's."""
    sessions, labels = tmp_path / "sessions", tmp_path / "labels"
    for path in sorted(store.rglob("*.parquet")):
        table = pq.read_table(path)
        for root, columns in (
            (sessions, [c for c in table.column_names if c != "converted"]),
            (labels, ["session_id", "converted"]),
        ):
            target = root / path.relative_to(store)
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.select(columns), target)
    one = _duckdb_one_file(sessions, tmp_path / "sessions.parquet")

    evaluations = []
    for source, out in ((sessions, "by-folder"), (one, "by-column")):
        _score(str(source), str(tmp_path / out))
        code, stdout, err = _cli("evaluate", str(tmp_path / out), str(labels), "--json")
        assert code == 0, err
        evaluations.append(json.loads(stdout))
    tables = [
        _partition_rows(pq.read_table(e["calibration_path"].removeprefix("file://")))
        for e in evaluations
    ]
    assert len(set(tables[1]["dt"].to_pylist())) == NIGHTS
    _assert_tables_close(*[t.drop_columns(["scored_run_ids"]) for t in tables])


@pytest.mark.parametrize("writer", ["polars", "duckdb", "pandas", "pyarrow-1.0-gzip-plain"])
def test_files_as_other_writers_write_them_score_once(tmp_path, writer):
    """What already worked keeps working, day column and all: Polars (zstd, large strings),
    DuckDB, pandas, and pyarrow's format 1.0 with gzip and no dictionaries."""
    from scorer.model.sessions import load_bundled_sessions

    table = load_bundled_sessions().slice(0, 3_000)
    days = [dt.date(2026, 11, 20) + dt.timedelta(days=i // 1_000) for i in range(3_000)]
    table = table.append_column("dt", pa.array(days, pa.date32()))
    path = tmp_path / "in.parquet"
    if writer == "polars":
        pl.from_arrow(table).write_parquet(path, compression="zstd", row_group_size=700)
    elif writer == "duckdb":
        con = duckdb.connect()
        con.register("sessions", table)
        con.execute(f"COPY sessions TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 700)")
    elif writer == "pandas":
        table.to_pandas().to_parquet(path, index=False)
    else:
        pq.write_table(
            table, path, version="1.0", compression="gzip", use_dictionary=False,
            row_group_size=700,
        )  # fmt: skip
    summary = _score(str(path), str(tmp_path / "out"), "--since", "2026-11-21")
    assert summary["rows"] == 2_000
    rest = _score(str(path), str(tmp_path / "out"))
    assert rest["rows"] == 1_000
    keys = _scored_keys(tmp_path / "out")
    assert sorted(keys) == sorted(table["session_id"].to_pylist())


def _dated_sessions(path: Path, rows: int = 3_000, row_group_size: int = 700) -> pa.Table:
    """Bundled sessions over three days (a thousand each), written with a ``dt`` date column."""
    from scorer.model.sessions import load_bundled_sessions

    table = load_bundled_sessions().slice(0, rows)
    days = [dt.date(2026, 11, 20) + dt.timedelta(days=i // 1_000) for i in range(rows)]
    table = table.append_column("dt", pa.array(days, pa.date32()))
    pq.write_table(table, path, row_group_size=row_group_size)
    return table


def test_a_shard_of_some_days_commits_only_once_every_row_of_its_row_group_was_read(tmp_path):
    from scorer.errors import ShardError
    from scorer.pipeline.manifest import Manifest
    from scorer.storage import resolve

    path = tmp_path / "in.parquet"
    _dated_sessions(path)
    plan = _score(str(path), str(tmp_path / "dry"), "--since", "2026-11-21", "--dry-run")["plan"]
    straddling = [s for s in plan["shards"] if "@dt=" in s["shard_id"]]
    assert [s["pieces"][0]["days"] for s in straddling] == ["2026-11-21"]
    assert straddling[0]["output_relpath"].endswith("-dt-2026-11-21.parquet")

    # The same shard as the driver plans it, committed with a row of its row group unread.
    from scorer.pipeline.days import DayPlan, DaySource, resolve_days
    from scorer.pipeline.packing import plan_shards
    from scorer.pipeline.scan import scan_inputs

    selection = PartitionFilter.parse((), "2026-11-21", None)
    items = scan_inputs(resolve(str(path)), selection, day_columns=True)
    days: DayPlan = resolve_days(items, selection, column=None, timezone=None)
    assert days.source == DaySource("dt")
    shards = plan_shards(items, 1_000_000, {}, days.by_relpath(items).groups).shards
    shard = next(s for s in shards if s.pieces[0].days is not None)
    manifest = Manifest.load(resolve(str(tmp_path / "out")))
    with pytest.raises(ShardError, match="read 699 rows and wrote 300, expected 700"):
        manifest.commit_shard(
            shard, run_id="r", rows=300, model_sha256="m", options_digest="o", rows_read=699
        )


def test_a_string_day_that_is_not_a_day_fails_its_shard_naming_file_and_column(tmp_path):
    from scorer.model.sessions import load_bundled_sessions

    sessions = load_bundled_sessions().slice(0, 500)
    days = ["2026-11-20"] * 499 + ["yesterday"]
    path = tmp_path / "export.parquet"
    pq.write_table(sessions.append_column("dt", pa.array(days)), path)
    code, out, err = _cli("score", str(path), str(tmp_path / "out"), "--json")
    assert code == 1, err
    failure = json.loads(out)["failures"][0]["error"]
    assert str(path) in failure and "day column 'dt'" in failure and "YYYY-MM-DD" in failure


def test_actors_on_ray_select_and_score_days_as_the_driver_does(ray_cluster, tmp_path):
    """The day source and each shard's days travel to Ray actors with the shard."""
    from scorer import score

    path = tmp_path / "in.parquet"
    table = _dated_sessions(path)
    summary = score(str(path), str(tmp_path / "out"), actors=1, since="2026-11-21")
    assert summary.rows == 2_000 and summary.executor == "ray"
    assert summary.rows_read > summary.rows and summary.row_groups_pruned >= 1
    keys = _scored_keys(tmp_path / "out")
    wanted = table.filter(pc.field("dt") >= dt.date(2026, 11, 21))["session_id"].to_pylist()
    assert sorted(keys) == sorted(wanted)
