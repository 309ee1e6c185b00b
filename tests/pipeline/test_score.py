"""The scorer end to end on a real local Ray and real Parquet files."""

from __future__ import annotations

import json

import duckdb
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import cli
from scorer.model.runtime import load_model
from scorer.pipeline.entry import score

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _scores(output):
    return ds.dataset(output / "scores", format="parquet", partitioning="hive").to_table()


def _input(history):
    return ds.dataset(history, format="parquet", partitioning="hive").to_table()


def test_rows_out_equal_rows_in_with_keys_and_order(history, tmp_path):
    summary = score(str(history), str(tmp_path / "out"), shard_rows=6_000, actors=2)
    assert summary.exit_code == 0 and summary.shards_failed == 0
    assert summary.rows == 24_000 and summary.shards_committed == 4
    for shard_file in sorted((tmp_path / "out" / "scores").rglob("*.parquet")):
        stem, _, rg = shard_file.stem.rpartition("-rg")
        start, stop = (int(x) for x in rg.split("-"))
        source = pq.ParquetFile(history / shard_file.parent.name / f"{stem}.parquet")
        expected = source.read_row_groups(range(start, stop), columns=["session_id"])
        got = pq.read_table(shard_file, columns=["session_id"])
        assert got["session_id"].equals(expected["session_id"])  # same keys, same order


def test_scores_equal_in_process_scoring(history, tmp_path):
    score(str(history), str(tmp_path / "out"), actors=2, shard_rows=6_000)
    scored = _scores(tmp_path / "out").sort_by("session_id")
    expected = load_model().score(_input(history), key_column="session_id").sort_by("session_id")
    assert scored["intent_raw"].equals(expected["intent_raw"])
    assert scored["intent_calibrated"].equals(expected["intent_calibrated"])


def test_one_and_two_actors_give_identical_scores(history, tmp_path):
    score(str(history), str(tmp_path / "one"), actors=1, shard_rows=6_000)
    score(str(history), str(tmp_path / "two"), actors=2, shard_rows=6_000)
    one = _scores(tmp_path / "one").sort_by("session_id")
    two = _scores(tmp_path / "two").sort_by("session_id")
    assert one["intent_calibrated"].equals(two["intent_calibrated"])
    assert one["intent_raw"].equals(two["intent_raw"])


def test_stats_add_up_to_the_input(history, tmp_path):
    out = tmp_path / "out"
    summary = score(str(history), str(out), actors=2, shard_rows=3_000)
    shards = pq.read_table(out / "stats" / "shards" / f"run_id={summary.run_id}")
    committed = shards.filter(pc.equal(shards["status"], "committed"))
    assert pc.sum(committed["rows"]).as_py() == 24_000
    assert (
        pc.sum(committed["rows_ok"]).as_py() + pc.sum(committed["rows_invalid"]).as_py() == 24_000
    )
    for stage in ("read", "encode", "infer", "write", "total"):
        assert pc.min(committed[f"{stage}_seconds"]).as_py() >= 0
    assert pc.min(committed["cpu_seconds"]).as_py() > 0
    run = pq.read_table(out / "stats" / "runs" / f"run_id={summary.run_id}").to_pylist()[0]
    assert run["cpu_seconds"] == pytest.approx(pc.sum(committed["cpu_seconds"]).as_py())
    assert run["rows"] == 24_000 and run["shards_committed"] == 8 and run["actors"] == 2
    assert run["setup_seconds"] > 0 and run["ray_version"].startswith("2.60")
    calibration = pq.read_table(out / "calibration" / f"run_id={summary.run_id}")
    overall = calibration.filter(pc.equal(calibration["scope"], "overall")).to_pylist()[0]
    assert overall["rows"] == 24_000


def test_scores_are_queryable_with_hive_partitions_and_metadata(history, tmp_path):
    out = tmp_path / "out"
    summary = score(str(history), str(out), actors=2)
    rows = duckdb.sql(
        f"select dt, count(*) from read_parquet('{out}/scores/**/*.parquet', hive_partitioning=true) "
        "group by dt order by dt"
    ).fetchall()
    assert [n for _, n in rows] == [12_000, 12_000]
    any_file = next((out / "scores").rglob("*.parquet"))
    metadata = pq.read_schema(any_file).metadata
    assert metadata[b"scorer.run_id"].decode() == summary.run_id
    assert metadata[b"scorer.model.sha256"].decode() == load_model().card.sha256


def test_second_run_skips_committed_shards(history, tmp_path):
    out = str(tmp_path / "out")
    first = score(str(history), out, actors=2, shard_rows=6_000)
    second = score(str(history), out, actors=2, shard_rows=3_000)  # other boundaries: reused
    assert second.shards_skipped == first.shards_committed and second.rows == 0
    assert _scores(tmp_path / "out").num_rows == 24_000


def test_stats_and_calibration_of_several_runs_read_as_one_dataset(history, tmp_path):
    """pyarrow (so pandas) infers the run_id=<RUN_ID> folders as a dictionary column; the
    files' own run_id has that type, so every run reads at once with no options."""
    import pandas as pd

    out = tmp_path / "out"
    first = score(str(history), str(out), actors=1)
    second = score(str(history), str(out), actors=1, overwrite=True)
    runs = {first.run_id, second.run_id}
    for folder in ("stats/shards", "stats/runs", "calibration"):
        table = pq.read_table(out / folder)
        assert set(table.column("run_id").to_pylist()) == runs, folder
        assert set(pd.read_parquet(out / folder)["run_id"]) == runs, folder
        queried = duckdb.sql(
            f"SELECT DISTINCT run_id FROM read_parquet('{out / folder}/*/*.parquet')"
        )
        assert {row[0] for row in queried.fetchall()} == runs, folder


def test_dry_run_writes_nothing(history, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["score", str(history), str(out), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["totals"]["rows"] == 24_000
    assert not out.exists()


def test_cli_score_json_summary(history, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "score",
            str(history),
            str(tmp_path / "out"),
            "--actors",
            "2",
            "--json",
            "--keep",
            "region",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 24_000 and summary["exit_code"] == 0
    assert "region" in _scores(tmp_path / "out").column_names


def test_config_file_and_flags(history, tmp_path):
    config = tmp_path / "job.toml"
    config.write_text(
        f'input = "{history}"\noutput = "{tmp_path / "out"}"\nshard_rows = 6000\n[ray]\nactors = 1\n'
    )
    result = CliRunner().invoke(
        cli, ["score", "--config", str(config), "--json", "--shard-rows", "3000"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["actors"] == 1 and summary["shards_committed"] == 8


@pytest.mark.parametrize(
    "body, key",
    [
        ("shard_rowz = 5\n", "shard_rowz"),
        ('shard_rows = "many"\n', "shard_rows"),
        ("[ray]\nactorz = 2\n", "ray.actorz"),
        ("[storage]\nendpoint = 1\n", "storage.endpoint"),
    ],
)
def test_config_errors_name_the_key_and_file(tmp_path, body, key):
    config = tmp_path / "bad.toml"
    config.write_text(body)
    result = CliRunner().invoke(cli, ["score", "in", "out", "--config", str(config)])
    assert result.exit_code == 2
    assert key in result.output and str(config) in result.output


def test_int64_and_large_string_inputs_score_like_the_default_schema(tmp_path):
    import pyarrow as pa
    from support.inputs import make_history

    narrow = make_history(tmp_path / "narrow", sessions=4_000, files=1, days=1)
    wide = make_history(
        tmp_path / "wide",
        sessions=4_000,
        files=1,
        days=1,
        int_type=pa.int64(),
        string_type=pa.large_string(),
    )
    assert ds.dataset(wide).schema.field("month").type == pa.large_string()
    score(str(narrow), str(tmp_path / "out-narrow"), actors=1)
    score(str(wide), str(tmp_path / "out-wide"), actors=1)
    a = _scores(tmp_path / "out-narrow").sort_by("session_id")
    b = _scores(tmp_path / "out-wide").sort_by("session_id")
    assert a["intent_calibrated"].equals(b["intent_calibrated"]) and a.num_rows == 4_000
