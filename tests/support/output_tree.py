"""A fake OUTPUT tree laid out exactly as docs/output.md says, and the truth it was made from.

`make_output_tree` writes scores, shard stats, run stats and the calibration table of two runs
(the latest labelled, with drift over three days; an older one unlabelled), so a report's
numbers can be recomputed from the same data. `add_monitoring` adds what the report reads over
time: hand-made drift tables of both runs (the agreed drift schema, as `scorer score` writes it)
and the calibration table of a later `scorer evaluate` run. The report's tests and the docs'
query examples both read it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scorer import metrics
from scorer.metrics import CalibrationState
from scorer.model.drift import drift_schema
from scorer.pipeline.stats import RUN_STATS_SCHEMA, SHARD_STATS_SCHEMA, stats_table

RUN = "20261128T010203Z-a1b2c3"
OLD_RUN = "20261127T010203Z-d4e5f6"
EVAL_RUN = "20261130T090000Z-e7f8a9"  # a `scorer evaluate` run: calibration, no run stats
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
DRIFT = (1.0, 0.6, 0.3)  # the conversion rate falls each day: calibrated scores grow too high
SHARDS_PER_DAY = 2
SHARD_ROWS = 500
ACTORS = ("actor-0", "actor-1")
MODEL = "intent-1.0.0"
T0 = dt.datetime(2026, 11, 28, 1, 2, 3)


@dataclass(frozen=True)
class FakeOutput:
    """A fake OUTPUT and the truth it was made from."""

    root: Path
    scores: pa.Table  # the latest run's rows, with dt and the label `converted` beside them
    shards: pa.Table  # the latest run's shard stats


def _dict(value: str, n: int) -> pa.DictionaryArray:
    return pa.array([value] * n).dictionary_encode()


def _scores(rng, run_id: str, first_id: int, n: int, drift: float) -> tuple[pa.Table, np.ndarray]:
    raw = rng.beta(1.2, 5.0, n).astype(np.float32)
    calibrated = np.clip(raw * 1.1, 0, 1).astype(np.float32)
    labels = rng.random(n) < raw * drift
    invalid = rng.random(n) < 0.05
    status = np.where(invalid, "missing:page_value", "ok")
    table = pa.table(
        {
            "session_id": pa.array(np.arange(first_id, first_id + n), pa.int64()),
            "intent_raw": pa.array(raw, mask=invalid),
            "intent_calibrated": pa.array(calibrated, mask=invalid),
            "status": pa.array(status).dictionary_encode(),
            "model_version": _dict(MODEL, n),
            "run_id": _dict(run_id, n),
        }
    )
    return table, labels


def _shard_stat(
    run_id,
    shard_id,
    path,
    rows,
    actor,
    attempt,
    status,
    start,
    *,
    error=None,
    seconds=(0.2, 0.3, 0.9, 0.1),
):
    total = sum(seconds) + 0.05
    return {
        "run_id": run_id,
        "shard_id": str(shard_id),
        "input_path": path,
        "row_group_start": 0,
        "row_group_stop": 1,
        "rows": rows,
        "rows_ok": rows,
        "rows_invalid": 0,
        "read_seconds": seconds[0],
        "encode_seconds": seconds[1],
        "infer_seconds": seconds[2],
        "write_seconds": seconds[3],
        "total_seconds": total,
        "actor_id": actor,
        "node_id": "node-a",
        "pid": 4242,
        "attempt": attempt,
        "started_at": start,
        "ended_at": start + dt.timedelta(seconds=total),
        "status": status,
        "error": error,
    }


def _run_stat(run_id, start, rows, wall, committed, skipped, failed) -> dict:
    return {
        "run_id": run_id,
        "started_at": start,
        "ended_at": start + dt.timedelta(seconds=wall),
        "wall_seconds": wall,
        "setup_seconds": 1.5,
        "rows": rows,
        "rows_per_second": rows / wall,
        "shards_committed": committed,
        "shards_skipped": skipped,
        "shards_failed": failed,
        "actors": len(ACTORS),
        "cpus": 2,
        "nodes": 1,
        "batch_rows": 256,
        "shard_rows": SHARD_ROWS,
        "model_version": MODEL,
        "model_sha256": "0" * 64,
        "scorer_version": "0.1.0",
        "ray_version": "2.60.0",
        "onnxruntime_version": "1.31.0",
        "pyarrow_version": pa.__version__,
    }


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def make_output_tree(root: Path, seed: int = 0) -> FakeOutput:
    """Write a fake OUTPUT under root (docs/output.md layout) and return what it holds."""
    rng = np.random.default_rng(seed)
    scored, shard_stats, states = [], [], {}
    shard_id = 0
    for day, drift in zip(DAYS, DRIFT):
        for k in range(SHARDS_PER_DAY):
            table, labels = _scores(rng, RUN, shard_id * SHARD_ROWS, SHARD_ROWS, drift)
            path = f"dt={day}/sessions-{k}.parquet"
            _write(table, root / "scores" / f"dt={day}" / f"sessions-{k}-0000.parquet")
            # Each shard ships a state; the driver merges them per partition.
            state = CalibrationState.from_arrays(
                labels, table["intent_raw"], table["intent_calibrated"]
            )
            states[day] = states[day].merge(state) if day in states else state
            scored.append(
                table.append_column("dt", pa.array([day] * SHARD_ROWS)).append_column(
                    "converted", pa.array(labels)
                )
            )
            start = T0 + dt.timedelta(seconds=2 + shard_id)
            actor = ACTORS[shard_id % 2]
            if shard_id == 3:  # a failed first attempt, retried on the other actor
                shard_stats.append(
                    _shard_stat(
                        RUN,
                        shard_id,
                        path,
                        0,
                        "actor-1",
                        1,
                        "failed",
                        start,
                        error="ActorDiedError: killed",
                        seconds=(0.2, 0.1, 0.0, 0.0),
                    )
                )
                actor = "actor-0"
            attempt = 2 if shard_id == 3 else 1
            shard_stats.append(
                _shard_stat(RUN, shard_id, path, SHARD_ROWS, actor, attempt, "committed", start)
            )
            shard_id += 1

    # One file committed by the older run and skipped by the latest: its rows carry OLD_RUN.
    old, _ = _scores(rng, OLD_RUN, 10**6, 300, 1.0)
    _write(old, root / "scores" / f"dt={DAYS[0]}" / "archive-0-0000.parquet")
    old_path = f"dt={DAYS[0]}/archive-0.parquet"
    old_start = T0 - dt.timedelta(days=1)
    shard_stats.append(_shard_stat(RUN, shard_id, old_path, 300, None, 0, "skipped", T0))
    old_shard = _shard_stat(OLD_RUN, 0, old_path, 300, "actor-0", 1, "committed", old_start)
    _write(
        stats_table([old_shard], SHARD_STATS_SCHEMA),
        root / "stats" / "shards" / f"run_id={OLD_RUN}" / "part-0.parquet",
    )
    _write(
        stats_table([_run_stat(OLD_RUN, old_start, 300, 4.0, 1, 0, 0)], RUN_STATS_SCHEMA),
        root / "stats" / "runs" / f"run_id={OLD_RUN}" / "part-0.parquet",
    )

    shards = stats_table(shard_stats, SHARD_STATS_SCHEMA)  # exactly the scorer's schemas
    rows = len(DAYS) * SHARDS_PER_DAY * SHARD_ROWS
    _write(shards, root / "stats" / "shards" / f"run_id={RUN}" / "part-0.parquet")
    _write(
        stats_table([_run_stat(RUN, T0, rows, 9.5, shard_id, 1, 0)], RUN_STATS_SCHEMA),
        root / "stats" / "runs" / f"run_id={RUN}" / "part-0.parquet",
    )
    _write(
        metrics.calibration_table(RUN, states),
        root / "calibration" / f"run_id={RUN}" / "part-0.parquet",
    )
    return FakeOutput(root, pa.concat_tables(scored), shards)


DRIFT_SCHEMA = drift_schema()  # the table every score run writes
DRIFT_ROWS = 6_000  # a day's rows: above [monitor] min_rows (5,000), so its PSI counts
EVALUATED_ROWS = 6_000  # labelled rows of the evaluated day: above min_rows, its ECE counts
DRIFT_COLUMNS = {  # a few inputs in card order, then the score; month's PSI is not computed
    "page_value": "numeric",
    "exit_rate": "numeric",
    "month": "categorical",
    "browser": "categorical",
    "weekend": "boolean",
    "intent_calibrated": "score",
}


def drift_table(run_id: str, days: dict[str, dict[str, dict]]) -> pa.Table:
    """A drift table of the agreed schema: per day, per column overrides of clean figures."""
    records = []
    for scope, day in [*(("partition", d) for d in days), ("overall", None)]:
        for column, kind in DRIFT_COLUMNS.items():
            record = {
                "run_id": run_id, "scope": scope, "dt": day, "column": column, "kind": kind,
                "reference": "month=Nov", "rows": DRIFT_ROWS, "share_missing": 0.0,
                "share_invalid": 0.0, "psi": None if column == "month" else 0.01,
                "share_unseen": 0.0 if kind == "categorical" else None,
                "mean": None if kind == "categorical" else 0.5,
                "reference_mean": None if kind == "categorical" else 0.5,
            }  # fmt: skip
            records.append(record | days.get(day, {}).get(column, {}))
    return pa.Table.from_pylist(records, schema=DRIFT_SCHEMA)


def add_monitoring(root: Path, seed: int = 1) -> None:
    """Drift tables of OLD_RUN (every day) and RUN (the last two, so newer there), and an
    evaluate run's calibration of the last day with late labels of a funnel gone wrong."""
    old = {day: {"page_value": {"psi": 0.9}} for day in DAYS}
    new = {
        DAYS[1]: {"page_value": {"psi": 0.02}},
        DAYS[2]: {
            "page_value": {"psi": 3.0, "mean": 0.0},
            "browser": {"psi": 0.4, "share_unseen": 0.3},
            "exit_rate": {"share_missing": 0.2},
        },
    }
    for run_id, days in ((OLD_RUN, old), (RUN, new)):
        _write(drift_table(run_id, days), root / "drift" / f"run_id={run_id}" / "part-0.parquet")
    rng = np.random.default_rng(seed)
    raw = rng.beta(1.2, 5.0, EVALUATED_ROWS)
    labels = rng.random(EVALUATED_ROWS) < raw * 0.2
    state = CalibrationState.from_arrays(labels, raw, raw)
    evaluation = metrics.calibration_table(EVAL_RUN, {DAYS[2]: state})
    # Evaluate runs name the run they evaluated in a column of their own.
    evaluation = evaluation.append_column(
        "scored_run_ids", pa.array([[RUN]] * evaluation.num_rows, pa.list_(pa.string()))
    )
    _write(evaluation, root / "calibration" / f"run_id={EVAL_RUN}" / "part-0.parquet")
