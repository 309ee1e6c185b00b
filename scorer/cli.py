"""The `scorer` command: a thin Click shell over the library.

Each command parses options, calls one library function, and turns a `ScorerError` into a
one-line message and its exit code (the traceback only with `--verbose`).
"""

from __future__ import annotations

import functools
import sys

import click

from scorer import __version__
from scorer.errors import ScorerError


def handle_errors(command):
    """Turn library errors into `TypeName: message` on stderr and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except ScorerError as exc:
            if ctx.find_root().params.get("verbose"):
                raise
            click.echo(f"{type(exc).__name__}: {exc}", err=True)
            ctx.exit(exc.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="scorer")
@click.option("--verbose", is_flag=True, help="Show tracebacks of errors.")
def cli(verbose: bool) -> None:
    """Batch-score purchase-intent models over Parquet sessions with async Ray actors.

    Raw and calibrated intent for every session, exactly once, with throughput statistics and
    calibration reports beside the scores.
    """


# Commands are added below, one function each, calling one library function.


def main() -> None:
    cli(prog_name="scorer")


if __name__ == "__main__":
    main()
