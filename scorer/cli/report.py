"""`scorer report`: a run's calibration and throughput, drift and calibration over time
(`scorer.jobs.report`), printed with rich and plotted to PNG files.
"""

from __future__ import annotations

from pathlib import Path

import click

from scorer.cli.exits import handle_errors
from scorer.cli.options import config_option


@click.command("report")
@click.argument("output", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--run",
    "run_id",
    metavar="RUN_ID",
    help="Run to report on. Default: the latest in OUTPUT/stats/runs by start time.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the PNG plots. Default: OUTPUT/reports/<RUN_ID>/.",
)
@config_option(
    "TOML job config whose [monitor] thresholds mark breached figures (default: the alerts')."
)
@handle_errors
def report_command(
    output: Path, run_id: str | None, out_dir: Path | None, config_file: str | None
) -> None:
    """Calibration and throughput report of one run, and drift and calibration over time.

    Prints the run summary, calibration of raw and calibrated scores overall and per dt (ROC AUC,
    Brier, log loss, ECE over 15 equal-width and 15 equal-mass bins), time per stage and per
    actor, and failed shards. Writes PNG plots: reliability diagram with bin counts, score
    histogram, calibration per day, and throughput per stage and actor. Calibration needs a run
    whose input carried the label column. Reads OUTPUT's Parquet with DuckDB only.

    Over time, from every run in OUTPUT (the newest run's figures win for each dt): drift per dt
    (the columns of highest PSI against the model card's reference, unseen and missing shares;
    drift_psi.png, a heatmap of PSI per column and dt) and calibration per dt from labelled score
    runs and `scorer evaluate` (ECE and observed against predicted rate;
    calibration_over_time.png).

    \b
    Example:
      scorer report scored/
      scorer report scored/ --run 20261128T010203Z-1a2b3c --out /tmp/report
    """
    # Imported here: matplotlib and DuckDB cost a second of start-up the other commands don't need.
    from rich.console import Console

    from scorer.config import load_config
    from scorer.jobs.report import build_report, render

    monitor = load_config(config_file).monitor
    built = build_report(output, run_id, out_dir, monitor=monitor)
    console = Console()
    for renderable in render(built):
        console.print(renderable)
