"""The `scorer` command: a thin Click shell over the library.

Each command lives in a module of its own (`score`, `evaluate`, `report`, `generate`, `bench`;
`model` for train, calibrate, import and inspect), parses its options (shared ones in
`options`), calls one library function and prints its result (`render`); how a command ends
(a `ScorerError` as one line and its exit code, the traceback only with `--verbose`) is
`exits`'s. This module is the group that holds them and the console script's entry.
"""

from __future__ import annotations

import click

from scorer._version import __version__
from scorer.cli.bench import bench_command
from scorer.cli.evaluate import evaluate_command
from scorer.cli.exits import run_program
from scorer.cli.generate import generate_command
from scorer.cli.model import calibrate_command, import_command, inspect_command, train_command
from scorer.cli.report import report_command
from scorer.cli.score import score_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="scorer")
@click.option("--verbose", is_flag=True, help="Show tracebacks of errors.")
def cli(verbose: bool) -> None:
    """Batch-score purchase-intent models over Parquet sessions with async Ray actors.

    Raw and calibrated intent for every session, exactly once, with throughput statistics and
    calibration reports beside the scores.
    """


for _command in (
    score_command,
    generate_command,
    report_command,
    evaluate_command,
    bench_command,
    train_command,
    calibrate_command,
    import_command,
    inspect_command,
):
    cli.add_command(_command)


def main() -> None:
    """The `scorer` console script (and ``python -m scorer``); `exits.run_program` ends the
    process once the command has."""
    run_program(lambda: cli(prog_name="scorer"))
