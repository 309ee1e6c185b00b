"""`scorer score`: the command that scores INPUT into OUTPUT (`scorer.pipeline.entry.score`).

Its options map onto `JobConfig.with_overrides`, flags over the `--config` file; the run's
summary prints as text (or JSON with --json), its alerts as ALERT lines, and the command ends
with the summary's exit code.
"""

from __future__ import annotations

import contextlib
import sys

import click

from scorer.cli.exits import exit_with, handle_errors, sigterm_interrupts
from scorer.cli.options import config_option, json_option, monitor_options
from scorer.cli.render import describe_run, echo_json, print_alerts
from scorer.config import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_CPUS_PER_ACTOR,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SHARD_ROWS,
    DEFAULT_THREADS_PER_ACTOR,
    OUTPUT_FORMATS,
)
from scorer.model.card import BUNDLED_MODEL
from scorer.model.sessions import KEY_COLUMN, LABEL_COLUMN


@click.command("score")
@click.argument("input", required=False)
@click.argument("output", required=False)
@click.option(
    "--model",
    "model",
    metavar="DIR",
    help=f"Model directory. Default: the bundled {BUNDLED_MODEL}.",
)
@config_option("TOML job config (see configs/); flags override its keys.")
@click.option(
    "--actors",
    type=click.IntRange(min=1),
    help="Scoring actors on Ray (a private local Ray unless --address). Default: CPUs of the "
    "cluster, or none on one machine when the driver alone is faster.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=0),
    help="Without Ray: worker processes (forked after planning) scoring beside the driver. "
    "Default: one per spare core when the job keeps the driver busy for more than ~0.5 s; "
    "0: none.",
)
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    help=(
        f"Rows per scored batch (default {DEFAULT_BATCH_ROWS}); also the most rows one read of a "
        "run of small files takes."
    ),
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="onnxruntime threads per worker or actor ([model] threads; default "
    f"{DEFAULT_THREADS_PER_ACTOR}): more for a heavy imported model on few workers.",
)
@click.option(
    "--shard-rows",
    type=click.IntRange(min=1),
    help=(
        "Target rows per shard; big files split on row-group boundaries, small files of one "
        f"folder packed together (default {DEFAULT_SHARD_ROWS}). With the default, a job scored "
        "on this machine that would give a worker fewer than four shards gets smaller ones, "
        "never under 100000 rows."
    ),
)
@click.option(
    "--address",
    metavar="ADDR",
    help="Join this Ray cluster (also RAY_ADDRESS). Default: this machine (see above).",
)
@click.option(
    "--cpus-per-actor",
    type=click.FloatRange(min=0, min_open=True),
    help=f"CPUs Ray reserves per actor (default {DEFAULT_CPUS_PER_ACTOR:g}); with --actors unset, "
    "actors = cluster CPUs / this.",
)
@click.option(
    "--memory-per-actor-mb",
    type=click.IntRange(min=1),
    help="Memory Ray reserves per actor, in MB (default: none reserved).",
)
@click.option(
    "--partition",
    "partitions",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only this hive partition (repeatable; values of one key are alternatives).",
)
@click.option(
    "--since",
    metavar="DATE",
    help="Only days on or after DATE (YYYY-MM-DD): dt= folders, or the day column's row groups "
    "(pruned by their statistics, rows filtered where a group straddles DATE).",
)
@click.option(
    "--until", metavar="DATE", help="Only days on or before DATE (YYYY-MM-DD), as --since."
)
@click.option(
    "--date-column",
    metavar="COLUMN",
    help="The column holding each row's day in files outside dt= folders: a date, a timestamp "
    "or YYYY-MM-DD strings. Default: a 'dt' column where the files have one. A dt= folder wins "
    "over the column (they must agree).",
)
@click.option(
    "--date-timezone",
    metavar="ZONE",
    help="The timezone a timestamp day column's day is taken in, e.g. America/New_York "
    "(default UTC).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    default=None,
    help="Rescore everything, replacing shards atomically. Default: resume.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(OUTPUT_FORMATS),
    help="OUTPUT/scores/ as hive Parquet (default), a Delta Lake table, or an Apache Iceberg "
    "table (catalog: [iceberg] in --config), published once per run and partitioned as the "
    "input's folders are (a day column: one dt= partition per day).",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    help=f"Attempts per shard (default {DEFAULT_MAX_ATTEMPTS}).",
)
@click.option(
    "--max-failed-shards",
    type=click.IntRange(min=1),
    help="Stop dispatching after this many shards have failed.",
)
@click.option(
    "--keep",
    multiple=True,
    metavar="COLUMN",
    help="Copy this input column to the scores (repeatable).",
)
@click.option(
    "--key-column",
    metavar="COLUMN",
    help=f"Row key column. Default: the model card's ({KEY_COLUMN}).",
)
@click.option(
    "--label-column",
    metavar="COLUMN",
    help=f"Label column for calibration metrics. Default: the model card's ({LABEL_COLUMN}).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (shards, rows, bytes, what a resume skips); write nothing.",
)
@json_option()
@monitor_options
@handle_errors
def score_command(
    input: str | None,
    output: str | None,
    model: str | None,
    config_file: str | None,
    actors: int | None,
    processes: int | None,
    batch_rows: int | None,
    threads: int | None,
    shard_rows: int | None,
    address: str | None,
    cpus_per_actor: float | None,
    memory_per_actor_mb: int | None,
    partitions: tuple[str, ...],
    since: str | None,
    until: str | None,
    date_column: str | None,
    date_timezone: str | None,
    overwrite: bool | None,
    output_format: str | None,
    max_attempts: int | None,
    max_failed_shards: int | None,
    keep: tuple[str, ...],
    key_column: str | None,
    label_column: str | None,
    dry_run: bool,
    as_json: bool,
    monitor: dict[str, object],
) -> None:
    """Score INPUT (a Parquet file, a folder tree or a URI) into OUTPUT.

    Plans shards from the Parquet footers (small files of one folder packed together), scores
    every row with raw and calibrated intent, and commits each shard atomically. With
    --address it joins that Ray cluster; with --actors N it starts a private local Ray with N
    actors. Otherwise the driver scores in its own process from the first second, with worker
    processes on the spare cores once they are ready (--processes), and starts a private Ray
    beside it only where its actors would finish the job sooner (many cores, many rows); the
    summary says which. Rerunning the same command resumes: committed shards are
    skipped.

    After the run its drift and (with labels) calibration per day are checked against the
    [monitor] thresholds: each breach prints an ALERT line on stderr and is in the --json
    summary's alerts.

    Exit codes: 0 all shards committed or skipped, 1 some shards failed, 2 usage, config or
    preflight error, 3 alerts with --fail-on-alert (all else succeeded), 130 interrupted by
    SIGINT (Ctrl-C), 143 stopped by SIGTERM (a scheduler); on either, in-flight shards are
    abandoned cleanly and a rerun resumes.
    """
    from scorer.config import load_config, parse_date
    from scorer.partitions import parse_partitions
    from scorer.pipeline.entry import score
    from scorer.pipeline.progress import LogProgress, RichProgress

    config = load_config(config_file).with_overrides(
        model=model,
        batch_rows=batch_rows,
        threads_per_actor=threads,
        shard_rows=shard_rows,
        partition=parse_partitions(partitions),
        since=parse_date(since, "--since") if since else None,
        until=parse_date(until, "--until") if until else None,
        date_column=date_column,
        date_timezone=date_timezone,
        overwrite=overwrite,
        format=output_format,
        max_attempts=max_attempts,
        max_failed_shards=max_failed_shards,
        keep=tuple(keep),
        key_column=key_column,
        label_column=label_column,
        processes=processes,
        ray__actors=actors,
        ray__address=address,
        ray__cpus_per_actor=cpus_per_actor,
        ray__memory_per_actor_mb=memory_per_actor_mb,
        **monitor,
    )
    interactive = sys.stderr.isatty() and not as_json
    progress = RichProgress() if interactive else LogProgress()
    # Ray prints cluster events (a node died) to stdout; with --json stdout is the summary's alone.
    with (
        contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext(),
        sigterm_interrupts(),
    ):
        summary = score(input, output, config=config, progress=progress, dry_run=dry_run)
    if as_json:
        echo_json(summary.to_dict())
    elif dry_run:
        click.echo(summary.plan_text)
    else:
        click.echo(describe_run(summary), err=not as_json)
    print_alerts(summary.alerts)
    exit_with(summary.exit_code)
