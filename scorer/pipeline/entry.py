"""``score(...)``: the library's entry to a scoring job, and the steps before the first shard.

The order of a run, each step owned elsewhere: options aliased and the config resolved; the
model loaded and INPUT and OUTPUT resolved (``context``); footers scanned (``plan``) and days
resolved (``days``); the job refused as a whole where it would be wrong (``preflight``, the
format checks of ``publish``); then, under the OUTPUT lock (``lock``), the commit records read
and cleaned up after a crash (``manifest``), the shards planned, and the run handed to the
driver (``driver``), which dispatches, retries, commits and publishes. A dry run stops at the
plan and writes nothing.

Only footers, shard descriptions, per-shard statistics and small calibration states pass through
the driver process; row data flows from storage through the workers back to storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

# Every scorer module a run needs is imported here, not lazily: a driver started by
# `ray job submit` runs from a working_dir that Ray may unpack again when the driver joins the
# cluster, and a module first imported after that can be missing for a moment.
from scorer.config import DEFAULT_SHARD_ROWS, JobConfig
from scorer.errors import ConfigError, Interrupted, NoInputFilesError
from scorer.model.runtime import load_model
from scorer.partitions import DATE_KEY, PartitionFilter
from scorer.pipeline.cluster import check_reachable, ray_connected
from scorer.pipeline.context import RunContext, new_run_id, new_summary
from scorer.pipeline.days import apply_commits, resolve_days
from scorer.pipeline.driver import Run
from scorer.pipeline.executors import private_ray_optional
from scorer.pipeline.ledger import RunSummary
from scorer.pipeline.local import balanced_shard_rows, quick_first_shard
from scorer.pipeline.lock import OutputLock
from scorer.pipeline.manifest import Manifest, options_digest
from scorer.pipeline.packing import plan_shards, with_quick_head
from scorer.pipeline.plan import FailedInput, InputFile, Plan
from scorer.pipeline.preflight import (
    check_day_folders,
    check_model_columns,
    check_output_outside,
)
from scorer.pipeline.progress import Progress
from scorer.pipeline.publish import check_format, open_table
from scorer.pipeline.scan import scan_inputs, with_output_names
from scorer.pipeline.stats import utc_now
from scorer.storage import StorageOptions, resolve

__all__ = ["score"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

RAY_SHORTHANDS = ("actors", "address", "cpus_per_actor", "memory_per_actor_mb")
"""``score``'s keywords that stand for the ``[ray]`` section's keys (``actors=2`` is
``ray__actors=2``)."""


def _interruptible(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Ctrl-C or SIGTERM outside the dispatch loop (the footer scan of a large input takes a
    while) is an interruption too: exit 130, not a crash."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return function(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted(
                "interrupted: what was committed stays committed; rerun the same command to resume"
            ) from None

    return wrapper


@_interruptible
def score(
    input: str | None = None,
    output: str | None = None,
    *,
    config: JobConfig | None = None,
    progress: Progress | None = None,
    dry_run: bool = False,
    **overrides: Any,
) -> RunSummary:
    """Score INPUT into OUTPUT; the library call behind `scorer score` and `jobs/*.py`.

    `overrides` are `JobConfig` fields (`actors=2` is a shorthand for `ray__actors=2`); they win
    over `config`. Returns the run summary; raises `ScorerError` subclasses for preflight
    problems (nothing written) and `Interrupted` on SIGINT.
    """
    for short in RAY_SHORTHANDS:
        if short in overrides:
            overrides[f"ray__{short}"] = overrides.pop(short)
    config = (config or JobConfig()).with_overrides(input=input, output=output, **overrides)
    if not config.input or not config.output:
        raise ConfigError("both INPUT and OUTPUT are required (arguments or `input`/`output` keys)")
    progress = progress or Progress()
    started_wall, started = utc_now(), time.perf_counter()
    context = _prepare(config, config.input, config.output)
    items = _scan(context)
    context, items = _with_days(context, items)
    check_model_columns(
        context.input.uri, _readable(items), context.model.card, context.key_column, config.keep
    )
    if not dry_run:
        check_reachable(config.ray.address)

    check_format(context.output, config)
    if dry_run:
        manifest = Manifest.load(context.output)
        manifest.forget_records_without_files()
        items = _identified(manifest, context, items, on_storage=False)
        if not config.overwrite:
            manifest.check(
                model_name=context.model.card.name,
                model_sha256=context.model.card.sha256,
                options_digest=context.options_digest,
            )
        plan = _plan(context, items, manifest)
        summary = new_summary(context, plan, "dry-run")
        summary.plan, summary.plan_text = plan.to_dict(), plan.describe()
        return summary

    lock = OutputLock(context.output, context.run_id)
    with _warnings_shown_by(progress):  # a stale lock taken over, an unreadable commit record
        lock.acquire()
    try:
        table = open_table(context.output, config)
        with _warnings_shown_by(progress):
            manifest = Manifest.load(context.output, published=table)
        manifest.fence = lock.check  # every record and deletion: see `lock`
        manifest.claim(
            model_name=context.model.card.name,
            model_sha256=context.model.card.sha256,
            options_digest=context.options_digest,
            run_id=context.run_id,
            overwrite=config.overwrite,
        )
        report = manifest.cleanup(context.run_id)
        if report.orphans or report.temp_runs or report.rolled_forward:
            progress.message(
                f"cleaned up after an earlier crash: {len(report.orphans)} unreferenced score "
                f"file(s), {len(report.temp_runs)} temporary folder(s), "
                f"{len(report.rolled_forward)} committed score file(s) copied into place"
            )
        if report.lost:
            rows = sum(r.rows for r in report.lost)
            progress.message(
                f"{len(report.lost)} committed shard(s) whose score file is gone ({rows:,} rows) "
                "will be scored again"
            )
        items = _identified(manifest, context, items, progress=progress)
        manifest.supersede(_readable(items))
        # A table's data files are immutable: each shard's file is named for this run.
        plan = _plan(context, items, manifest, run_id=context.run_id if table is not None else "")
        run = Run(context, plan, manifest, progress, started_wall, started, table)
        try:
            return run.execute()
        finally:
            manifest.discard_temp(context.run_id)
    finally:
        lock.release()


@contextlib.contextmanager
def _warnings_shown_by(progress: Progress) -> Iterator[None]:
    """The library's own warnings become progress messages: one line a person reads, not a
    Python warning with a file name and a source line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        progress.message(f"warning: {warning.message}")


def _identified(
    manifest: Manifest,
    context: RunContext,
    items: Sequence[InputFile | FailedInput],
    *,
    on_storage: bool = True,
    progress: Progress | None = None,
) -> list[InputFile | FailedInput]:
    """The inputs under the names their scores go by, once the records of earlier releases
    name files as this one does (docs/input.md, "What identifies a file"); a dry run changes nothing
    on storage (``on_storage=False``)."""
    doubles = manifest.adopt_identities(context.input)
    manifest.drop(doubles, on_storage=on_storage)
    if doubles and progress is not None:
        progress.message(
            f"removed {len(doubles)} committed shard(s) that held a file's rows a second time "
            "(an earlier release scored that file through two roots)"
        )
    manifest.adopt_legacy_fingerprints(_readable(items))
    return with_output_names(items, manifest.names())


def _prepare(config: JobConfig, input: str, output: str) -> RunContext:
    model = load_model(config.model, threads=config.threads_per_actor)
    card = model.card
    key_column = config.key_column or card.key_column
    label_column = config.label_column or card.label_column
    storage = StorageOptions(**config.storage.location_options())
    source = resolve(input, storage)
    target = resolve(output, storage)
    check_output_outside(target, source)
    digest = options_digest(key_column, config.keep)
    # The bytes load_model verified, not the folder read again: a `scorer calibrate --out` in
    # place meanwhile would ship workers a model nobody verified (and the records would name
    # the other one).
    return RunContext(
        config, new_run_id(), model, key_column, label_column, source, target, digest, model.files
    )


def _readable(items: Sequence[InputFile | FailedInput]) -> list[InputFile]:
    return [item for item in items if isinstance(item, InputFile)]


def _selection(config: JobConfig) -> PartitionFilter:
    return PartitionFilter.parse(
        [f"{k}={v}" for k, values in config.partition.items() for v in values],
        config.since,
        config.until,
    )


def _with_days(
    context: RunContext, items: list[InputFile | FailedInput]
) -> tuple[RunContext, list[InputFile | FailedInput]]:
    """Where each file's days come from, and which row groups a day filter reads of those
    whose days are a column (`days`); files without a day that a day filter leaves out go."""
    config = context.config
    selection = _selection(config)
    plan = resolve_days(
        items,
        selection,
        column=config.date_column,
        timezone=config.date_timezone,
        day_folders=config.format.is_table,
        filesystem=context.input.filesystem,
    )
    kept = [item for item in items if item.relpath not in plan.dropped]
    # Under a table format every day-column file has its row groups listed: none listed
    # without a day filter is a file of no rows, not one the filter left out.
    filtered = selection.since or selection.until or DATE_KEY in dict(selection.partitions)
    if not kept or (
        filtered
        and all(
            isinstance(item, InputFile) and plan.groups.get(item.identity) == {} for item in kept
        )
    ):
        raise NoInputFilesError(
            f"{context.input.uri}: no Parquet file selected by {selection.describe()}"
            + (f" (day column '{plan.source.column}')" if plan.source.column else "")
        )
    return dataclasses.replace(context, days=plan), kept


def _scan(context: RunContext) -> list[InputFile | FailedInput]:
    config = context.config
    selection = _selection(config)
    # Local footers are read by a process per core where many files make it pay; never with a
    # Ray connected in this process (a fork would copy its threads and sockets).
    processes = 1 if ray_connected() else os.cpu_count() or 1
    return scan_inputs(context.input, selection, processes=processes, day_columns=True)


def _plan(
    context: RunContext,
    items: Sequence[InputFile | FailedInput],
    manifest: Manifest,
    *,
    run_id: str = "",
) -> Plan:
    files = _readable(items)
    committed = None
    if not context.config.overwrite:
        committed = manifest.committed_ranges(
            files, model_sha256=context.model.card.sha256, options_digest=context.options_digest
        )
    groups = None
    if context.days is not None:
        row_groups = {f.relpath: len(f.row_group_rows) for f in files}
        days = context.days.by_relpath(files)
        if days.source.day_folders and committed:
            check_day_folders(
                context.output, manifest.records.values(), days.groups, context.config.format
            )
        committed, groups = apply_commits(days, committed or {}, row_groups)
    shard_rows = context.config.shard_rows
    in_process_first = private_ray_optional(context.config)
    if shard_rows == DEFAULT_SHARD_ROWS and in_process_first:
        # The default, on this machine's cores: every worker gets several shards.
        rows = sum(f.rows for f in files)
        shard_rows = balanced_shard_rows(shard_rows, rows, os.cpu_count() or 1)
    plan = plan_shards(
        items,
        shard_rows,
        committed,
        groups,
        day_folders=context.days is not None and context.days.source.day_folders,
        run_id=run_id,
    )
    # In-process first: a quick first commit whatever the files' shape. With actors (a cluster,
    # an actor count) the shards are as planned.
    return with_quick_head(plan, quick_first_shard) if in_process_first else plan
