"""One breach rule for the alerts and the report (`MonitorConfig.breaches`).

A figure breaches when it is above its `[monitor]` threshold, not at it, and PSI and ECE only on
a day of at least ``min_rows`` rows (labelled rows for ECE): below that they are sampling noise.
The alerts of `scorer score` and `scorer evaluate` and the marks of `scorer report` (the "!" of
its tables, the labelled cells of its PSI heatmap, the circled days of its ECE plot) must agree,
so they are checked here on one OUTPUT: per day, a small day above the thresholds, a large day
exactly at them, and a large day above them. Only the last breaches.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import cli
from scorer.config import MonitorConfig
from scorer.jobs.report import read_report
from scorer.jobs.report.plots import plot_calibration_over_time, plot_drift_psi
from scorer.metrics import CalibrationState, calibration_table
from scorer.model.drift import drift_schema
from scorer.pipeline import layout
from scorer.pipeline.alerts import RecalibrateHint, calibration_alerts, drift_alerts
from scorer.pipeline.stats import RUN_STATS_SCHEMA, stats_table

RUN = "20261128T010203Z-a1b2c3"
EVALUATION = "20261130T090000Z-e7f8a9"  # a `scorer evaluate` run: calibration, no run stats
SMALL, AT, ABOVE = "2026-11-01", "2026-11-02", "2026-11-03"
CONFIG = "[monitor]\npsi = 0.25\nece = 0.1\nmin_rows = 1_000\n"
MONITOR = MonitorConfig(psi=0.25, ece=0.1, min_rows=1_000)  # CONFIG's
# Per day: rows (labelled rows for ECE), PSI of page_value, ECE of intent_calibrated.
DAYS = {SMALL: (200, 0.3, 0.3), AT: (10_000, 0.25, 0.1), ABOVE: (10_000, 0.3, 0.3)}
HINT = RecalibrateHint(data="history/", model="models/intent-v1", out="models/new")


def _drift() -> pa.Table:
    figures = [(day, "partition", *DAYS[day][:2]) for day in DAYS]
    figures.append((None, "overall", sum(rows for rows, _, _ in DAYS.values()), 0.1))
    clean = {"column": "page_value", "kind": "numeric", "reference": "month=Nov"}
    clean |= {"share_missing": 0.0, "share_invalid": 0.0, "mean": 0.5, "reference_mean": 0.5}
    records = [
        clean | {"run_id": RUN, "scope": scope, "dt": day, "rows": rows, "psi": psi}
        for day, scope, rows, psi in figures
    ]
    return pa.Table.from_pylist(records, schema=drift_schema())


def _calibration() -> pa.Table:
    """An evaluation of DAYS' labelled rows, its ECE of intent_calibrated set to DAYS' figure."""
    rng = np.random.default_rng(0)
    states = {}
    for day, (rows, _, _) in DAYS.items():
        scores = rng.random(rows)
        states[day] = CalibrationState.from_arrays(rng.random(rows) < scores, scores, scores)
    table = calibration_table(EVALUATION, states)
    ece = [DAYS[day][2] if day is not None else 0.05 for day in table["dt"].to_pylist()]
    column = table.schema.get_field_index("ece_width_calibrated")
    return table.set_column(column, "ece_width_calibrated", pa.array(ece, pa.float64()))


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    """An OUTPUT of one score run's drift over DAYS and a later evaluation of those days."""
    root = tmp_path_factory.mktemp("output")
    start = dt.datetime(2026, 11, 28, 1, 2, 3)
    run = {"run_id": RUN, "started_at": start, "ended_at": start + dt.timedelta(seconds=10)}
    run |= {"wall_seconds": 10.0, "rows": 20_200, "rows_per_second": 2_020.0}
    _write(
        stats_table([run], RUN_STATS_SCHEMA), root / layout.run_table_relpath(layout.RUN_STATS, RUN)
    )
    _write(_drift(), root / layout.run_table_relpath(layout.DRIFT, RUN))
    _write(_calibration(), root / layout.run_table_relpath(layout.CALIBRATION, EVALUATION))
    return root


def test_alerts_are_raised_above_the_threshold_on_days_of_enough_rows():
    assert [a.dt for a in drift_alerts(_drift(), MONITOR)] == [ABOVE]
    assert [a.dt for a in calibration_alerts(_calibration(), MONITOR, HINT)] == [ABOVE]


def _section(lines: list[str], title: str) -> dict[str, str]:
    """The lines of the table titled ``title``, by the day each starts with."""
    first = next(i for i, line in enumerate(lines) if title in line)
    rows = {}
    for line in lines[first:]:
        day = next((day for day in DAYS if day in line), None)
        if day is not None and day not in rows:
            rows[day] = line
    return rows


def test_the_report_marks_what_the_alerts_raise(output, tmp_path):
    """Before the shared rule the report marked ``>=`` and ignored min_rows: all three days."""
    config = tmp_path / "job.toml"
    config.write_text(CONFIG)
    args = ["report", str(output), "--out", str(tmp_path / "plots"), "--config", str(config)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    drift = _section(lines, "Drift per dt")
    assert "page_value 0.300" in drift[SMALL] and "!" not in drift[SMALL]
    assert "page_value 0.250" in drift[AT] and "!" not in drift[AT]
    assert "page_value 0.300 !" in drift[ABOVE]
    calibration = _section(lines, "Calibration over time")
    assert "0.3000" in calibration[SMALL] and "!" not in calibration[SMALL]
    assert "0.1000" in calibration[AT] and "!" not in calibration[AT]
    assert "0.3000 !" in calibration[ABOVE]


def test_the_plots_label_what_the_alerts_raise(output):
    report = read_report(output, monitor=MONITOR)
    assert report.drift_days == list(DAYS)
    heatmap = plot_drift_psi(report).axes[0]
    assert [(t.get_text(), t.get_position()) for t in heatmap.texts] == [("0.30", (2, 0))]
    ece = plot_calibration_over_time(report).axes[0]
    [circled] = [c for c in ece.collections if c.get_label().startswith("ECE >")]
    assert circled.get_label() == "ECE > 0.1, days of 1,000+ rows"
    assert circled.get_offsets()[:, 0].tolist() == [2.0]  # ABOVE's position on the dt axis


@pytest.mark.parametrize(
    ("monitor", "metric", "value", "rows", "breached"),
    [
        (MONITOR, "psi", 0.3, 200, False),  # a small day's PSI is noise
        (MONITOR, "psi", 0.3, 1_000, True),  # min_rows rows are enough
        (MONITOR, "psi", 0.25, 10_000, False),  # at the threshold is no breach
        (MONITOR, "psi", 0.2501, 10_000, True),
        (MONITOR, "ece", 0.3, 999, False),
        (MONITOR, "ece", 0.3, None, False),  # rows unknown: not enough
        (MONITOR, "share_invalid", 1.0, 50, True),  # shares count at any size
        (MONITOR, "share_unseen", 0.05, 50, False),
        (MONITOR, "psi", None, 10_000, False),  # not computed
        (MONITOR, "psi", math.nan, 10_000, False),
        (MonitorConfig(min_rows=0), "psi", 0.3, None, True),
        (MonitorConfig(psi=math.inf), "psi", 1e9, 10_000, False),  # inf: never
    ],
)
def test_a_breach_is_above_the_threshold_on_a_day_of_enough_rows(
    monitor, metric, value, rows, breached
):
    assert monitor.breaches(metric, value, rows) is breached
