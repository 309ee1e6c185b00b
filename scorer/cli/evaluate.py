"""`scorer evaluate`: late labels joined to OUTPUT's committed scores (`scorer.jobs.evaluate`).

The library computes the calibration and its alerts; the command builds the thresholds from
`--config` and the flags, prints the evaluation and its ALERT lines, and ends with its exit
code.
"""

from __future__ import annotations

import click

from scorer.cli.exits import exit_with, handle_errors
from scorer.cli.options import config_option, json_option, monitor_options
from scorer.cli.render import describe_evaluation, echo_json, print_alerts
from scorer.model.sessions import KEY_COLUMN, LABEL_COLUMN


@click.command("evaluate")
@click.argument("output")
@click.argument("labels")
@click.option(
    "--key-column",
    metavar="COLUMN",
    help=f"Key of the scores and of LABELS. Default: the config's, else {KEY_COLUMN}.",
)
@click.option(
    "--label-column",
    metavar="COLUMN",
    help=f"Label column of LABELS (boolean or 0/1). Default: the config's, else {LABEL_COLUMN}.",
)
@config_option(
    "TOML job config: its key and label columns, [storage] and [monitor]; flags override it."
)
@json_option()
@monitor_options
@handle_errors
def evaluate_command(
    output: str,
    labels: str,
    key_column: str | None,
    label_column: str | None,
    config_file: str | None,
    as_json: bool,
    monitor: dict[str, object],
) -> None:
    """Join late labels to OUTPUT's committed scores and write their calibration, per dt and overall.

    LABELS is Parquet with the key and the label: a file, or a folder of them (hive dt= folders
    or not), for any subset of days. Only committed score files are read, nothing is rescored;
    a score's day is its score file's dt folder. The figures are those of a labelled score run
    (ROC AUC, Brier, log loss, ECE, reliability bins), written to
    OUTPUT/calibration/run_id=<EVAL_RUN_ID>/part-0.parquet with the score runs evaluated in
    scored_run_ids. Labels of sessions never scored and scored sessions still unlabelled are
    counted. Each day's ECE of intent_calibrated is checked against [monitor]: a breach prints
    an ALERT line on stderr with the scorer calibrate command to run.

    Exit codes: 0 written, 2 usage or config error, LABELS without the key or label column, or
    repeating a key (nothing written), 3 alerts with --fail-on-alert (after writing).

    \b
    Example:
      scorer evaluate scored/ labels/ --json
      scorer evaluate scored/ labels/dt=2026-11-27/part-0.parquet --fail-on-alert
    """
    from scorer.config import load_config
    from scorer.jobs.evaluate import evaluate
    from scorer.storage import StorageOptions

    config = load_config(config_file).with_overrides(
        key_column=key_column, label_column=label_column, **monitor
    )
    evaluation = evaluate(
        output,
        labels,
        key_column=config.key_column,
        label_column=config.label_column,
        storage=StorageOptions(**config.storage.location_options()),
        monitor=config.monitor,
    )
    if as_json:
        echo_json(evaluation.to_dict())
    else:
        click.echo(describe_evaluation(evaluation))
    print_alerts(evaluation.alerts)
    exit_with(evaluation.exit_code)
