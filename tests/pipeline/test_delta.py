"""`--format delta` (issue 15): the scores as a Delta table, published once per run.

Real runs on generated Parquet, real delta-rs commits, real readers (deltalake, Polars, pandas);
the fault test kills real `scorer score` processes at points they stop themselves at
(``SCORER_PAUSE_AT``), never after a guessed sleep.
"""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError
from support.faults import SLOW_HISTORY, TOTAL_SHARDS, stopped, wait_for
from support.inputs import make_history
from support.outputs import assert_once, commits

from scorer.cli import cli
from scorer.config import JobConfig
from scorer.errors import ConfigError, OutputConflictError
from scorer.pipeline.entry import score
from scorer.pipeline.layout import file_run
from scorer.pipeline.tables import PAUSE_ENV

SLOW_DELTA = ["--batch-rows", "5", "--shard-rows", "500", "--format", "delta", "--json"]


def _table(out: Path) -> pa.Table:
    return DeltaTable(str(out / "scores")).to_pyarrow_table()


def test_a_delta_run_is_one_version_read_by_deltalake_polars_and_pandas(tmp_path):
    history = make_history(tmp_path / "in", sessions=4_000, files=2, days=2, row_group_rows=1_000)
    out = tmp_path / "out"
    first = score(str(history), str(out), shard_rows=1_000, format="delta")
    assert first.exit_code == 0 and first.delta_version == 0

    table = DeltaTable(str(out / "scores"))
    assert table.metadata().partition_columns == ["dt"]
    scores = table.to_pyarrow_table()
    assert_once(history, scores)
    assert set(scores["dt"].to_pylist()) == {"2026-11-26", "2026-11-27"}
    assert scores.schema.field("intent_calibrated").type == pa.float32()
    polars = pl.scan_delta(str(out / "scores")).group_by("dt").agg(pl.len()).collect()
    assert sorted(polars["len"].to_list()) == [2_000, 2_000]
    assert len(table.to_pandas()) == 4_000
    run_row = pq.read_table(out / "stats" / "runs" / f"run_id={first.run_id}").to_pylist()[0]
    assert run_row["delta_version"] == 0

    # Resuming with nothing to do publishes nothing: no empty version.
    again = score(str(history), str(out), shard_rows=1_000, format="delta")
    assert again.shards_skipped == first.shards_committed and again.delta_version == 0
    assert DeltaTable(str(out / "scores")).version() == 0


def test_overwrite_replaces_atomically_and_keeps_yesterdays_version_readable(tmp_path):
    history = make_history(tmp_path / "in", sessions=4_000, files=2, days=2, row_group_rows=1_000)
    out = tmp_path / "out"
    first = score(str(history), str(out), shard_rows=1_000, format="delta")
    second = score(str(history), str(out), shard_rows=1_000, format="delta", overwrite=True)
    assert second.delta_version == 1 and second.shards_committed == first.shards_committed

    latest = _table(out)
    assert_once(history, latest)
    assert set(latest["run_id"].to_pylist()) == {second.run_id}
    yesterday = DeltaTable(str(out / "scores"), version=0).to_pyarrow_table()
    assert set(yesterday["run_id"].to_pylist()) == {first.run_id}

    # The next run's cleanup keeps the files version 0 references; vacuum is the user's call.
    third = score(str(history), str(out), shard_rows=1_000, format="delta")
    assert third.delta_version == 1
    assert_once(history, DeltaTable(str(out / "scores"), version=0).to_pyarrow_table())
    runs = {file_run(str(p)) for p in (out / "scores").rglob("*.parquet")}
    assert runs == {first.run_id, second.run_id}


def _published(scores: Path) -> DeltaTable | None:
    """The Delta table at SCORES, or None while no version is in its log yet (before the first
    run publishes). Anything else a reader meets, a half-published version above all, raises:
    that is what the polling reader watches for."""
    try:
        return DeltaTable(str(scores))
    except TableNotFoundError:
        return None


def test_the_polling_reader_waits_for_a_first_version_and_fails_on_a_half_published_one(tmp_path):
    scores = tmp_path / "scores"
    assert _published(scores) is None
    (scores / "_delta_log").mkdir(parents=True)
    assert _published(scores) is None  # the log's folder is there, no version in it yet
    write_deltalake(str(scores), pa.table({"run_id": ["r1"]}))
    published = _published(scores)
    assert published is not None and published.version() == 0
    # Version 1's log entry cut short: a table half published, never to be read past.
    (scores / "_delta_log" / f"{1:020d}.json").write_text('{"commitInfo": {"timestamp"')
    with pytest.raises(DeltaError, match="Json error"):
        _published(scores)


def test_a_reader_polling_during_runs_only_sees_whole_runs(tmp_path):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    seen: dict[int, tuple[int, frozenset[str]]] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            table = _published(out / "scores")
            if table is None:
                continue
            if table.version() not in seen:
                rows = table.to_pyarrow_table(columns=["run_id"])
                seen[table.version()] = (rows.num_rows, frozenset(rows["run_id"].to_pylist()))

    options = dict(batch_rows=5, shard_rows=500, format="delta")
    with ThreadPoolExecutor(1) as reader:
        polling = reader.submit(poll)
        first = score(str(history), str(out), **options)
        second = score(str(history), str(out), overwrite=True, **options)
        stop.set()
        polling.result(timeout=30)
    assert seen, "the reader saw no version"
    assert all(rows == 6_000 and len(runs) == 1 for rows, runs in seen.values()), seen
    assert {run for _, runs in seen.values() for run in runs} <= {first.run_id, second.run_id}
    assert seen[max(seen)][1] == {second.run_id}


@pytest.mark.slow
def test_a_driver_killed_before_during_and_after_the_delta_commit_publishes_once(
    tmp_path, drivers, monkeypatch
):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *SLOW_DELTA]
    log = out / "scores" / "_delta_log"

    # (1) Shards committed, no Delta commit yet: killed mid-run.
    first = drivers.start(*command)
    wait_for(lambda: commits(out) >= 1, 180, "the first commit")
    drivers.signal(first, signal.SIGSTOP)
    assert commits(out) < TOTAL_SHARDS, "the run ended before it could be killed mid-run"
    drivers.signal(first, signal.SIGKILL)
    drivers.wait(first, 30)
    assert not log.exists(), "a killed run published"

    # (2) During the Delta commit: stopped with the table read and the commit not made, killed,
    # and the torn log entry a kill mid-write leaves (object_store stages it as NAME#n) planted.
    monkeypatch.setenv(PAUSE_ENV, "publish")
    second = drivers.start(*command)
    wait_for(lambda: stopped(second), 180, "the driver stopped before its Delta commit")
    drivers.signal(second, signal.SIGKILL)
    drivers.wait(second, 30)
    log.mkdir(parents=True, exist_ok=True)
    (log / "00000000000000000000.json#1").write_text('{"commitInfo":{"timestamp":17')

    # (3) After the Delta commit, before the run stats: the table holds everything once.
    monkeypatch.setenv(PAUSE_ENV, "published")
    third = drivers.start(*command)
    wait_for(lambda: stopped(third), 180, "the driver stopped after its Delta commit")
    drivers.signal(third, signal.SIGKILL)
    drivers.wait(third, 30)
    assert DeltaTable(str(out / "scores")).version() == 0
    assert_once(history, _table(out))

    monkeypatch.delenv(PAUSE_ENV)
    last = drivers.start(*command)
    code, stdout, stderr = drivers.wait(last, 180)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["shards_skipped"] == TOTAL_SHARDS and summary["delta_version"] == 0
    assert DeltaTable(str(out / "scores")).version() == 0
    assert_once(history, _table(out))


def test_a_parquet_run_refuses_a_delta_output_and_the_format_key_is_checked(tmp_path):
    history = make_history(tmp_path / "in", sessions=1_000, files=1, days=1, row_group_rows=500)
    out = tmp_path / "out"
    score(str(history), str(out), format="delta")
    with pytest.raises(OutputConflictError, match="Delta table: pass --format delta"):
        score(str(history), str(out))
    with pytest.raises(ConfigError, match="format: must be one of parquet, delta, iceberg"):
        JobConfig(format="orc")
    config = tmp_path / "job.toml"
    config.write_text('format = "delta"\n')
    result = CliRunner().invoke(
        cli, ["score", str(history), str(out), "--config", str(config), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["delta_version"] == 0
    bad = CliRunner().invoke(cli, ["score", str(history), str(out), "--format", "orc"])
    assert bad.exit_code == 2 and "--format" in bad.output
