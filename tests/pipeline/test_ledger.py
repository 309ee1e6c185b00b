"""The run's bookkeeping (`ledger.Ledger`) against the stats schemas, the tables it writes read
back as one dataset, the retry decision, the options digest and the storage-error mapping."""

from __future__ import annotations

import datetime as dt

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from support.inputs import make_history

from scorer.errors import ShardError, ShardReadError, StorageError
from scorer.metrics import CalibrationState
from scorer.model.runtime import load_model
from scorer.model.sessions import load_bundled_sessions
from scorer.pipeline import layout
from scorer.pipeline.ledger import Ledger, RunInfo, RunSummary
from scorer.pipeline.manifest import options_digest
from scorer.pipeline.outcome import ShardOutcome
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.plan import FailedInput
from scorer.pipeline.retry import Failure, commit_failure, will_retry
from scorer.pipeline.scan import scan_inputs
from scorer.pipeline.stats import (
    RUN_STATS_SCHEMA,
    SHARD_STATS_SCHEMA,
    STAGES,
    stats_table,
)
from scorer.storage import foreign_errors, resolve

NOW = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    source = make_history(tmp_path_factory.mktemp("ledger") / "in", sessions=8_000)
    return plan_shards(scan_inputs(resolve(source)), 2_000).shards


def _ledger(run_id):
    summary = RunSummary(run_id=run_id, status="completed", input="in", output="out")
    info = RunInfo(NOW, 1_000, 2_000, "intent", "1.0", "a" * 64)
    return Ledger(summary, info, load_model().card.reference)


def _drift(rows):
    sessions = load_bundled_sessions().slice(0, rows)
    return load_model().score_batch(sessions, drift=True).drift


def _outcome(shard, labelled=True):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    probs = pa.array(rng.random(shard.rows), pa.float32())
    labels = pa.array(rng.random(shard.rows) < 0.2)
    return ShardOutcome(
        shard_id=shard.shard_id,
        rows=shard.rows,
        rows_ok=shard.rows - 3,
        rows_invalid=3,
        output_bytes=1234,
        seconds={**dict.fromkeys(STAGES, 0.25), "total": 0.8, "cpu": 1.5},
        calibration=CalibrationState.from_arrays(labels, probs, probs) if labelled else None,
        drift=_drift(shard.rows),
        actor_id="a1",
        node_id="n1",
        node_ip="127.0.0.1",
        pid=42,
        started_at=NOW,
        ended_at=NOW,
    )


def _run(ledger, shards):
    first, second, third, fourth = shards[:4]
    ledger.skipped(first)
    ledger.committed(second, 1, _outcome(second))
    ledger.failed(third, 1, "actor died: gone", NOW, final=False)
    ledger.committed(third, 2, _outcome(third))
    ledger.interrupted(fourth, 1, NOW)
    ledger.failed_input(FailedInput("/in/bad.parquet", "bad.parquet", (), 10, "unreadable"))
    ledger.close(started=0.0, work=(1.0, 3.0))


def test_shard_rows_fit_the_shard_stats_schema(shards):
    ledger = _ledger("r1")
    _run(ledger, shards)
    for row in ledger.shard_stats:
        assert set(row) <= set(SHARD_STATS_SCHEMA.names)  # no column spelled wrong, then dropped
    table = stats_table(ledger.shard_stats, SHARD_STATS_SCHEMA)
    assert table.schema == SHARD_STATS_SCHEMA
    statuses = table["status"].to_pylist()
    assert statuses == ["skipped", "committed", "failed", "committed", "interrupted", "failed"]
    committed = table.filter(ds.field("status") == "committed")
    assert committed["read_seconds"].to_pylist() == [0.25, 0.25]
    assert committed["rows"].to_pylist() == [shards[1].rows, shards[2].rows]


def test_the_summary_counts_what_the_ledger_was_told(shards):
    ledger = _ledger("r1")
    _run(ledger, shards)
    summary = ledger.summary
    assert summary.shards_committed == 2 and summary.rows == shards[1].rows + shards[2].rows
    assert (
        summary.shards_failed == 1 and ledger.attempts_failed == 1
    )  # the retried one is not final
    assert summary.failures == [
        {
            "shard_id": "bad.parquet",
            "input": "/in/bad.parquet",
            "error": "/in/bad.parquet: unreadable",
        }
    ]
    assert summary.status == "failed" and summary.exit_code == 1
    assert summary.stage_seconds == dict.fromkeys(STAGES, 0.5)
    assert summary.cpu_seconds == 3.0 and summary.work_seconds == 2.0
    assert summary.rows_per_node == {"127.0.0.1": summary.rows}
    day = dict(shards[1].partition)["dt"]
    assert set(ledger.calibration) <= {day, dict(shards[2].partition)["dt"]}


def test_the_run_row_fits_the_run_stats_schema(shards):
    ledger = _ledger("r1")
    _run(ledger, shards)
    table = stats_table([ledger.run_row()], RUN_STATS_SCHEMA)
    assert table.schema == RUN_STATS_SCHEMA
    row = table.to_pylist()[0]
    assert row["status"] == "failed" and row["attempts_failed"] == 1
    assert row["model_sha256"] == "a" * 64 and row["started_at"] == NOW
    assert all(row[f"{name}_version"] for name in ("scorer", "ray", "onnxruntime", "pyarrow"))


def test_tables_of_several_runs_read_back_as_one_dataset(shards, tmp_path):
    out = resolve(tmp_path)
    for run_id in ("r1", "r2"):
        ledger = _ledger(run_id)
        _run(ledger, shards)
        ledger.write(out)
        for folder in layout.RUN_TABLES:
            assert (tmp_path / layout.run_table_relpath(folder, run_id)).is_file()
    for folder, schema in (
        (layout.SHARD_STATS, SHARD_STATS_SCHEMA),
        (layout.RUN_STATS, RUN_STATS_SCHEMA),
    ):
        table = pq.read_table(tmp_path / folder)  # hive: run_id from the folders, as written
        assert set(table["run_id"].to_pylist()) == {"r1", "r2"}
        assert table.schema.names == schema.names
    runs = pq.read_table(tmp_path / layout.RUN_STATS)
    assert runs.num_rows == 2
    calibration = pq.read_table(tmp_path / layout.CALIBRATION)
    assert set(calibration["scope"].to_pylist()) == {"partition", "overall"}


def test_an_unlabelled_run_writes_no_calibration(shards, tmp_path):
    ledger = _ledger("r1")
    ledger.committed(shards[0], 1, _outcome(shards[0], labelled=False))
    ledger.close(started=0.0, work=None)
    ledger.write(resolve(tmp_path))
    assert not (tmp_path / layout.CALIBRATION).exists()
    assert ledger.summary.status == "completed" and ledger.summary.work_seconds == 0.0


def test_shard_outputs_and_run_tables_are_named_by_layout():
    assert layout.shard_output_relpath("dt=2026-11-27/a.parquet", 0, 12) == (
        "scores/dt=2026-11-27/a-rg00000-00012.parquet"
    )
    assert layout.shard_output_relpath("x.parquet", 3, 4) == "scores/x-rg00003-00004.parquet"
    assert layout.run_table_relpath(layout.RUN_STATS, "r9") == "stats/runs/run_id=r9/part-0.parquet"
    assert layout.temp_relpath("r9") == "_scorer/tmp/r9"
    assert layout.report_folder("r9") == "reports/r9"


@pytest.mark.parametrize(
    ("failure", "attempt", "expected"),
    [
        (Failure("actor died: x", retryable=True, actor_lost=True), 1, True),
        (Failure("actor died: x", retryable=True, actor_lost=True), 3, False),
        (Failure("bad.parquet: unreadable", retryable=False), 1, False),
        (commit_failure(ShardError("s: wrote 1 rows, expected 2")), 2, True),
    ],
)
def test_a_shard_is_retried_while_retryable_and_attempts_remain(failure, attempt, expected):
    assert will_retry(failure, attempt, max_attempts=3) is expected


def test_a_refused_commit_names_the_error_class():
    assert commit_failure(ShardError("s: overlaps")).error == "ShardError: s: overlaps"


def test_the_options_digest_is_the_one_existing_outputs_hold():
    # Pinned: commit records and output.json of existing OUTPUT folders carry these values.
    assert options_digest("session_id", ()) == "4ce11b7b40af4522"
    assert options_digest("session_id", ["region", "dt"]) == "4acbd6d112923d85"
    assert options_digest("session_id", ("dt", "region")) != options_digest(
        "session_id", ("region", "dt")
    )


def test_storage_errors_map_os_errors_keeping_the_message():
    with pytest.raises(StorageError, match=r"^s3://b/x: cannot delete: nope$") as caught:
        with foreign_errors("s3://b/x", "cannot delete"):
            raise PermissionError("nope")
    assert isinstance(caught.value.__cause__, PermissionError)
    with foreign_errors("p", "cannot delete", missing_ok=True):
        raise FileNotFoundError("gone")
    with pytest.raises(ShardError, match=r"^u: the output is missing: gone$"):
        with foreign_errors("u", "cannot commit", missing=(ShardError, "the output is missing")):
            raise FileNotFoundError("gone")
    with pytest.raises(ShardError, match=r"^p: cannot write: full$"):
        with foreign_errors("p", "cannot write", error=ShardError):
            raise OSError("full")
    with pytest.raises(ShardReadError, match="ours"):  # our own errors pass through
        with foreign_errors("p", "cannot write"):
            raise ShardReadError("ours")
