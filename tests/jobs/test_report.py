"""`scorer report` over a fake OUTPUT tree laid out exactly as docs/output.md says.

The tree is `support.output_tree`'s: scores, shard stats, run stats and the calibration table
of two runs (the latest labelled, with drift over three days; an older one unlabelled), so the
report's numbers can be recomputed here from the same data, and with `add_monitoring` what the
report reads over time (drift tables of both runs, a later `scorer evaluate` run's calibration).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.output_tree import (
    DAYS,
    DRIFT_COLUMNS,
    EVAL_RUN,
    OLD_RUN,
    RUN,
    SHARD_ROWS,
    SHARDS_PER_DAY,
    FakeOutput,
    add_monitoring,
    make_output_tree,
)

from scorer import metrics
from scorer.cli import cli
from scorer.config import DEFAULT_ALERT_ECE, DEFAULT_ALERT_PSI, MonitorConfig
from scorer.errors import ReportError
from scorer.jobs.report import build_report, read_report
from scorer.jobs.report.contents import HISTOGRAM_BINS
from scorer.pipeline.stats import STAGES


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
    assert over_time[2]["ece_width_calibrated"] > DEFAULT_ALERT_ECE
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
    strict = read_report(monitored.root, monitor=MonitorConfig(psi=0.005, ece=0.001))
    default = read_report(monitored.root)
    assert strict.drift == default.drift
    assert strict.calibration_over_time == default.calibration_over_time
    assert (strict.monitor.psi, default.monitor.psi) == (0.005, DEFAULT_ALERT_PSI)


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
