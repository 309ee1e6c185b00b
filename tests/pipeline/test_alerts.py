"""Alerts from drift and calibration tables, `[monitor]` thresholds, and exit 3 after a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import scorer
from scorer.cli import cli
from scorer.config import DEFAULT_ALERT_PSI, MonitorConfig, load_config
from scorer.errors import EXIT_ALERT, ConfigError, exit_code
from scorer.jobs.generate import generate
from scorer.metrics import CalibrationState, calibration_table
from scorer.model.drift import drift_schema
from scorer.pipeline import layout
from scorer.pipeline.alerts import (
    RecalibrateHint,
    calibration_alerts,
    drift_alerts,
    run_alerts,
)
from scorer.storage import resolve

HINT = RecalibrateHint(data="history/", model="models/intent-v1", out="models/new")

DRIFT_SCHEMA = drift_schema()  # the table every score run writes


def drift_row(dt, column="page_value", *, scope="partition", rows=10_000, **figures):
    kind = "categorical" if column == "browser" else "numeric"
    return {
        "run_id": "r1",
        "scope": scope,
        "dt": dt,
        "column": column,
        "kind": kind,
        "reference": "month=Nov",
        "rows": rows,
        "psi": figures.get("psi", 0.01),
        "share_missing": figures.get("share_missing", 0.0),
        "share_invalid": figures.get("share_invalid", 0.0),
        "share_unseen": figures.get("share_unseen", 0.0 if kind == "categorical" else None),
        "mean": None if kind == "categorical" else 1.0,
        "reference_mean": None if kind == "categorical" else 1.0,
    }


def drift_table(*rows):
    return pa.Table.from_pylist(list(rows), schema=DRIFT_SCHEMA)


def test_a_breach_prints_the_agreed_line():
    table = drift_table(
        drift_row("2026-11-26"),
        drift_row("2026-11-27", psi=0.4123),
        drift_row(None, scope="overall", psi=0.3),
    )
    [alert] = drift_alerts(table, MonitorConfig())
    assert (alert.kind, alert.dt, alert.column, alert.metric) == (
        "drift",
        "2026-11-27",
        "page_value",
        "psi",
    )
    assert (alert.value, alert.threshold) == (0.4123, DEFAULT_ALERT_PSI)
    assert alert.message.startswith(
        "ALERT drift dt=2026-11-27 page_value: psi 0.4123 > 0.25 — this input no longer looks "
        "like the training data (month=Nov)"
    )
    assert set(alert.to_dict()) == {
        "kind",
        "dt",
        "column",
        "metric",
        "value",
        "threshold",
        "message",
    }


def test_unseen_invalid_and_missing_shares_raise_their_kinds():
    table = drift_table(
        drift_row("2026-11-27", "browser", share_unseen=0.3),
        drift_row("2026-11-27", "bounce_rate", share_invalid=0.02),
        drift_row("2026-11-27", "exit_rate", share_missing=0.5),
    )
    alerts = drift_alerts(table, MonitorConfig())
    assert [(a.kind, a.column, a.metric) for a in alerts] == [
        ("unseen", "browser", "share_unseen"),
        ("invalid", "bounce_rate", "share_invalid"),
        ("invalid", "exit_rate", "share_missing"),
    ]
    assert alerts[0].message.startswith(
        "ALERT unseen dt=2026-11-27 browser: share_unseen 0.3 > 0.05"
    )


def test_psi_of_a_small_day_is_noise_but_its_shares_are_not():
    table = drift_table(drift_row("2026-11-27", rows=50, psi=3.0, share_invalid=1.0))
    assert [a.kind for a in drift_alerts(table, MonitorConfig())] == ["invalid"]
    assert [a.kind for a in drift_alerts(table, MonitorConfig(min_rows=10))] == ["drift", "invalid"]


def test_null_figures_and_an_infinite_threshold_raise_nothing():
    table = drift_table(drift_row("2026-11-27", psi=None), drift_row("2026-11-26", psi=9.0))
    assert len(drift_alerts(table, MonitorConfig())) == 1
    assert drift_alerts(table, MonitorConfig(psi=float("inf"))) == []


def test_without_dt_the_overall_row_alerts_once():
    table = drift_table(drift_row(None, psi=0.9), drift_row(None, scope="overall", psi=0.9))
    [alert] = drift_alerts(table, MonitorConfig())
    assert alert.dt is None and alert.message.startswith("ALERT drift dt=all page_value: psi 0.9")


def calibration(days: dict[str | None, float], rows: int = 6_000) -> pa.Table:
    """A calibration table whose days have scores `p` against a 10% observed rate."""
    rng = np.random.default_rng(0)
    states = {}
    for day, p in days.items():
        labels = rng.random(rows) < 0.1
        scores = np.full(rows, p, dtype=np.float32)
        states[day] = CalibrationState.from_arrays(labels, scores, scores)
    return calibration_table("r1", states)


def test_calibration_alerts_carry_one_calibrate_command_over_the_breached_days():
    table = calibration({"2026-11-25": 0.4, "2026-11-26": 0.1, "2026-11-27": 0.35})
    alerts = calibration_alerts(table, MonitorConfig(), HINT)
    assert [a.dt for a in alerts] == ["2026-11-25", "2026-11-27"]
    command = (
        "scorer calibrate history/ --model models/intent-v1 --out models/new "
        "--since 2026-11-25 --until 2026-11-27"
    )
    for alert in alerts:
        assert alert.kind == "calibration" and alert.column == "intent_calibrated"
        assert alert.metric == "ece_width" and alert.value > 0.2
        assert alert.message.endswith(command)
    assert alerts[0].message.startswith(
        "ALERT calibration dt=2026-11-25 intent_calibrated: ece_width 0."
    )


def test_calibration_of_too_few_labelled_rows_raises_nothing():
    table = calibration({"2026-11-27": 0.5}, rows=100)
    assert calibration_alerts(table, MonitorConfig(), HINT) == []
    assert len(calibration_alerts(table, MonitorConfig(min_rows=100), HINT)) == 1


def test_calibration_without_dt_refits_on_all_of_the_data():
    [alert] = calibration_alerts(calibration({None: 0.5}), MonitorConfig(), HINT)
    assert alert.dt is None and "dt=all" in alert.message
    assert alert.message.endswith("--out models/new")


def test_exit_1_beats_3_and_3_needs_the_flag():
    alerts = calibration_alerts(calibration({"2026-11-27": 0.5}), MonitorConfig(), HINT)
    assert exit_code(0, alerts, fail_on_alert=True) == EXIT_ALERT == 3
    assert exit_code(1, alerts, fail_on_alert=True) == 1
    assert exit_code(0, alerts, fail_on_alert=False) == 0
    assert exit_code(0, [], fail_on_alert=True) == 0


def test_run_alerts_read_the_runs_tables_and_a_missing_table_is_no_error(tmp_path):
    output = resolve(tmp_path)
    assert run_alerts(output, "r1", MonitorConfig(), HINT) == []
    path = tmp_path / layout.run_table_relpath(layout.DRIFT, "r1")
    path.parent.mkdir(parents=True)
    pq.write_table(drift_table(drift_row("2026-11-27", psi=1.0)), path)
    assert [a.kind for a in run_alerts(output, "r1", MonitorConfig(), HINT)] == ["drift"]
    path = tmp_path / layout.run_table_relpath(layout.CALIBRATION, "r1")
    path.parent.mkdir(parents=True)
    pq.write_table(calibration({"2026-11-27": 0.5}), path)
    kinds = [a.kind for a in run_alerts(output, "r1", MonitorConfig(), HINT)]
    assert kinds == ["drift", "calibration"]


# -- [monitor] in the TOML config ------------------------------------------------------------


def test_monitor_thresholds_are_read_from_the_config(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(
        "[monitor]\npsi = 0.3\nshare_unseen = 0.1\nmin_rows = 10\nfail_on_alert = true\n"
    )
    monitor = load_config(path).monitor
    assert (monitor.psi, monitor.share_unseen, monitor.min_rows, monitor.fail_on_alert) == (
        0.3,
        0.1,
        10,
        True,
    )
    assert monitor.ece == MonitorConfig().ece
    flagged = load_config(path).with_overrides(monitor__psi=0.5)
    assert flagged.monitor.psi == 0.5 and flagged.monitor.min_rows == 10


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("[monitor]\npsi_max = 1\n", "unknown key 'monitor.psi_max'"),
        ("[monitor]\npsi = 'high'\n", "'monitor.psi' must be a number"),
        ("[monitor]\nece = -0.1\n", "monitor.ece: must be a number >= 0"),
        ("[monitor]\nmin_rows = 1.5\n", "'monitor.min_rows' must be an integer"),
        ("monitor = 3\n", "'monitor' must be a table [monitor]"),
    ],
)
def test_a_bad_monitor_key_is_an_error_naming_it(tmp_path, body, key):
    path = tmp_path / "job.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ") and key in str(caught.value)


# -- after a real `scorer score` run ----------------------------------------------------------


def score(*args):
    return CliRunner().invoke(cli, ["score", *map(str, args), "--json"])


def test_a_clean_labelled_run_raises_no_alert(tmp_path):
    generate(tmp_path / "history", sessions=12_000, files=2, days=2, seed=3)
    result = score(tmp_path / "history", tmp_path / "out", "--fail-on-alert")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["alerts"] == [] and summary["exit_code"] == 0
    assert "ALERT" not in result.stderr


def test_a_funnel_run_exits_3_once_written_and_a_failed_shard_exit_1_wins(tmp_path):
    history = tmp_path / "funnel"
    generate(history, sessions=12_000, files=2, days=2, seed=4, conversion_rate=0.015)
    result = score(history, tmp_path / "out", "--fail-on-alert")
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 3 and summary["shards_failed"] == 0
    assert {a["kind"] for a in summary["alerts"]} == {"calibration"}
    assert (
        tmp_path / "out" / layout.run_table_relpath(layout.CALIBRATION, summary["run_id"])
    ).exists()
    lines = [line for line in result.stderr.splitlines() if line.startswith("ALERT calibration")]
    assert len(lines) == 2 and f"scorer calibrate {history} --model " in lines[0]

    # A file whose footer cannot be read fails its shard: exit 1, the alerts still reported.
    day = sorted(history.iterdir())[-1]
    (day / "broken.parquet").write_bytes(b"not parquet at all")
    result = score(history, tmp_path / "out-2", "--fail-on-alert")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["exit_code"] == 1 and summary["shards_failed"] == 1
    assert {a["kind"] for a in summary["alerts"]} == {"calibration"}


def test_a_dry_run_has_no_alerts(tmp_path):
    generate(tmp_path / "history", sessions=2_000, files=1, days=1, seed=3)
    result = score(tmp_path / "history", tmp_path / "out", "--dry-run", "--fail-on-alert")
    assert result.exit_code == 0 and json.loads(result.stdout)["alerts"] == []


def test_the_library_and_the_nightly_job_raise_the_alerts_and_exit_3_as_the_cli_does(tmp_path):
    history = tmp_path / "funnel"
    generate(history, sessions=12_000, files=2, days=2, seed=4, conversion_rate=0.015)
    summary = scorer.score(history, tmp_path / "out", monitor__fail_on_alert=True)
    assert {a.kind for a in summary.alerts} == {"calibration"} and summary.exit_code == 3

    config = tmp_path / "nightly.toml"
    config.write_text(
        f'input = "{history}"\noutput = "{tmp_path / "nightly"}"\n[monitor]\nfail_on_alert = true\n'
    )
    job = subprocess.run(
        [
            sys.executable,
            "jobs/nightly_backfill.py",
            "--config",
            str(config),
            "--date",
            "2026-11-27",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert job.returncode == 3, job.stderr
    assert "ALERT calibration dt=2026-11-27 intent_calibrated:" in job.stderr
    assert json.loads(job.stdout)["exit_code"] == 3
