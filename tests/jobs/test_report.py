"""`scorer report` over a fake OUTPUT tree laid out exactly as docs/output.md says.

`make_output_tree` writes scores, shard stats, run stats and the calibration table of two runs
(the latest labelled, with drift over three days; an older one unlabelled), so the report's
numbers can be recomputed here from the same data. `add_monitoring` adds what the report reads
over time: hand-made drift tables of both runs (the agreed drift schema, as `scorer score`
writes it) and the calibration table of a later `scorer evaluate` run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer import metrics
from scorer.cli import cli
from scorer.jobs.report import (
    ECE_THRESHOLD,
    HISTOGRAM_BINS,
    PSI_THRESHOLD,
    STAGES,
    ReportError,
    build_report,
    read_report,
)
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
                "reference": "month=Nov", "rows": 1000, "share_missing": 0.0,
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
    raw = rng.beta(1.2, 5.0, 2000)
    labels = rng.random(2000) < raw * 0.2
    state = CalibrationState.from_arrays(labels, raw, raw)
    evaluation = metrics.calibration_table(EVAL_RUN, {DAYS[2]: state})
    # Evaluate runs name the run they evaluated in a column of their own.
    evaluation = evaluation.append_column(
        "scored_run_ids", pa.array([[RUN]] * evaluation.num_rows, pa.list_(pa.string()))
    )
    _write(evaluation, root / "calibration" / f"run_id={EVAL_RUN}" / "part-0.parquet")


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> FakeOutput:
    return make_output_tree(tmp_path_factory.mktemp("output"))


@pytest.fixture(scope="module")
def built(fake, tmp_path_factory):
    return build_report(fake.root, out_dir=tmp_path_factory.mktemp("report"))


def _valid(table: pa.Table) -> pa.Table:
    return table.filter(pc.is_valid(table["intent_raw"]))


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------


def test_default_run_is_the_latest(built):
    assert built.run_id == RUN
    assert built.run["rows"] == len(DAYS) * SHARDS_PER_DAY * SHARD_ROWS


@pytest.mark.parametrize("scope", ["overall", *DAYS])
def test_calibration_equals_a_recomputation_from_the_scores(built, fake, scope):
    if scope == "overall":
        rows, row = _valid(fake.scores), built.overall
    else:
        rows = _valid(fake.scores.filter(pc.equal(fake.scores["dt"], scope)))
        row = next(r for r in built.partitions if r["dt"] == scope)
    labels = rows["converted"].to_numpy()
    assert row["rows"] == rows.num_rows and row["positives"] == int(labels.sum())
    assert row["rows_null_score"] == sum(
        pc.sum(pc.is_null(fake.scores.filter(pc.equal(fake.scores["dt"], d))["intent_raw"])).as_py()
        for d in (DAYS if scope == "overall" else [scope])
    )
    for score in ("raw", "calibrated"):
        exact = metrics.summary(labels, rows[f"intent_{score}"].to_numpy())
        assert row[f"mean_{score}"] == pytest.approx(exact["mean_score"], rel=1e-9)
        for name in ("brier", "log_loss", "ece_width"):
            assert row[f"{name}_{score}"] == pytest.approx(exact[name], rel=1e-9)
        # Histogram approximations (metrics.CalibrationState.approximation_bounds):
        assert row[f"roc_auc_{score}"] == pytest.approx(exact["roc_auc"], abs=1e-3)
        assert row[f"ece_mass_{score}"] == pytest.approx(exact["ece_mass"], abs=5e-3)
        bins = metrics.reliability_bins(labels, rows[f"intent_{score}"].to_numpy())
        assert row[f"bin_count_{score}"] == bins.count.tolist()


def test_drift_shows_in_the_per_day_rows(built):
    gaps = [r["mean_calibrated"] - r["observed_rate"] for r in built.partitions]
    assert gaps == sorted(gaps) and gaps[-1] > 0.05
    assert [r["dt"] for r in built.partitions] == list(DAYS)


def test_throughput_equals_a_recomputation_from_the_shard_stats(built, fake):
    attempts = fake.shards.filter(pc.not_equal(fake.shards["status"], "skipped"))
    for stage in STAGES:
        assert built.stages[stage] == pytest.approx(pc.sum(attempts[f"{stage}_seconds"]).as_py())
    for actor in built.actors:
        mine = attempts.filter(pc.equal(attempts["actor_id"], actor["actor_id"]))
        committed = mine.filter(pc.equal(mine["status"], "committed"))
        assert actor["rows"] == pc.sum(committed["rows"]).as_py()
        assert actor["shards"] == committed.num_rows
        assert actor["busy_seconds"] == pytest.approx(pc.sum(mine["total_seconds"]).as_py())
        assert actor["rows_per_second"] == pytest.approx(actor["rows"] / actor["busy_seconds"])
    assert sum(a["rows"] for a in built.actors) == built.run["rows"]
    assert [(f["shard_id"], f["attempt"]) for f in built.failed] == [("3", 1)]


def test_score_histogram_counts_only_the_runs_rows(built, fake):
    for score in ("raw", "calibrated"):
        values = _valid(fake.scores)[f"intent_{score}"].to_numpy().astype(np.float64)
        bins = np.minimum(np.floor(values * HISTOGRAM_BINS), HISTOGRAM_BINS - 1).astype(int)
        expected = np.bincount(bins, minlength=HISTOGRAM_BINS)
        np.testing.assert_array_equal(built.histogram[score], expected)


def test_an_unlabelled_run_reports_throughput_without_calibration(fake, tmp_path):
    report = build_report(fake.root, OLD_RUN, tmp_path)
    assert report.calibration == [] and report.overall is None
    # Calibration over time is of every run in OUTPUT, so it is drawn for this one too.
    assert sorted(p.name for p in report.plots) == [
        "calibration_over_time.png",
        "score_histogram.png",
        "throughput.png",
    ]
    assert report.histogram["raw"].sum() > 0


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------


def assert_sensible_pngs(paths: list[Path]) -> None:
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(path).shape
        assert 600 <= width <= 2000 and 400 <= height <= 1500, (path.name, width, height)


def test_plots_are_sensible_pngs(built):
    names = sorted(p.name for p in built.plots)
    assert names == [
        "calibration_by_day.png",
        "calibration_over_time.png",
        "reliability.png",
        "score_histogram.png",
        "throughput.png",
    ]
    assert_sensible_pngs(built.plots)


def test_plots_default_to_the_runs_report_folder(fake):
    report = build_report(fake.root)
    assert {p.parent for p in report.plots} == {fake.root / "reports" / RUN}


# --------------------------------------------------------------------------------------------
# errors and the command
# --------------------------------------------------------------------------------------------


def test_an_unknown_run_is_an_error_naming_the_runs(fake):
    with pytest.raises(ReportError, match=f"--run nope.*{OLD_RUN}, {RUN}"):
        read_report(fake.root, "nope")


def test_an_output_without_runs_is_an_error(tmp_path):
    with pytest.raises(ReportError, match="no run statistics"):
        read_report(tmp_path)


def test_command_prints_tables_with_four_decimal_ece(fake, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(fake.root), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    overall = read_report(fake.root).overall
    assert f"{overall['ece_width_calibrated']:.4f}" in result.output
    for text in (RUN, "Calibration per dt", *DAYS, "Time per stage", "Per actor", "ActorDiedError"):
        assert text in result.output
    assert len(list(tmp_path.glob("*.png"))) == 5
    assert "No drift tables in OUTPUT/drift" in result.output


def test_command_exits_2_with_a_message_for_an_unknown_run(fake):
    result = CliRunner().invoke(cli, ["report", str(fake.root), "--run", "nope"])
    assert result.exit_code == 2
    assert "ReportError: --run nope: no such run" in result.output


def test_command_has_help():
    result = CliRunner().invoke(cli, ["report", "--help"])
    assert result.exit_code == 0
    assert "--run RUN_ID" in result.output and "reliability" in result.output


# --------------------------------------------------------------------------------------------
# drift and calibration over time, across every run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> FakeOutput:
    fake = make_output_tree(tmp_path_factory.mktemp("monitored"))
    add_monitoring(fake.root)
    return fake


def test_an_output_without_drift_tables_reports_without_them(built):
    assert built.drift == [] and built.drift_days == []
    assert "drift_psi.png" not in {p.name for p in built.plots}
    # Calibration over time still reads the one labelled run.
    assert [(r["run_id"], r["dt"]) for r in built.calibration_over_time] == [(RUN, d) for d in DAYS]


def test_the_newest_run_wins_each_days_drift(monitored):
    report = read_report(monitored.root)
    assert report.drift_days == list(DAYS)
    assert report.drift_columns == list(DRIFT_COLUMNS)  # table order, not alphabetical
    by_day = {d: [r for r in report.drift if r["dt"] == d] for d in DAYS}
    assert {d: {r["run_id"] for r in rows} for d, rows in by_day.items()} == {
        DAYS[0]: {OLD_RUN},
        DAYS[1]: {RUN},
        DAYS[2]: {RUN},
    }
    psi = {(r["dt"], r["column"]): r["psi"] for r in report.drift}
    assert [psi[(d, "page_value")] for d in DAYS] == [0.9, 0.02, 3.0]
    assert psi[(DAYS[0], "month")] is None
    assert all(len(rows) == len(DRIFT_COLUMNS) for rows in by_day.values())  # no overall rows


def test_the_newest_evaluation_wins_each_days_calibration(monitored):
    report = read_report(monitored.root)
    assert report.run_id == RUN  # the evaluate run wrote no run stats: still the latest run
    over_time = report.calibration_over_time
    assert [(r["run_id"], r["dt"]) for r in over_time] == [
        (RUN, DAYS[0]),
        (RUN, DAYS[1]),
        (EVAL_RUN, DAYS[2]),
    ]
    evaluation = pq.read_table(
        monitored.root / "calibration" / f"run_id={EVAL_RUN}" / "part-0.parquet"
    ).to_pylist()[0]
    assert over_time[2]["ece_width_calibrated"] == evaluation["ece_width_calibrated"]
    assert over_time[2]["ece_width_calibrated"] > ECE_THRESHOLD
    # The run's own per-day table is unchanged by the later evaluation.
    assert [(r["run_id"], r["dt"]) for r in report.partitions] == [(RUN, d) for d in DAYS]


def test_drift_and_calibration_over_time_plots(monitored, tmp_path):
    report = build_report(monitored.root, out_dir=tmp_path)
    names = {p.name for p in report.plots}
    assert {"drift_psi.png", "calibration_over_time.png"} <= names
    assert_sensible_pngs(report.plots)
    for name in ("drift_psi.png", "calibration_over_time.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_thresholds_mark_but_change_no_number(monitored):
    strict = read_report(monitored.root, psi_threshold=0.005, ece_threshold=0.001)
    default = read_report(monitored.root)
    assert strict.drift == default.drift
    assert strict.calibration_over_time == default.calibration_over_time
    assert (strict.psi_threshold, default.psi_threshold) == (0.005, PSI_THRESHOLD)


def test_command_prints_drift_and_calibration_over_time(monitored, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(monitored.root), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    drift = lines[next(i for i, line in enumerate(lines) if "Drift per dt" in line) :]
    first = next(i for i, line in enumerate(drift) if DAYS[0] in line)
    assert "page_value 0.900 !" in drift[first]
    # A clean day is one line: its highest PSI, unmarked.
    assert "page_value 0.020 " in drift[first + 1] and DAYS[1] in drift[first + 1]
    last = next(i for i, line in enumerate(drift) if DAYS[2] in line)
    for text in ("page_value 3.000 !", "browser 30.0%", "exit_rate 20.0%"):
        assert text in drift[last], drift[last]
    assert "browser 0.400 !" in drift[last + 1]
    assert f"{OLD_RUN} for {DAYS[0]}" in result.output
    assert f"{RUN} for {DAYS[1]}..{DAYS[2]} (2)" in result.output
    calibration = lines[
        next(i for i, line in enumerate(lines) if "Calibration over time" in line) :
    ]
    assert "! " not in next(line for line in calibration if DAYS[0] in line)
    assert "!" in next(line for line in calibration if DAYS[2] in line)
    assert EVAL_RUN in "".join(calibration)
    assert all(len(line) <= 80 for line in lines if not line.startswith("/")), "fits 80 columns"
    assert (tmp_path / "drift_psi.png").exists()
