"""`scorer report`: calibration and throughput of one run, and drift and calibration over time.

The package, one job per module:

    contents   the `Report` record and what its figures mean (days, scores, histogram bins)
    queries    DuckDB SQL over OUTPUT (docs/output.md) into a `Report`: `read_report`
    plots      matplotlib PNGs of a report: `write_plots`
    tables     rich tables of a report for the terminal: `render`

`read_report` runs the queries into a `Report`, `write_plots` draws its PNGs, `build_report` does
both; `render` turns a report into rich tables. None of them prints: the CLI decides.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scorer.config import MonitorConfig
from scorer.jobs.report.contents import Report
from scorer.jobs.report.plots import write_plots
from scorer.jobs.report.queries import read_report
from scorer.jobs.report.tables import render
from scorer.pipeline import layout

__all__ = ["Report", "build_report", "read_report", "render", "write_plots"]


def build_report(
    output: str | Path,
    run_id: str | None = None,
    out_dir: str | Path | None = None,
    *,
    monitor: MonitorConfig | None = None,
) -> Report:
    """Read one run and write its PNGs (default under OUTPUT/reports/<RUN_ID>/); ``monitor``
    marks the figures that breach it, as for `read_report`."""
    report = read_report(output, run_id, monitor=monitor)
    out = (
        Path(out_dir) if out_dir is not None else Path(output) / layout.report_folder(report.run_id)
    )
    return dataclasses.replace(report, plots=write_plots(report, out))
