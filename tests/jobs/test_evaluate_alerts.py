"""`evaluate()` as a library call checks its days against `[monitor]` as `score()` does: a
notebook gets the alerts and the exit code that `scorer evaluate` prints and exits with."""

from __future__ import annotations

import json

from click.testing import CliRunner

import scorer
from scorer.cli import cli
from scorer.config import MonitorConfig
from scorer.errors import EXIT_ALERT, EXIT_OK
from scorer.jobs.evaluate import evaluate
from scorer.jobs.generate import generate


def test_a_library_evaluation_of_a_breached_day_returns_its_alert(tmp_path):
    # At the funnel's rate (1.5%) the bundled model's calibrated score is off on every day; the
    # history's own labels arrive as the late labels.
    history, output = tmp_path / "history", tmp_path / "out"
    generate(history, sessions=12_000, files=2, days=2, seed=9, conversion_rate=0.015)
    assert scorer.score(str(history), str(output)).rows == 12_000
    days = sorted(p.name[3:] for p in history.iterdir())

    evaluation = evaluate(str(output), str(history))  # the documented thresholds

    assert [a.dt for a in evaluation.alerts] == days
    assert {(a.kind, a.column, a.metric) for a in evaluation.alerts} == {
        ("calibration", "intent_calibrated", "ece_width")
    }
    assert all(a.value > a.threshold == MonitorConfig().ece for a in evaluation.alerts)
    assert f"--since {days[0]} --until {days[-1]}" in evaluation.alerts[0].message
    assert evaluation.exit_code == EXIT_OK  # alerts fail the run only under fail_on_alert
    assert evaluation.to_dict()["alerts"] == [a.to_dict() for a in evaluation.alerts]

    failing = evaluate(str(output), str(history), monitor=MonitorConfig(fail_on_alert=True))
    assert failing.exit_code == EXIT_ALERT
    quiet = evaluate(str(output), str(history), monitor=MonitorConfig(ece=1.0))
    assert quiet.alerts == [] and quiet.exit_code == EXIT_OK

    # The command prints the library's alerts: it has no policy of its own.
    result = CliRunner().invoke(cli, ["evaluate", str(output), str(history), "--json"])
    printed = json.loads(result.stdout)["alerts"]
    assert printed == evaluation.to_dict()["alerts"]
    alert_lines = [line for line in result.stderr.splitlines() if line.startswith("ALERT ")]
    assert alert_lines == [a.message for a in evaluation.alerts]
