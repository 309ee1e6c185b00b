"""The `scorer` command: a thin Click shell over the library.

Each command parses options, calls one library function, and turns a `ScorerError` into a
one-line message and its exit code (the traceback only with `--verbose`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import click

from scorer._version import __version__
from scorer.config import (
    DEFAULT_ALERT_ECE,
    DEFAULT_ALERT_MIN_ROWS,
    DEFAULT_ALERT_PSI,
    DEFAULT_ALERT_SHARE_INVALID,
    DEFAULT_ALERT_SHARE_MISSING,
    DEFAULT_ALERT_SHARE_UNSEEN,
    DEFAULT_BATCH_ROWS,
    DEFAULT_CPUS_PER_ACTOR,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SHARD_ROWS,
    DEFAULT_THREADS_PER_ACTOR,
    OUTPUT_FORMATS,
)
from scorer.errors import Interrupted, ScorerError, Terminated
from scorer.jobs.bench import DEFAULT_REPS, DEFAULT_SESSIONS
from scorer.jobs.generate import (
    DEFAULT_CONVERSION_RATE,
    DEFAULT_END_DATE,
    Break,
    generate,
)
from scorer.model.card import (
    BUNDLED_MODEL,
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION,
    DEFAULT_SEED,
    DEFAULT_VERSION,
    OUTPUT_KINDS,
    InputSpec,
    ModelCard,
)
from scorer.model.sessions import KEY_COLUMN, LABEL_COLUMN

if TYPE_CHECKING:
    from scorer.jobs.evaluate import Evaluation
    from scorer.pipeline.alerts import Alert
    from scorer.pipeline.ledger import RunSummary

_P = ParamSpec("_P")
_R = TypeVar("_R")
_F = TypeVar("_F", bound=Callable[..., object])


def handle_errors(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn library errors into `TypeName: message` on stderr and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
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

# `[monitor]` thresholds as flags of `score` and `evaluate`: (flag, JobConfig override, type, help).
_MONITOR_FLAGS = (
    (
        "--alert-psi",
        "monitor__psi",
        float,
        f"PSI of an input or the score on a day (default {DEFAULT_ALERT_PSI:g}).",
    ),
    (
        "--alert-unseen",
        "monitor__share_unseen",
        float,
        f"Share of a categorical's rows outside the vocabulary (default {DEFAULT_ALERT_SHARE_UNSEEN:g}).",
    ),
    (
        "--alert-invalid",
        "monitor__share_invalid",
        float,
        f"Share of an input's rows invalid (default {DEFAULT_ALERT_SHARE_INVALID:g}).",
    ),
    (
        "--alert-missing",
        "monitor__share_missing",
        float,
        f"Share of an input's rows missing (default {DEFAULT_ALERT_SHARE_MISSING:g}).",
    ),
    (
        "--alert-ece",
        "monitor__ece",
        float,
        f"Equal-width ECE of intent_calibrated on a day (default {DEFAULT_ALERT_ECE:g}).",
    ),
    (
        "--alert-min-rows",
        "monitor__min_rows",
        int,
        f"Rows a day needs for PSI and ECE alerts (default {DEFAULT_ALERT_MIN_ROWS:,}).",
    ),
)


def monitor_options(command: Callable[..., _R]) -> Callable[..., _R]:
    """The alert thresholds and --fail-on-alert; the command gets them as one `monitor` dict of
    `JobConfig.with_overrides` keys (`monitor__psi=0.3`)."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> _R:
        monitor = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("monitor__")}
        return command(*args, monitor=monitor, **kwargs)

    for flag, name, kind, help in reversed(_MONITOR_FLAGS):
        bounds = click.IntRange(min=0) if kind is int else click.FloatRange(min=0)
        wrapper = click.option(
            flag, name, type=bounds, metavar="X", help=f"Alert threshold: {help}"
        )(wrapper)
    return click.option(
        "--fail-on-alert",
        "monitor__fail_on_alert",
        is_flag=True,
        default=None,
        help="Exit 3 when an alert is raised, once everything is committed and written (a failed "
        "shard's exit 1 wins).",
    )(wrapper)


@cli.command("score")
@click.argument("input", required=False)
@click.argument("output", required=False)
@click.option(
    "--model",
    "model",
    metavar="DIR",
    help=f"Model directory. Default: the bundled {BUNDLED_MODEL}.",
)
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="TOML job config (see configs/); flags override its keys.",
)
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
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
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
    import json

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
        _sigterm_interrupts(),
    ):
        summary = score(input, output, config=config, progress=progress, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), default=str, indent=2))
    elif dry_run:
        click.echo(summary.plan_text)
    else:
        click.echo(_describe_run(summary), err=not as_json)
    _print_alerts(summary.alerts)
    sys.exit(summary.exit_code)


def _print_alerts(alerts: list[Alert]) -> None:
    for alert in alerts:
        click.echo(alert.message, err=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) gets the same clean abandon as Ctrl-C, and the
    exit code schedulers read as "stopped by SIGTERM": 143 (128 + 15), Ctrl-C keeping 130."""
    import signal

    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt  # the library abandons in-flight shards on it, then `Interrupted`

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except Interrupted as exc:
        if received and not isinstance(exc, Terminated):
            raise Terminated(str(exc)) from exc
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _describe_run(summary: RunSummary) -> str:
    lines = [
        f"run {summary.run_id}: {summary.status}",
        f"  rows scored {summary.rows:,} in {summary.shards_committed:,} shard(s); skipped "
        f"{summary.shards_skipped:,} committed shard(s) ({summary.rows_skipped:,} rows); "
        f"failed {summary.shards_failed:,}",
    ]
    if summary.rows_read != summary.rows or summary.row_groups_pruned:
        lines.append(  # a day filter on a day column (docs/nights-in-a-column.md)
            f"  days: {summary.rows:,} rows selected of {summary.rows_read:,} read; "
            f"{summary.row_groups_pruned:,} row group(s) skipped by their statistics"
        )
    if summary.rows_without_day:
        lines.append(f"  {summary.rows_without_day:,} rows without a day (their own dt: null)")
    if summary.rows:
        lines.append(
            f"  {summary.wall_seconds:.1f} s wall ({summary.setup_seconds:.1f} s setup), "
            f"{summary.work_rows_per_second:,.0f} rows/s in the work window on {summary.actors} "
            f"actor(s), {summary.nodes} node(s)"
        )
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in summary.stage_seconds.items())
        lines.append(f"  time per stage (all actors): {stages}")
        if summary.work_seconds:
            cores = summary.cpu_seconds / summary.work_seconds
            lines.append(
                f"  CPU {summary.cpu_seconds:.2f} s in the actors: {cores:.1f} core(s) busy"
            )
        if len(summary.rows_per_node) > 1:
            per_node = summary.work_seconds or 1.0
            lines += [
                f"  node {node}: {rows / per_node:,.0f} rows/s"
                for node, rows in summary.rows_per_node.items()
            ]
    if summary.drift_path is not None:
        lines.append(f"  drift: {summary.drift_path}")
    elif summary.drift_skipped is not None:
        lines.append(f"  drift: skipped ({summary.drift_skipped})")
    for failure in summary.failures:
        lines.append(f"  FAILED {failure['shard_id']}: {failure['error']}")
    return "\n".join(lines)


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


@cli.command("generate")
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


@cli.command()
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
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="TOML job config whose [monitor] thresholds mark breached figures (default: the alerts').",
)
@handle_errors
def report(output: Path, run_id: str | None, out_dir: Path | None, config_file: str | None) -> None:
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
    built = build_report(
        output, run_id, out_dir, psi_threshold=monitor.psi, ece_threshold=monitor.ece
    )
    console = Console()
    for renderable in render(built):
        console.print(renderable)


@cli.command("evaluate")
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
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="TOML job config: its key and label columns, [storage] and [monitor]; flags override it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
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
    import json

    from scorer.config import load_config
    from scorer.jobs.evaluate import evaluate
    from scorer.pipeline.alerts import calibration_alerts, exit_code
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
    )
    alerts = calibration_alerts(evaluation.calibration, config.monitor, evaluation.recalibrate_hint)
    code = exit_code(0, alerts, config.monitor.fail_on_alert)
    if as_json:
        result = evaluation.to_dict() | {"alerts": [a.to_dict() for a in alerts], "exit_code": code}
        click.echo(json.dumps(result, default=str, indent=2))
    else:
        click.echo(_describe_evaluation(evaluation))
    _print_alerts(alerts)
    sys.exit(code)


# The per-day table of `scorer evaluate`: (heading, calibration column, width).
_EVALUATION_FIGURES = (
    ("observed", "observed_rate", 10),
    ("mean cal", "mean_calibrated", 10),
    ("ECE cal", "ece_width_calibrated", 9),
    ("AUC", "roc_auc_calibrated", 8),
)


def _describe_evaluation(evaluation: Evaluation) -> str:
    e = evaluation
    lines = [
        f"evaluation {e.run_id} of {e.rows_scored:,} committed score rows "
        f"(run(s) {', '.join(e.scored_run_ids)}) against {e.label_rows:,} labels",
        f"  labelled {e.rows_labelled:,} scored rows; {e.scores_unlabelled:,} scored rows without "
        f"a label; {e.labels_unscored:,} labels of sessions never scored",
    ]
    if e.days_without_labels:
        lines.append(f"  days without labels: {', '.join(map(str, e.days_without_labels))}")
    heading = "".join(f"{name:>{width}}" for name, _, width in _EVALUATION_FIGURES)
    lines.append(f"  {'dt':<12}{'rows':>12}{heading}")
    for row in e.calibration.to_pylist():
        day = row["dt"] if row["scope"] == "partition" else "overall"
        figures = "".join(
            f"{'-' if row[column] is None else format(row[column], '.4f'):>{width}}"
            for _, column, width in _EVALUATION_FIGURES
        )
        lines.append(f"  {day!s:<12}{row['rows']:>12,}{figures}")
    lines.append(
        f"  wrote {e.calibration_path} in {e.seconds:.1f} s ({e.rows_per_second:,.0f} rows/s)"
    )
    return "\n".join(lines)


@cli.command("bench")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench"),
    show_default=True,
    help="Folder for the data set, measurements.parquet and the PNG plots.",
)
@click.option(
    "--data", metavar="DIR", help="Benchmark on this session data set instead of generating one."
)
@click.option(
    "--sessions",
    type=click.IntRange(min=1),
    default=DEFAULT_SESSIONS,
    show_default=True,
    help="Rows to generate (reused from --out if already there).",
)
@click.option(
    "--files",
    type=click.IntRange(min=1),
    help="Files to generate. Default: 4 per actor of the largest count, at least 8.",
)
@click.option(
    "--reps",
    type=click.IntRange(min=1),
    default=DEFAULT_REPS,
    show_default=True,
    help="Repetitions of each contestant, alternated.",
)
@click.option(
    "--actors", metavar="N,N,...", help="Actor counts to measure. Default: 1, 2, ... CPUs."
)
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_ROWS,
    help=f"Rows per batch, for every contestant (default {DEFAULT_BATCH_ROWS}).",
)
@click.option("--address", metavar="ADDR", help="Run the scorer and Ray Data on this Ray cluster.")
@click.option(
    "--model",
    "model_dir",
    metavar="DIR",
    help=f"Model every contestant scores with (an imported one too). Default: {BUNDLED_MODEL}.",
)
@click.option(
    "--s3-latency",
    metavar="MS,MS,...",
    help="Instead: s3 → s3 through a latency proxy holding each request MS ms (e.g. 0,20,50; "
    "the first is the baseline), --actors N (default 2), against moto's S3 server on loopback "
    "(pip install 'moto[server]').",
)
@click.option(
    "--whole-job",
    is_flag=True,
    help="Instead: time whole processes, `scorer score DATA OUT` as a user types it against the "
    "same model in Polars and in DuckDB (scripts generated from the card), outputs compared.",
)
@handle_errors
def bench_command(
    out_dir: Path,
    data: str | None,
    sessions: int,
    files: int | None,
    reps: int,
    actors: str | None,
    batch_rows: int,
    address: str | None,
    model_dir: str | None,
    s3_latency: str | None,
    whole_job: bool,
) -> None:
    """Measure throughput against the I/O floor and Ray Data, and how it scales with actors.

    In one run, alternating the contestants, REPS repetitions each of: the I/O floor (plain
    processes reading the scorer's columns and writing its output columns with pyarrow, no
    model), `scorer score` with each actor count (setup reported apart from the work window)
    and as typed with no --actors (scorer_default: the in-process worker and its worker
    processes; its actor count is the workers it had), Ray Data read_parquet →
    map_batches(model.score) → write_parquet with fractional CPUs per actor (needs pip install
    -e '.[bench]'; skipped otherwise), and the model alone in-process
    (1M-row batch, and single-row latency p50/p99). Prints medians with ratios to the floor;
    writes OUT/measurements.parquet, OUT/scaling.png and OUT/stages.png. The default takes a few
    minutes on 2 cores.

    With --whole-job: REPS alternating runs of three whole processes on the same data, timed
    from start to exit: `scorer score DATA OUT --json` with no other flag, and the model in a
    Polars and in a DuckDB script with every weight inlined from the card (written to
    OUT/peers/). Prints medians, each wall against the faster peer's, the scorer's work window
    and first commit, and the largest score difference from the scorer's on the same keys;
    writes OUT/whole-job.parquet.

    With --s3-latency MS,MS,...: object storage at real latency. Generates the data on moto's
    S3 server on loopback, then REPS alternating runs of `scorer score s3://… s3://… --actors N`
    (default 2) through a proxy holding each HTTP request MS ms. Prints medians of the
    work-window rows/s and their ratio to the first MS, requests and MB read per shard (the
    shard stats' requests and bytes_read), requests through the proxy, the actors' peak RSS;
    writes OUT/s3-latency.parquet.

    \b
    Example:
      scorer bench --out /tmp/bench
      scorer bench --sessions 8000000 --actors 1,2 --reps 5
      scorer bench --whole-job --sessions 4000000 --files 4000 --reps 3
      scorer bench --s3-latency 0,20,50 --sessions 4000000 --files 16 --reps 3
    """
    from rich.console import Console

    from scorer.jobs.bench import render, run_bench

    if whole_job:
        _bench_whole_job(out_dir, data, sessions, files, reps)
        return
    if s3_latency:
        _bench_s3_latency(out_dir, s3_latency, sessions, files, reps, actors)
        return

    try:
        counts = [int(n) for n in actors.split(",")] if actors else None
    except ValueError:
        raise click.BadParameter(
            f"expected numbers separated by commas, got {actors!r}", param_hint="--actors"
        ) from None
    result = run_bench(
        out_dir,
        data=data,
        sessions=sessions,
        files=files,
        reps=reps,
        actors=counts,
        batch_rows=batch_rows,
        address=address,
        model_dir=model_dir,
        on_message=lambda text: click.echo(text, err=True),
    )
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)  # the table is wider than a pipe's 80 columns
    console.print(render(result))
    for skipped in result.skipped:
        console.print(f"skipped {skipped}", markup=False)
    for name, path in result.files.items():
        console.print(f"{name}: {path}", markup=False)


def _bench_s3_latency(
    out_dir: Path, delays: str, sessions: int, files: int | None, reps: int, actors: str | None
) -> None:
    from rich.console import Console

    from scorer.jobs.latency import render_latency, run_latency_bench

    try:
        delays_ms = [float(ms) for ms in delays.split(",")]
        count = int(actors) if actors else 2
    except ValueError:
        raise click.BadParameter(
            f"expected milliseconds separated by commas and one actor count, got {delays!r}",
            param_hint="--s3-latency",
        ) from None
    result = run_latency_bench(
        out_dir,
        delays_ms,
        sessions=sessions,
        files=files or 16,
        reps=reps,
        actors=count,
        on_message=lambda text: click.echo(text, err=True),
    )
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)
    console.print(render_latency(result))
    console.print(f"measurements: {result.path}", markup=False)


def _bench_whole_job(
    out_dir: Path, data: str | None, sessions: int, files: int | None, reps: int
) -> None:
    from rich.console import Console

    from scorer.jobs.bench import bench_data
    from scorer.jobs.whole_job import render, run_whole_job

    def message(text: str) -> None:
        click.echo(text, err=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    data = data or bench_data(out_dir, sessions, files or 32, 0, message)
    result = run_whole_job(data, out_dir / "whole-job", reps=reps, on_message=message)
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)
    console.print(render(result))
    console.print(f"measurements: {out_dir / 'whole-job' / 'whole-job.parquet'}", markup=False)


# -- model commands: train, calibrate, inspect ------------------------------------------------

_FIGURES = (
    ("ROC AUC", "roc_auc"),
    ("Brier", "brier"),
    ("log loss", "log_loss"),
    ("ECE width", "ece_width"),
    ("ECE mass", "ece_mass"),
    ("mean score", "mean_score"),
)


# Options `train` and `calibrate` share; each command words the help for what it does with them.
# The defaults and the methods come from `scorer.model.card`, their owner.

data_argument = click.argument("data", type=click.Path(exists=True, path_type=Path))


def out_option(help: str) -> Callable[[_F], _F]:
    """`--out DIR`: the model directory a command writes."""
    return click.option(
        "--out",
        "out_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=help,
    )


def method_option(flag: str, help: str, default: str | None = None) -> Callable[[_F], _F]:
    """A calibration method: one of `CALIBRATION_METHODS`, shown in their order."""
    return click.option(
        flag,
        type=click.Choice(CALIBRATION_METHODS),
        default=default,
        show_default=default is not None,
        help=help,
    )


def seed_option(help: str) -> Callable[[_F], _F]:
    """`--seed S` of the stratified split of DATA."""
    return click.option(
        "--seed", type=click.IntRange(min=0), default=DEFAULT_SEED, show_default=True, help=help
    )


@cli.command("train")
@data_argument
@out_option("Model directory to write (model.onnx and model.json); created if needed.")
@method_option(
    "--calibration",
    "Calibration stage fitted on the held-out calibration split.",
    default=DEFAULT_CALIBRATION,
)
@seed_option("Seed of the stratified train/calibration/test split.")
@click.option("--name", help="Model name in the card. Default: the --out folder's name.")
@click.option(
    "--model-version", default=DEFAULT_VERSION, show_default=True, help="Model version in the card."
)
@handle_errors
def train_command(
    data: Path, out_dir: Path, calibration: str, seed: int, name: str | None, model_version: str
) -> None:
    """Train the intent model on labelled sessions in DATA and write a model directory.

    DATA is a Parquet file or a folder of them (hive partitions allowed) in the session schema
    with the label column `converted`; the bundled real sessions are
    scorer/data/sessions.parquet. A seeded stratified split gives train (60%), calibration
    (20%) and test (20%) rows: a class-weighted logistic regression is fitted on the first, the
    calibrator on the second, and the holdout metrics of the card come from the third.

    \b
    Example:
      scorer train scorer/data/sessions.parquet --out models/intent-v1 --calibration isotonic
    """
    from scorer.model.train import train

    with _shown_warnings():
        card = train(
            data,
            out_dir,
            calibration=calibration,
            seed=seed,
            name=name or out_dir.resolve().name,
            version=model_version,
        )
    click.echo(
        f"wrote {out_dir}: {card.name} {card.version}, calibration {card.calibration.method}"
    )
    click.echo(_holdout_table(card))


@cli.command("calibrate")
@data_argument
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Model directory to recalibrate. Default: the bundled model.",
)
@out_option("Model directory to write (may be --model itself, replaced atomically).")
@method_option("--method", "Calibration method. Default: the model's current one.")
@seed_option("Seed of the stratified calibration/test halves of DATA.")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Only dt partitions of DATA on or after this day.",
)
@click.option(
    "--until",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Only dt partitions of DATA on or before this day.",
)
@click.option(
    "--labels",
    "labels_from",
    type=click.Path(exists=True, path_type=Path),
    help="Parquet of key and label (late labels, as `scorer evaluate` reads them): DATA's "
    "sessions take their label from here, joined on the card's key column.",
)
@handle_errors
def calibrate_command(
    data: Path,
    model_dir: Path | None,
    out_dir: Path,
    method: str | None,
    seed: int,
    since: dt.datetime | None,
    until: dt.datetime | None,
    labels_from: Path | None,
) -> None:
    """Refit only the calibration stage of a model on newer labelled sessions in DATA.

    Base rates drift; the ranking model need not be retrained for that. Half of DATA
    (stratified, seeded) fits the calibrator, the other half gives the new holdout metrics. The
    logistic model is copied unchanged, so intent_raw stays bit-identical; the version gets a
    +cal.N suffix and the card's history records the change.

    \b
    Example:
      scorer calibrate history/dt=2026-11-27 --model models/intent-v1 --out models/intent-v1-nov
      scorer calibrate funnel/ --since 2026-11-20 --until 2026-11-22 --out models/funnel
      scorer calibrate sessions/ --labels late-labels/ --since 2026-11-20 --out models/nov
    """
    from scorer.model.train import recalibrate

    with _shown_warnings():
        card = recalibrate(
            data,
            model_dir,
            out_dir,
            method=method,
            seed=seed,
            since=since.date() if since else None,
            until=until.date() if until else None,
            labels_from=labels_from,
        )
    click.echo(
        f"wrote {out_dir}: {card.name} {card.version}, calibration {card.calibration.method}"
    )
    click.echo(_holdout_table(card))


@cli.command("import")
@click.argument("onnx_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Labelled sessions (a Parquet file or folder, with the label column): they fit the "
    "calibration, give the vocabularies, the drift reference and the holdout metrics.",
)
@out_option("Model directory to write (model.onnx and model.json); nothing is written on error.")
@click.option(
    "--features",
    metavar="COL,COL,...",
    help="The session columns of the graph's 2-D numeric input, in matrix order (required when "
    "the graph has one).",
)
@click.option(
    "--input",
    "input_map",
    multiple=True,
    metavar="GRAPH_INPUT=COLUMN",
    help="Feed a one-column graph input from this column (repeatable). Default: inputs named "
    "like a session column take it.",
)
@click.option(
    "--output",
    metavar="NAME[:INDEX]",
    help="The output holding the positive-class score, and its column. Default: the one [N, 2] "
    "float output (column 1) or ZipMap (key 1).",
)
@click.option(
    "--output-kind",
    type=click.Choice(OUTPUT_KINDS),
    help="Whether the score is a probability or a logit; required for one float per row.",
)
@click.option(
    "--calibration",
    type=click.Choice(("auto", *CALIBRATION_METHODS)),
    default="auto",
    show_default=True,
    help="Calibration stage; auto: the lowest out-of-fold log loss on the calibration half, "
    "none included.",
)
@click.option(
    "--range",
    "ranges",
    multiple=True,
    metavar="COL=MIN:MAX",
    help="Valid range of a numeric column, either end may be empty (repeatable); rows outside "
    "get status out_of_range:COL.",
)
@click.option("--name", help="Model name in the card. Default: the --out folder's name.")
@click.option(
    "--version",
    "model_version",
    default=DEFAULT_VERSION,
    show_default=True,
    help="Model version in the card.",
)
@click.option(
    "--key-column", default=KEY_COLUMN, show_default=True, help="Row key column of the card."
)
@click.option(
    "--label-column",
    default=LABEL_COLUMN,
    show_default=True,
    help="Label column of DATA (bool or 0/1).",
)
@seed_option("Seed of the stratified calibration/test halves of DATA and of the folds.")
@handle_errors
def import_command(
    onnx_file: Path,
    data: Path,
    out_dir: Path,
    features: str | None,
    input_map: tuple[str, ...],
    output: str | None,
    output_kind: str | None,
    calibration: str,
    ranges: tuple[str, ...],
    name: str | None,
    model_version: str,
    key_column: str,
    label_column: str,
    seed: int,
) -> None:
    """Make a model directory from a binary classifier exported to ONNX elsewhere.

    The graph is kept as it is (a ZipMap output is cut off at its input tensor); the scorer adds
    intent_raw (the model's own positive-class probability, bit for bit; a logit goes through a
    sigmoid) and intent_calibrated (a calibration stage in the same graph). LABELLED (--data) is split in
    stratified halves: the calibration half fits the calibrator (with auto, each method is
    scored by 5-fold out-of-fold log loss and the card records every score), the test half gives
    the holdout metrics. The card also gets the inputs as the graph declares them, string
    vocabularies and the drift reference from LABELLED, and where the file came from (its sha256,
    producer, these flags). Every command then works with the directory as with a trained one.

    Exit 2, with nothing written, for: no probability-like output or two candidates without
    --output, a multi-class model, --features of the wrong count, a graph input without a
    column, a string input over a numeric column, one float output without --output-kind, a
    graph with external data or an operator domain onnxruntime lacks, LABELLED with one class.

    \b
    Examples:
      scorer import lgbm.onnx --data labelled.parquet --out models/lgbm \\
          --features admin_pages,admin_seconds,info_pages,...
      scorer import pipeline.onnx --data labelled.parquet --out models/skl
      scorer import net.onnx --data labelled.parquet --out models/net --output-kind logit \\
          --features ...  --range page_value=0:
    """
    from scorer.model.importer import ImportOptions, import_model

    options = ImportOptions(
        features=_column_list(features) if features is not None else None,
        inputs=_pairs(input_map, "--input", "GRAPH_INPUT=COLUMN"),
        output=output,
        output_kind=output_kind,
        calibration=calibration,
        ranges={
            col: _bounds(col, text)
            for col, text in _pairs(ranges, "--range", "COL=MIN:MAX").items()
        },
        name=name,
        version=model_version,
        key_column=key_column,
        label_column=label_column,
        seed=seed,
    )
    with _shown_warnings():
        card = import_model(onnx_file, data, out_dir, options)
    assert card.imported is not None
    search = card.imported.calibration_search
    click.echo(
        f"wrote {out_dir}: {card.name} {card.version}, calibration {card.calibration.method}"
    )
    if "log_loss" in search:
        scores = ", ".join(f"{m} {v:.4f}" for m, v in search["log_loss"].items())
        click.echo(f"auto calibration, {search['folds']}-fold out-of-fold log loss: {scores}")
    click.echo(_holdout_table(card))


def _column_list(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(","))
    if not all(columns):
        raise click.BadParameter(f"empty column name in {text!r}", param_hint="--features")
    return columns


def _pairs(items: tuple[str, ...], flag: str, form: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected {form}, got {item!r}", param_hint=flag)
        pairs[key] = value
    return pairs


def _bounds(column: str, text: str) -> tuple[float | None, float | None]:
    low, sep, high = text.partition(":")
    try:
        bounds = (float(low) if low else None, float(high) if high else None)
    except ValueError:
        bounds = None
    if not sep or bounds is None or bounds == (None, None):
        raise click.BadParameter(
            f"expected {column}=MIN:MAX with numbers (one end may be empty), got {column}={text}",
            param_hint="--range",
        )
    return bounds


@cli.command("inspect")
@click.argument(
    "model_dir",
    metavar="MODEL",
    required=False,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--json", "as_json", is_flag=True, help="Print the card and the check as JSON.")
@handle_errors
def inspect_command(model_dir: Path | None, as_json: bool) -> None:
    """Show a model's card and check model.onnx against its sha256 (exit 2 on a mismatch).

    MODEL is a model directory; default: the bundled model. Shows inputs with kind, valid range
    and vocabulary, outputs, calibration, training data, holdout metrics raw vs calibrated, and
    the history of the directory.
    """
    import json

    from scorer.errors import ChecksumError
    from scorer.model.card import load_card, verify_checksum
    from scorer.model.runtime import default_model_dir

    model_dir = model_dir or default_model_dir()
    card = load_card(model_dir)
    try:
        verify_checksum(model_dir, card)
        problem = None
    except ChecksumError as exc:
        problem = str(exc)
    if as_json:
        check = {"checksum": "ok" if problem is None else "mismatch", "error": problem}
        click.echo(json.dumps({"model_dir": str(model_dir), **card.to_json(), **check}, indent=2))
    else:
        click.echo(_card_text(model_dir, card, problem))
    if problem is not None:
        if not as_json:
            click.echo(f"ChecksumError: {problem}", err=True)
        click.get_current_context().exit(ChecksumError.exit_code)


@contextlib.contextmanager
def _shown_warnings() -> Iterator[None]:
    """Print library warnings (e.g. isotonic fitted on few rows) as one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        click.echo(f"Warning: {warning.message}", err=True)


def _holdout_table(card: ModelCard) -> str:
    holdout = card.holdout
    lines = [
        f"holdout: {holdout.rows:,} rows, {holdout.positives:,} converted ({holdout.evaluated_on})",
        f"  {'':<12}{'raw':>10}{'calibrated':>12}",
    ]
    for label, key in _FIGURES:
        lines.append(f"  {label:<12}{holdout.raw[key]:>10.4f}{holdout.calibrated[key]:>12.4f}")
    return "\n".join(lines)


def _card_text(model_dir: Path, card: ModelCard, problem: str | None) -> str:
    def valid_range(spec: InputSpec) -> str:
        if spec.min is not None and spec.max is not None:
            return f"[{spec.min:g}, {spec.max:g}]"
        if spec.min is not None:
            return f">= {spec.min:g}"
        return f"<= {spec.max:g}" if spec.max is not None else ""

    cal, training = card.calibration, card.training
    lines = [
        f"{card.name} {card.version}  (created {card.created})",
        f"directory   {model_dir}",
        f"sha256      {card.sha256}  "
        + ("checksum ok" if problem is None else "CHECKSUM MISMATCH"),
        f"key column  {card.key_column}    label column  {card.label_column}",
        "",
        "inputs (in status precedence order)",
        f"  {'name':<18}{'dtype':<8}{'kind':<13}{'valid':<10}vocabulary",
    ]
    for spec in card.inputs:
        vocabulary = ""
        if spec.vocabulary is not None:
            vocabulary = f"{len(spec.vocabulary)}: " + " ".join(str(v) for v in spec.vocabulary)
        lines.append(
            f"  {spec.name:<18}{spec.dtype:<8}{spec.kind:<13}{valid_range(spec):<10}{vocabulary}"
        )
    lines += ["", "outputs"]
    lines += [f"  {out.name:<18}{out.dtype:<8}{out.description}" for out in card.outputs]
    knots = f", {cal.knots} knots" if cal.method == "isotonic" else ""
    splits = " / ".join(f"{name} {rows:,}" for name, rows in training.splits.items())
    lines += [
        "",
        f"calibration {cal.method}{knots}, fitted on {cal.fitted_rows:,} rows "
        f"({cal.fitted_positives:,} converted): {cal.fitted_on}",
        f"training    {training.rows:,} rows ({training.positives:,} converted) of {training.data}",
        f"            seed {training.seed}, splits {splits}, class weight {training.class_weight}",
        f"            {training.estimator}",
        *_imported_lines(card),
        "",
        _holdout_table(card),
        "",
        "history",
    ]
    lines += [f"  {entry.version:<16}{entry.created:<27}{entry.change}" for entry in card.history]
    return "\n".join(lines)


def _imported_lines(card: ModelCard) -> list[str]:
    imported = card.imported
    if imported is None:
        return []
    where = "" if imported.output_index is None else f", column {imported.output_index}"
    lines = [
        f"imported    from {imported.source} (sha256 {imported.source_sha256})",
        f"            by {imported.producer_name} {imported.producer_version}; score: "
        f"{imported.output_kind} of output {imported.output!r}{where}"
        + (" (a ZipMap, cut off at its input)" if imported.zipmap else ""),
    ]
    for graph_input in imported.inputs:
        lines.append(
            f"            input {graph_input.name!r} {graph_input.element_type} "
            f"[{', '.join('N' if d is None else str(d) for d in graph_input.shape)}] <- "
            + ", ".join(graph_input.columns)
        )
    scores = imported.calibration_search.get("log_loss")
    if scores:
        listed = ", ".join(f"{m} {v:.4f}" for m, v in scores.items())
        lines.append(f"            auto calibration (out-of-fold log loss): {listed}")
    return lines


def main() -> None:
    """The `scorer` console script (and ``python -m scorer``).

    Once a command has ended and everything it wrote is closed, the process exits without the
    interpreter's teardown: finalizing pyarrow, onnxruntime, thread pools and a plan of
    thousands of files took 0.15-0.6 s after the summary was printed (measured on 2 cores), with
    nothing left to write. An exception that escapes the command ends it the usual way.
    """
    try:
        cli(prog_name="scorer")
    except SystemExit as ended:
        code = ended.code
        if isinstance(code, str):  # sys.exit("message"): what Python would print
            print(code, file=sys.stderr)
            code = 1
        _exit_now(0 if code is None else code)


def _exit_now(code: int) -> None:
    if "logging" in sys.modules:  # Ray's handlers among them
        import logging

        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
