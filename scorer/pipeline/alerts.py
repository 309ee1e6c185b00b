"""Alerts: the figures of a run's drift and calibration tables checked against `[monitor]`.

An alert is one figure of one day above its threshold, as `scorer.config.MonitorConfig.breaches`
rules (the rule `scorer report` marks figures by; the defaults are spelled and explained in
`scorer.config`). Kinds:

    drift        psi of a model input or of intent_calibrated    > monitor.psi
    unseen       share_unseen of a categorical input             > monitor.share_unseen
    invalid      share_invalid / share_missing of an input       > monitor.share_invalid / _missing
    calibration  ece_width of intent_calibrated against labels   > monitor.ece

PSI and ECE of a day with fewer than ``monitor.min_rows`` rows (labelled rows for ECE) are
sampling noise and raise nothing; shares raise at any size (every row of a small day invalid is
still a broken export).

Both tables have one row per ``dt`` partition (``scope = 'partition'``) and an overall row.
Alerts are raised per partition row; the overall row only when no row has a ``dt`` (an input
without dt folders, whose one partition row repeats the overall figures).

Each alert prints as one line, ``ALERT <kind> dt=<dt> <column>: <metric> <value> > <threshold>
— <what to do>``; for calibration, what to do is the `scorer calibrate` command that refits the
calibrator on the breached days (``RecalibrateHint``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.config import MonitorConfig, MonitorMetric
from scorer.partitions import DATE_KEY
from scorer.pipeline.layout import CALIBRATION, DRIFT, run_table_relpath
from scorer.storage import Location, foreign_errors

CALIBRATED = "intent_calibrated"

_ALL_DAYS = "all"  # how the overall row's dt prints
_NO_DAY = "none"  # how a partition row outside any dt folder prints


@dataclass(frozen=True)
class Alert:
    """One figure of one day above its threshold; ``dt`` None for the overall row.

    ``message`` is the line printed for it: ``ALERT <kind> dt=<dt> <column>: ...``."""

    kind: str
    dt: str | None
    column: str
    metric: str
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RecalibrateHint:
    """What the `scorer calibrate` command of a calibration alert needs: the labelled sessions
    (``data``), the model directory that scored them, and a directory for the refitted one."""

    data: str
    model: str
    out: str
    labels: str | None = None
    """Late labels for ``data``'s sessions (`scorer evaluate`'s LABELS); None: ``data`` has them."""

    def command(self, since: str | None = None, until: str | None = None) -> str:
        """The command; ``since``/``until`` (dt values) select the breached days of ``data``."""
        days = "".join(
            f" --{flag} {day}" for flag, day in (("since", since), ("until", until)) if day
        )
        labels = f" --labels {self.labels}" if self.labels else ""
        return f"scorer calibrate {self.data}{labels} --model {self.model} --out {self.out}{days}"


def drift_alerts(drift: pa.Table, thresholds: MonitorConfig) -> list[Alert]:
    """Drift, unseen and invalid alerts from a drift table (``OUTPUT/drift/run_id=<ID>``)."""
    alerts: list[Alert] = []
    for row in _alerting_rows(drift.to_pylist()):
        column = row["column"]
        checks: tuple[tuple[str, MonitorMetric, str], ...] = (
            ("drift", "psi", _drift_advice(column, row)),
            ("unseen", "share_unseen", _UNSEEN_ADVICE),
            ("invalid", "share_invalid", _INVALID_ADVICE),
            ("invalid", "share_missing", _MISSING_ADVICE),
        )
        for kind, metric, advice in checks:
            value = row.get(metric, math.nan)  # a column an older table lacks: not computed
            if thresholds.breaches(metric, value, row.get("rows")):
                threshold = thresholds.threshold(metric)
                alerts.append(_alert(kind, row, column, metric, value, threshold, advice))
    return alerts


def calibration_alerts(
    calibration: pa.Table, thresholds: MonitorConfig, recalibrate_hint: RecalibrateHint
) -> list[Alert]:
    """Calibration alerts from a calibration table (`scorer.metrics.calibration_schema`).

    Every breached day's alert carries the same command, over the first to the last breached
    day: one refit on the days the calibrator is off, not one per day.
    """
    metric = "ece_width"
    breached = [
        row
        for row in _alerting_rows(calibration.to_pylist())
        if thresholds.breaches("ece", row[f"{metric}_calibrated"], row["rows"])
    ]
    days = sorted(row[DATE_KEY] for row in breached if row[DATE_KEY] is not None)
    # Without dt folders there is no day to select: the command refits on all of the data.
    command = recalibrate_hint.command(days[0], days[-1]) if days else recalibrate_hint.command()
    advice = (
        "the calibrated score is off its observed rate; refit the calibrator on these days: "
        + command
    )
    return [
        _alert(
            "calibration",
            row,
            CALIBRATED,
            metric,
            row[f"{metric}_calibrated"],
            thresholds.ece,
            advice,
        )
        for row in breached
    ]


def table_alerts(
    drift: pa.Table | None,
    calibration: pa.Table | None,
    thresholds: MonitorConfig,
    recalibrate_hint: RecalibrateHint,
) -> list[Alert]:
    """The alerts of one run's drift and calibration tables; a table the run did not write (no
    reference in the card: no drift; no label: no calibration) raises none of its kinds."""
    alerts: list[Alert] = []
    if drift is not None:
        alerts += drift_alerts(drift, thresholds)
    if calibration is not None:
        alerts += calibration_alerts(calibration, thresholds, recalibrate_hint)
    return alerts


def run_alerts(
    output: Location,
    run_id: str,
    thresholds: MonitorConfig,
    recalibrate_hint: RecalibrateHint,
) -> list[Alert]:
    """The alerts of an earlier run, from the tables it wrote under OUTPUT (other thresholds,
    say); a missing table is no error."""
    drift = read_run_table(output, DRIFT, run_id)
    calibration = read_run_table(output, CALIBRATION, run_id)
    return table_alerts(drift, calibration, thresholds, recalibrate_hint)


def recalibrated_dir(model: str) -> str:
    """Where the suggested `scorer calibrate` writes: beside a model of the user's, and in the
    working directory for the bundled one (never into the installed package)."""
    from scorer.model.runtime import default_model_dir

    if Path(model).resolve() == default_model_dir().resolve():
        return f"{Path(model).name}-recalibrated"
    return f"{model.rstrip('/')}-recalibrated"


def score_hint(input_uri: str, model: str | None) -> RecalibrateHint:
    """The calibrate command of a `scorer score` run: the model that scored it, refitted on the
    run's INPUT (which held the labels); ``model`` None is the bundled one."""
    from scorer.model.runtime import default_model_dir

    model = model or str(default_model_dir())
    return RecalibrateHint(data=input_uri, model=model, out=recalibrated_dir(model))


def read_run_table(output: Location, table: str, run_id: str) -> pa.Table | None:
    """One run's ``table`` (``layout.run_table_relpath``); None when the run wrote none."""
    where = output.child(run_table_relpath(table, run_id))
    with foreign_errors(where.uri, "cannot read"):
        if output.filesystem.get_file_info(where.path).type == pafs.FileType.NotFound:
            return None
        # One file, read as one: `pq.read_table` goes through pyarrow.dataset, whose import
        # pulls in pandas, half a second at the end of every `scorer score` (profiled).
        with output.filesystem.open_input_file(where.path) as source:
            return pq.ParquetFile(source).read()


# -- rows and lines ------------------------------------------------------------------------

_UNSEEN_ADVICE = (
    "values outside the model's vocabulary are scored as unseen; check the source for new "
    "categories, and retrain (scorer train) if they are here to stay"
)
_INVALID_ADVICE = (
    "rows out of the card's valid range or not finite get null scores; fix the export and rerun "
    "scorer score (changed files are rescored)"
)
_MISSING_ADVICE = (
    "rows missing this input get null scores; fix the export and rerun scorer score (changed "
    "files are rescored)"
)


def _drift_advice(column: str, row: dict[str, Any]) -> str:
    reference = f" ({row['reference']})" if row.get("reference") else ""
    if column == CALIBRATED:
        return (
            f"the scores no longer look like the reference{reference}: check the inputs' drift "
            "alerts of this day; if the population really changed, recalibrate or retrain"
        )
    return (
        f"this input no longer looks like the training data{reference}: check the upstream "
        "export of this day; if the change is real, retrain (scorer train) on recent sessions"
    )


def _alerting_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = list(rows)
    partitions = [row for row in rows if row["scope"] == "partition"]
    if any(row[DATE_KEY] is not None for row in partitions):
        return partitions
    return [row for row in rows if row["scope"] == "overall"]


def _alert(
    kind: str,
    row: dict[str, Any],
    column: str,
    metric: str,
    value: float,
    threshold: float,
    advice: str,
) -> Alert:
    day = row[DATE_KEY]
    shown = _ALL_DAYS if row["scope"] == "overall" else day or _NO_DAY
    message = f"ALERT {kind} dt={shown} {column}: {metric} {value:.4g} > {threshold:.4g} — {advice}"
    return Alert(kind, day, column, metric, float(value), float(threshold), message)
