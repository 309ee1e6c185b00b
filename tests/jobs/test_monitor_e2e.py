"""Trust over time, end to end on generated data (issue 13's "done means"): clean days raise no
alert, a broken day raises the alert that names it and no other day, and the 1.5% funnel scored
without labels, then evaluated with its late labels, asks for the recalibration command that,
run as printed, brings ECE under the threshold on the following days."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import cli
from scorer.config import DEFAULT_ALERT_ECE

pytestmark = pytest.mark.slow

SESSIONS_PER_DAY = 6_000  # above [monitor] min_rows (5,000): every day's PSI and ECE count


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _score(*args: str) -> dict:
    code, out, err = _cli("score", *args, "--json")
    summary = json.loads(out)
    assert code == summary["exit_code"], err
    return summary


def test_thirty_clean_days_are_quiet_and_each_broken_day_is_named_alone(tmp_path):
    days = 32
    code, _, err = _cli(
        "generate", str(tmp_path / "history"), "--sessions", str(SESSIONS_PER_DAY * days),
        "--files", str(days), "--days", str(days), "--seed", "21",
        "--break", "2026-11-10:zero=page_value",
        "--break", "2026-11-20:unseen=browser:0.3",
    )  # fmt: skip
    assert code == 0, err
    summary = _score(str(tmp_path / "history"), str(tmp_path / "scored"))
    assert summary["exit_code"] == 0 and summary["drift_path"]

    raised = {(a["kind"], a["dt"], a["column"]) for a in summary["alerts"]}
    assert {a[1] for a in raised} == {"2026-11-10", "2026-11-20"}  # the 30 clean days: none
    assert ("drift", "2026-11-10", "page_value") in raised
    assert ("unseen", "2026-11-20", "browser") in raised
    on_the_zeroed_day = {column for kind, dt, column in raised if dt == "2026-11-10"}
    # The score follows page_value (its largest weight), so it drifts and miscalibrates too.
    assert on_the_zeroed_day <= {"page_value", "intent_calibrated"}
    assert {column for _, dt, column in raised if dt == "2026-11-20"} == {"browser"}


def _split_labels(history: Path, to: Path, since: str, until: str) -> None:
    """The days ``since``..``until`` of a generated history as sessions without their label
    (``to/sessions``), and the label apart (``to/labels``), as it arrives days later."""
    sessions, labels = to / "sessions", to / "labels"
    for path in sorted(history.rglob("*.parquet")):
        if not f"dt={since}" <= path.parent.name <= f"dt={until}":
            continue
        table = pq.read_table(path)
        for root, columns in (
            (sessions, [c for c in table.column_names if c != "converted"]),
            (labels, ["session_id", "converted"]),
        ):
            target = root / path.relative_to(history)
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.select(columns), target)


def test_the_funnel_asks_for_the_recalibration_that_fixes_the_following_days(tmp_path):
    code, _, err = _cli(
        "generate", str(tmp_path / "funnel"), "--sessions", str(SESSIONS_PER_DAY * 8),
        "--files", "8", "--days", "8", "--seed", "22", "--conversion-rate", "0.015",
    )  # fmt: skip
    assert code == 0, err
    first, later = tmp_path / "first", tmp_path / "later"
    _split_labels(tmp_path / "funnel", first, "2026-11-20", "2026-11-23")
    _split_labels(tmp_path / "funnel", later, "2026-11-24", "2026-11-27")

    # Nights 1-4: scored without labels; their labels arrive and are evaluated.
    assert _score(str(first / "sessions"), str(first / "scored"))["alerts"] == []
    code, out, err = _cli(
        "evaluate", str(first / "scored"), str(first / "labels"), "--fail-on-alert", "--json"
    )
    assert code == 3, err
    evaluation = json.loads(out)
    calibration = [a for a in evaluation["alerts"] if a["kind"] == "calibration"]
    assert sorted(a["dt"] for a in calibration) == [f"2026-11-{d}" for d in (20, 21, 22, 23)]
    command = calibration[0]["message"].rpartition("refit the calibrator on these days: ")[2]
    assert command.startswith(f"scorer calibrate {first / 'sessions'} --labels {first / 'labels'}")

    # The command, run as printed (in OUTPUT's parent, where its --out lands).
    argv = shlex.split(command)
    out_dir = tmp_path / argv[argv.index("--out") + 1]
    argv[argv.index("--out") + 1] = str(out_dir)
    code, _, err = _cli(*argv[1:])
    assert code == 0, err

    # Nights 5-8 with the recalibrated model: their late labels find it calibrated.
    summary = _score(str(later / "sessions"), str(later / "scored"), "--model", str(out_dir))
    assert summary["alerts"] == []
    code, out, err = _cli("evaluate", str(later / "scored"), str(later / "labels"), "--json")
    assert code == 0, err
    evaluation = json.loads(out)
    assert evaluation["alerts"] == []
    written = pq.read_table(evaluation["calibration_path"]).to_pylist()
    days = [row for row in written if row["scope"] == "partition"]
    assert len(days) == 4
    assert all(row["ece_width_calibrated"] < DEFAULT_ALERT_ECE for row in days)
