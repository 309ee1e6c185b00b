"""`scorer generate`: synthetic labelled session history (`scorer.jobs.generate`).

`--break DATE:KIND=COLUMN[:AMOUNT]` is parsed by `Break.parse`, the library's own grammar, so
that a bad value is a usage error naming the option.
"""

from __future__ import annotations

import datetime as dt

import click

from scorer.cli.exits import handle_errors
from scorer.errors import ScorerError
from scorer.jobs.generate import DEFAULT_CONVERSION_RATE, DEFAULT_END_DATE, Break, generate


class BreakParam(click.ParamType):
    """``--break DATE:KIND=COLUMN[:AMOUNT]`` as a `Break`."""

    name = "break"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Break:
        if isinstance(value, Break):
            return value
        try:
            return Break.parse(str(value))
        except ScorerError as exc:
            self.fail(str(exc), param, ctx)


@click.command("generate")
@click.argument("output")
@click.option(
    "--sessions", type=click.IntRange(min=1), required=True, help="Sessions (rows) in all."
)
@click.option(
    "--files",
    type=click.IntRange(min=1),
    required=True,
    help="Parquet files in all, spread evenly over the days (at least one a day).",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    required=True,
    help="Consecutive days, one dt=YYYY-MM-DD partition each, ending at --end-date.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    required=True,
    help="Random seed: the same options give byte-identical files, on any number of CPUs.",
)
@click.option(
    "--conversion-rate",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=DEFAULT_CONVERSION_RATE,
    help="Mean ground-truth conversion probability over the generated sessions. Default: the "
    "real store's own rate for each month (15.5% over the year, ~25% in November).",
)
@click.option(
    "--end-date",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=DEFAULT_END_DATE.isoformat(),
    show_default=True,
    help="The last day. Fixed by default, so that a seed means the same data on any day.",
)
@click.option(
    "--break",
    "breaks",
    type=BreakParam(),
    multiple=True,
    metavar="DATE:KIND=COLUMN[:AMOUNT]",
    help="Break a column on one generated day (repeatable), as a tracking bug would: "
    "zero=COLUMN (all 0), shift=COLUMN:FACTOR (times FACTOR), null=COLUMN[:SHARE] (missing), "
    "unseen=CATEGORY[:SHARE] (a value outside the model's vocabulary). Labels stay those of "
    "the unbroken day. E.g. 2026-11-20:zero=page_value, 2026-11-21:unseen=browser:0.3.",
)
@handle_errors
def generate_command(
    output: str,
    sessions: int,
    files: int,
    days: int,
    seed: int,
    conversion_rate: float | None,
    end_date: dt.datetime,
    breaks: tuple[Break, ...],
) -> None:
    """Write synthetic labelled session history to OUTPUT, hive-partitioned by dt.

    OUTPUT is a new or empty directory, or a URI such as
    s3://bucket/history?endpoint_override=host:9000&scheme=http. Sessions are drawn from the
    bundled real sessions of the same calendar month, jittered, in the session schema; the label
    `converted` is drawn from a known ground-truth probability (see
    scorer.jobs.generate.ground_truth_probability), so that the calibration of any model can be
    measured on them. --break makes broken days for drift tests and demos; the labels and every
    other column stay exactly those of the same command without it.

    \b
    Example:
      scorer generate history --sessions 400000 --files 8 --days 8 --seed 42 \\
        --break 2026-11-25:zero=page_value --break 2026-11-26:unseen=browser:0.3
    """
    summary = generate(
        output,
        sessions=sessions,
        files=files,
        days=days,
        seed=seed,
        conversion_rate=conversion_rate,
        end_date=end_date.date(),
        breaks=breaks,
    )
    broken = f"; broken: {', '.join(map(str, summary.breaks))}" if summary.breaks else ""
    click.echo(
        f"generated {summary.rows:,} sessions in {summary.files} files over {summary.days} days"
        f" ({summary.first_day}..{summary.last_day}) in {summary.output}:"
        f" {summary.positive_rate:.2%} converted (ground truth {summary.conversion_rate:.2%}),"
        f" {summary.seconds:.1f} s{broken}"
    )
