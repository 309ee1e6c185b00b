"""What a report holds: the `Report` record the queries fill and the plots and tables read.

Separate from the queries, the plots and the tables because all three share it, and it is where
the report asks which of its figures breach: `Report` carries the job's `[monitor]` config and
asks its `MonitorConfig.breaches`, the rule `scorer score` and `scorer evaluate` raise alerts by,
so that the report marks exactly the figures that raised (or would raise) an alert.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scorer.config import MonitorConfig, MonitorMetric
from scorer.errors import ReportError
from scorer.partitions import DATE_KEY

HISTOGRAM_BINS = 50  # equal-width bins of the score histogram, over [0, 1]
SCORES = ("raw", "calibrated")  # the two scores, as the columns' suffixes spell them
NO_DT = "(none)"  # the label of rows from files outside any dt folder


def day_label(day: str | None) -> str:
    """A dt as the report shows it: rows outside any dt folder are ``(none)``."""
    return NO_DT if day is None else day


@dataclass(frozen=True)
class Report:
    """The figures of one run, as read from OUTPUT, and the plots drawn from them."""

    run_id: str
    run: dict
    calibration: list[dict]  # calibration table rows, partitions by dt then overall; [] unlabelled
    stages: dict[str, float]  # seconds per stage, summed over the run's shard attempts
    actors: list[dict]  # per actor: rows, shards, busy seconds, seconds per stage, rows/s
    failed: list[dict]  # failed shard attempts: shard, file, attempt, error
    histogram: dict[str, np.ndarray]  # rows per HISTOGRAM_BINS equal-width bin, per score
    # Across every run in OUTPUT, the newest run's rows per dt (dt order; drift in table order):
    drift: list[dict]  # per dt and column: DRIFT_SQL's columns; [] without drift tables
    calibration_over_time: list[dict]  # per dt: CALIBRATION_OVER_TIME_SQL's columns
    # What marks a figure as breached: the job's `[monitor]` (default: the alerts' defaults).
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    plots: list[Path] = dataclasses.field(default_factory=list)

    @property
    def overall(self) -> dict | None:
        """The calibration table's overall row; None for an unlabelled run."""
        return next((r for r in self.calibration if r["scope"] == "overall"), None)

    def labelled_overall(self) -> dict[str, Any]:
        """The overall row, for what is drawn only for a labelled run; a ReportError without."""
        row = self.overall
        if row is None:
            raise ReportError(
                f"run {self.run_id}: no calibration table (its input carried no label)"
            )
        return row

    @property
    def partitions(self) -> list[dict]:
        return [r for r in self.calibration if r["scope"] == "partition"]

    @property
    def drift_days(self) -> list[str | None]:
        """The dts with drift figures, in order (None, files outside any dt folder, last)."""
        return list(dict.fromkeys(r[DATE_KEY] for r in self.drift))

    @property
    def drift_columns(self) -> list[str]:
        """The columns with drift figures, in the drift tables' order (card order, then score)."""
        return list(dict.fromkeys(r["column"] for r in self.drift))

    def psi_breached(self, row: dict) -> bool:
        """Whether a drift row's PSI raised (or would raise) a drift alert."""
        return self.monitor.breaches("psi", row["psi"], row["rows"])

    def ece_breached(self, row: dict) -> bool:
        """Whether a calibration row's ECE of intent_calibrated raised (or would raise) an alert."""
        return self.monitor.breaches("ece", row["ece_width_calibrated"], row["rows"])

    def breach_rule(self, metric: MonitorMetric, name: str) -> str:
        """How a title states what is marked: ``PSI > 0.25, days of 5,000+ rows``."""
        rule = f"{name} > {self.monitor.threshold(metric):g}"
        return f"{rule}, days of {self.monitor.min_rows:,}+ rows" if self.monitor.min_rows else rule
