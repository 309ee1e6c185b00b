"""The driver loop: preflight, plan, dispatch shards to actors, retry, commit, record.

Only footers, shard descriptions, per-shard statistics and small calibration states pass through
the driver; row data flows from storage through the actors back to storage.

`_Run` is the loop only: it dispatches shards to `pool.ActorPool`, commits results through
`manifest.Manifest` on a commit thread, asks `retry` whether a failed attempt goes back in line,
and tells `ledger.Ledger` what happened, which keeps the stats and writes them at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import os
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyarrow as pa

# Every scorer module the driver needs is imported here, not lazily: a driver started by
# `ray job submit` runs from a working_dir that Ray may unpack again when the driver joins the
# cluster, and a module first imported after that can be missing for a moment.
from scorer.config import DEFAULT_SHARD_ROWS, TABLE_FORMATS, JobConfig
from scorer.errors import (
    ConfigError,
    Interrupted,
    LockLostError,
    MissingColumnError,
    NoInputFilesError,
    OutputConflictError,
    ScorerError,
)
from scorer.model.card import InputSpec
from scorer.model.runtime import IntentModel, load_model
from scorer.partitions import DATE_KEY, PartitionFilter
from scorer.pipeline.alerts import score_hint, table_alerts
from scorer.pipeline.cluster import check_reachable, ray_connected, ray_session, resolve_address
from scorer.pipeline.days import DayPlan, DaySource, apply_commits, resolve_days
from scorer.pipeline.footers import footers_by_digest
from scorer.pipeline.layout import CALIBRATION, DRIFT, OutputLayout
from scorer.pipeline.ledger import Ledger, RunInfo, RunSummary
from scorer.pipeline.local import (
    InProcessThenActors,
    InProcessWorker,
    RayInBackground,
    balanced_shard_rows,
    in_process_note,
    quick_first_shard,
    ray_pays_off,
    worker_processes_for,
)
from scorer.pipeline.lock import OutputLock
from scorer.pipeline.manifest import Manifest, options_digest
from scorer.pipeline.outcome import ShardOutcome
from scorer.pipeline.packing import plan_shards, split_off, with_quick_head
from scorer.pipeline.plan import FailedInput, InputFile, Plan, Shard
from scorer.pipeline.pool import ActorPool, PoolSpec, Workers
from scorer.pipeline.preflight import check_column_types_agree, first_file_per_schema
from scorer.pipeline.processes import (
    InProcessAndProcesses,
    start_worker_processes,
    stop_worker_processes,
)
from scorer.pipeline.progress import Progress
from scorer.pipeline.retry import Failure, commit_failure, will_retry
from scorer.pipeline.scan import scan_inputs, with_output_names
from scorer.pipeline.shipping import ActorSettings
from scorer.pipeline.stats import RunStatus, utc_now
from scorer.pipeline.tables import (
    ScoresTableFormat,
    check_format,
    open_table,
    plan_scope,
    with_run_names,
)
from scorer.storage import Location, StorageOptions, resolve

__all__ = ["RunSummary", "new_run_id", "score"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class _Context:
    """What every step of a run needs, resolved once."""

    config: JobConfig
    run_id: str
    model: IntentModel
    key_column: str
    label_column: str | None
    input: Location
    output: Location
    options_digest: str
    # Read before Ray starts: under `ray job submit` joining the cluster can unpack the job's
    # working directory (which holds the bundled model) again, and a read then finds no file.
    model_files: dict[str, bytes] = field(default_factory=dict, repr=False)
    days: DayPlan | None = None
    """Where the files' days come from and what a day filter reads of them (`days`)."""


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent drivers."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


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
    for short in ("actors", "address", "cpus_per_actor", "memory_per_actor_mb"):
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
    _preflight_columns(context, items)
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
        summary = _new_summary(context, plan, "dry-run")
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
        plan = _plan(context, items, manifest)
        if table is not None:  # a table's data files are immutable: see `tables`
            plan = with_run_names(plan, context.run_id)
        run = _Run(context, plan, manifest, progress, started_wall, started, table)
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
    context: _Context,
    items: Sequence[InputFile | FailedInput],
    *,
    on_storage: bool = True,
    progress: Progress | None = None,
) -> list[InputFile | FailedInput]:
    """The inputs under the names their scores go by, once the records of earlier releases
    name files as this one does (README: "What identifies a file"); a dry run changes nothing
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


def _new_summary(context: _Context, plan: Plan, status: RunStatus) -> RunSummary:
    return RunSummary(
        run_id=context.run_id,
        status=status,
        input=context.input.uri,
        output=context.output.uri,
        rows_skipped=plan.skipped_rows,
        shards_skipped=len(plan.skipped),
        fail_on_alert=context.config.monitor.fail_on_alert,
    )


def _prepare(config: JobConfig, input: str, output: str) -> _Context:
    model = load_model(config.model, threads=config.threads_per_actor)
    card = model.card
    key_column = config.key_column or card.key_column
    label_column = config.label_column or card.label_column
    storage = StorageOptions(**config.storage.location_options())
    source = resolve(input, storage)
    target = resolve(output, storage)
    if type(source.filesystem) is type(target.filesystem) and _inside(target, source):
        raise OutputConflictError(
            f"OUTPUT {target.uri} is inside INPUT {source.uri}: its score files would be read as "
            "input by the next run"
        )
    digest = options_digest(key_column, config.keep)
    # The bytes load_model verified, not the folder read again: a `scorer calibrate --out` in
    # place meanwhile would ship workers a model nobody verified (and the records would name
    # the other one).
    return _Context(
        config, new_run_id(), model, key_column, label_column, source, target, digest, model.files
    )


def _private_ray_optional(config: JobConfig) -> bool:
    """Whether the run may do without Ray: no cluster named, no actor count asked for, and no
    Ray this process is connected to (a notebook's, a test session's, a Ray job's)."""
    return (
        resolve_address(config.ray.address) is None
        and config.ray.actors is None
        and not ray_connected()
    )


def _actor_settings(context: _Context) -> ActorSettings:
    """What a worker scoring shards needs: settings without the driver's config, credentials
    inside (an actor may run on another node)."""
    config = context.config
    return ActorSettings(
        model_files=context.model_files,
        model_sha256=context.model.card.sha256,
        threads=config.threads_per_actor,
        batch_rows=config.batch_rows,
        key_column=context.key_column,
        keep=config.keep,
        label_column=context.label_column,
        run_id=context.run_id,
        input_location=context.input.with_credentials(),
        layout=OutputLayout(context.output.with_credentials()),
        read_ahead=config.storage.read_ahead,
        requests_in_flight=config.storage.requests_in_flight,
        days=context.days.source if context.days is not None else DaySource(None),
    )


def _pool_spec(context: _Context) -> PoolSpec:
    """What the actors are shipped, and what each takes of the cluster."""
    config = context.config
    return PoolSpec(
        _actor_settings(context),
        actors=config.ray.actors,
        cpus_per_actor=config.ray.cpus_per_actor,
        memory_per_actor_mb=config.ray.memory_per_actor_mb,
        # On object storage an actor holds a second shard, opened and read ahead while the
        # first is scored: every open is three round trips, every file one more to upload.
        shards_per_actor=1 if context.input.is_local else 2,
    )


def _inside(location: Location, parent: Location) -> bool:
    """Whether ``location`` is ``parent`` or below it; locally with symlinks resolved (an OUTPUT
    reached through a link into INPUT is inside it)."""
    path, root = location.path, parent.path
    if location.is_local:
        path, root = os.path.realpath(path), os.path.realpath(root)
    path, root = path.rstrip("/"), root.rstrip("/")
    return path == root or path.startswith(root + "/")


def _readable(items: Sequence[InputFile | FailedInput]) -> list[InputFile]:
    return [item for item in items if isinstance(item, InputFile)]


def _selection(config: JobConfig) -> PartitionFilter:
    return PartitionFilter.parse(
        [f"{k}={v}" for k, values in config.partition.items() for v in values],
        config.since,
        config.until,
    )


def _with_days(
    context: _Context, items: list[InputFile | FailedInput]
) -> tuple[_Context, list[InputFile | FailedInput]]:
    """Where each file's days come from, and which row groups a day filter reads of those
    whose days are a column (`days`); files without a day that a day filter leaves out go."""
    config = context.config
    selection = _selection(config)
    plan = resolve_days(
        items,
        selection,
        column=config.date_column,
        timezone=config.date_timezone,
        day_folders=config.format in TABLE_FORMATS,
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


def _scan(context: _Context) -> list[InputFile | FailedInput]:
    config = context.config
    selection = _selection(config)
    # Local footers are read by a process per core where many files make it pay; never with a
    # Ray connected in this process (a fork would copy its threads and sockets).
    processes = 1 if ray_connected() else os.cpu_count() or 1
    return scan_inputs(context.input, selection, processes=processes, day_columns=True)


def _preflight_columns(context: _Context, items: Sequence[InputFile | FailedInput]) -> None:
    """A model column missing (or mistyped) in *every* readable file makes the whole job wrong;
    one bad file only fails its own shards."""
    readable = _readable(items)
    if not readable:
        return  # every footer unreadable: each file fails as its own shard, exit 1
    # Each distinct schema once: the loop cost 0.5 s over 4,000 small files' schemas.
    distinct = first_file_per_schema(readable)
    schemas = [f.schema for f in distinct]
    card = context.model.card
    wanted: list[tuple[str, InputSpec | None]] = [(spec.name, spec) for spec in card.inputs]
    wanted += [(context.key_column, None)] + [(name, None) for name in context.config.keep]
    for name, spec in wanted:
        types = [schema.field(name).type for schema in schemas if name in schema.names]
        if not types:
            raise MissingColumnError(
                f"{context.input.uri}: column '{name}' is in none of the {len(readable)} input "
                f"file(s) (the model {card.name} {card.version} needs it)"
                if spec is not None
                else f"{context.input.uri}: column '{name}' (key or kept) is in none of the input files"
            )
        if spec is not None and not any(_usable(spec, t) for t in types):
            raise MissingColumnError(
                f"{context.input.uri}: column '{name}' has type {types[0]} in every file; the "
                f"model needs a {spec.kind} column of {spec.dtype}"
            )
    _check_decimals(distinct, card.inputs)
    # Copied into every score file: of two types across files, readers could not union them.
    # The first file of each schema stands for its others there too (`check_column_types_agree`).
    check_column_types_agree(distinct, [context.key_column, *context.config.keep])


MAX_DECIMAL_DIGITS = 38
"""The widest decimal a numeric model column takes (decimal128): wider ones (decimal256, such as
BigQuery's BIGNUMERIC) hold values no float32 feed can say."""


def _check_decimals(files: Sequence[InputFile], inputs: Sequence[InputSpec]) -> None:
    for f in files:
        for spec in inputs:
            if spec.kind != "numeric" or spec.name not in f.schema.names:
                continue
            kind = f.schema.field(spec.name).type
            if pa.types.is_decimal(kind) and kind.precision > MAX_DECIMAL_DIGITS:
                raise MissingColumnError(
                    f"{f.path}: column '{spec.name}' has type {kind}, wider than the "
                    f"{MAX_DECIMAL_DIGITS} digits a numeric model column takes; cast it to "
                    "decimal(38, s) or a float in the export"
                )


def _usable(spec: InputSpec, arrow_type: Any) -> bool:  # a pyarrow.DataType
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if spec.kind == "numeric":  # decimals convert exactly where they can (`encode`)
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if spec.kind == "boolean":
        return pa.types.is_boolean(t)
    if spec.dtype == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    return pa.types.is_integer(t)


def _plan(context: _Context, items: Sequence[InputFile | FailedInput], manifest: Manifest) -> Plan:
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
            _check_day_folders(context, manifest, days.groups)
        committed, groups = apply_commits(days, committed or {}, row_groups)
    shard_rows = context.config.shard_rows
    if shard_rows == DEFAULT_SHARD_ROWS and _private_ray_optional(context.config):
        # The default, on this machine's cores: every worker gets several shards.
        rows = sum(f.rows for f in files)
        shard_rows = balanced_shard_rows(shard_rows, rows, os.cpu_count() or 1)
    plan = plan_shards(
        items,
        shard_rows,
        committed,
        groups,
        day_folders=context.days is not None and context.days.source.day_folders,
    )
    # In-process first: a quick first commit whatever the files' shape. With actors (a cluster,
    # an actor count) the shards are as planned.
    return (
        with_quick_head(plan, quick_first_shard) if _private_ray_optional(context.config) else plan
    )


def _check_day_folders(context: _Context, manifest: Manifest, files: Iterable[str]) -> None:
    """A table's day partitions cannot hold scores a plain Parquet run committed of a day
    column's file (the day a column of them, not their folder): refused before any scoring."""
    day_column_files = set(files)
    for record in manifest.records.values():
        if any(p.input_relpath in day_column_files for p in record.pieces) and not any(
            folder.startswith(f"{DATE_KEY}=") for folder in record.output_relpath.split("/")[:-1]
        ):
            raise OutputConflictError(
                f"{context.output.child(record.output_relpath).uri}: scores of the day column "
                f"of {record.pieces[0].input_relpath} committed by a plain Parquet run; "
                f"--format {context.config.format} partitions them by day: --overwrite rescores"
            )


_COMMIT_POLL_S = 0.02  # how often the loop looks at commits in progress while it waits on actors


@dataclass
class _Attempt:
    shard: Shard
    attempt: int
    actor_index: int
    started_at: dt.datetime


class _Run:
    """One run under the lock: start actors, dispatch, retry, commit; the ledger records."""

    def __init__(
        self,
        context: _Context,
        plan: Plan,
        manifest: Manifest,
        progress: Progress,
        started_wall: dt.datetime,
        started: float,
        table: ScoresTableFormat | None = None,
    ) -> None:
        self.context, self.plan, self.manifest, self.progress = context, plan, manifest, progress
        self.table = table
        self.started = started
        card, config = context.model.card, context.config
        info = RunInfo(
            started_at=started_wall,
            batch_rows=config.batch_rows,
            shard_rows=config.shard_rows,
            model_name=card.name,
            model_version=card.version,
            model_sha256=card.sha256,
        )
        self.ledger = Ledger(_new_summary(context, plan, "completed"), info, card.reference)
        self.summary = self.ledger.summary
        if context.days is not None:
            self.summary.row_groups_pruned = context.days.row_groups_pruned
        self.work: tuple[float, float] | None = None  # first dispatch to last result
        self.files = {f.identity: f for f in plan.files}

    # -- the run --------------------------------------------------------------------------

    def execute(self) -> RunSummary:
        plan, progress = self.plan, self.progress
        for shard in plan.skipped:
            self.ledger.skipped(shard)
        if plan.skipped:
            progress.message(
                f"resuming: {len(plan.skipped):,} shard(s), {plan.skipped_rows:,} rows already "
                "committed for this input and model are skipped"
            )
        for failed in plan.failed:
            # A file whose footer cannot be read fails as one shard; the rest of the run goes on.
            error = self.ledger.failed_input(failed)
            progress.shard_failed(shard_id=failed.shard_id, error=error, will_retry=False)
        progress.start(
            total_rows=plan.rows, total_shards=len(plan.shards), skipped_rows=plan.skipped_rows
        )
        try:
            if plan.shards and not self._stop_dispatching():
                self._score_all()
            elif plan.shards:  # unreadable footers alone reached --max-failed-shards
                self._not_started(len(plan.shards))
            self._publish()
        except KeyboardInterrupt:
            self.summary.status = "interrupted"
        except BaseException:
            self.summary.status = "failed"  # the error goes on; the stats must not say completed
            raise
        finally:
            progress.finish()
            self.ledger.close(started=self.started, work=self.work)
            self.ledger.write(self.context.output)
        if self.summary.status == "interrupted":
            raise Interrupted(
                f"run {self.context.run_id} interrupted: {self.summary.shards_committed} shard(s) "
                f"committed, in-flight shards abandoned; rerun the same command to resume"
            )
        # From the tables just written, so that a library call or a Ray job gets them (and exit 3)
        # as the CLI does.
        written = self.ledger.written
        self.summary.alerts = table_alerts(
            written.get(DRIFT),
            written.get(CALIBRATION),
            self.context.config.monitor,
            score_hint(self.context.input.uri, self.context.config.model),
        )
        return self.summary

    def _publish(self) -> None:
        """With a table format, the run's one commit: everything committed becomes visible at
        once (what an interrupted earlier run committed too); see `tables`."""
        if self.table is None:
            return
        self.manifest.fence()
        publication = self.table.publish(
            self.manifest.records.values(), self.context.run_id, plan_scope(self.plan)
        )
        for name, value in publication.summary.items():
            setattr(self.summary, name, value)
        if publication.added or publication.removed:
            self.progress.message(
                f"published {publication.label}: {publication.added} file(s) "
                f"added, {publication.removed} removed"
            )

    def _score_all(self) -> None:
        config = self.context.config
        if _private_ray_optional(config):
            self._score_in_process_first()
            return
        with ray_session(config.ray.address) as cluster:
            pool = ActorPool(_pool_spec(self.context), cluster, wanted=len(self.plan.shards))
            self.summary.actors, self.summary.nodes, self.summary.cpus = (
                pool.size,
                cluster.nodes,
                cluster.cpus,
            )
            pool.wait_ready()
            self.summary.setup_seconds = time.perf_counter() - self.started
            self.progress.message(
                f"{pool.size} actor(s) on {cluster.nodes} node(s) ready in "
                f"{self.summary.setup_seconds:.1f} s"
            )
            self._run_workers(pool)

    def _score_in_process_first(self) -> None:
        """No cluster, no actor count, no Ray connected: the driver scores from the first
        second; a private Ray starts beside it only where it pays off (`local`)."""
        cpus = os.cpu_count() or 1
        summary = self.summary
        summary.executor = "in-process"
        summary.actors, summary.nodes, summary.cpus = 1, 1, float(cpus)
        settings = _actor_settings(self.context)
        # The plan's parsed footers: the in-process worker and forked processes need not parse
        # them again.
        footers = footers_by_digest(self.plan.files)
        in_process = functools.partial(InProcessWorker, settings, self.context.model, footers)
        if not ray_pays_off(self.plan.rows, cpus):
            self.progress.message(in_process_note(self.plan.rows, cpus))
            processes = self.context.config.processes
            if processes is None:
                pieces = sum(len(shard.pieces) for shard in self.plan.shards)
                shards = len(self.plan.shards)
                processes = worker_processes_for(self.plan.rows, pieces, shards, cpus)
            if not processes:
                self._run_workers(in_process())
                return
            self.progress.message(f"{processes} worker process(es) to start beside it")
            # Forked first, while this process is one thread (`start_worker_processes`).
            forked = start_worker_processes(settings, processes, footers)
            try:
                local = in_process()
            except BaseException:
                stop_worker_processes(forked)
                raise
            workers = InProcessAndProcesses(local, forked)
            try:
                self._run_workers(workers)
            finally:
                self._note_processes(workers)
            return
        worker = in_process()
        self.progress.message(
            f"scoring in-process while a private Ray and {cpus} actor(s) start beside it"
        )
        ray = RayInBackground(_pool_spec(self.context), wanted=len(self.plan.shards))
        try:
            self._run_workers(InProcessThenActors(worker, ray))
        finally:
            self._note_ray(ray)

    def _note_processes(self, workers: InProcessAndProcesses) -> None:
        summary = self.summary
        for error in workers.errors:
            self.progress.message(error)
        if workers.admitted:
            summary.executor = "in-process+processes"
            summary.actors = 1 + len(workers.admitted)
            self.progress.message(
                f"{len(workers.admitted)} worker process(es) joined the in-process worker, "
                f"ready {workers.ready_after:.1f} s after they were started"
            )
        else:
            self.progress.message(
                "the job ended before a worker process was ready: scored in-process alone"
            )

    def _note_ray(self, ray: RayInBackground) -> None:
        summary = self.summary
        if ray.error is not None:
            self.progress.message(f"Ray could not start ({ray.error}): scored in-process")
        elif ray.pool is not None and ray.cluster is not None and ray.joined:
            summary.executor = "in-process+ray"
            summary.actors = 1 + ray.pool.size
            summary.nodes, summary.cpus = ray.cluster.nodes, ray.cluster.cpus
            self.progress.message(
                f"{ray.pool.size} actor(s) joined the in-process worker after "
                f"{ray.ready_after:.1f} s"
            )
        else:
            self.progress.message(
                "the job ended before the private Ray was up: scored in-process alone"
            )

    def _run_workers(self, workers: Workers) -> None:
        if self.table is not None:
            self.table.warm_up()
        if not self.summary.setup_seconds:
            self.summary.setup_seconds = time.perf_counter() - self.started
        self.progress.dispatching()
        try:
            self._dispatch(workers)
        finally:
            workers.shutdown()

    def _dispatch(self, workers: Workers) -> None:
        queue: deque[tuple[Shard, int]] = deque((shard, 1) for shard in self.plan.shards)
        in_flight: dict[Any, _Attempt] = {}
        # Commits run on their own thread: their fsyncs (~30 ms per shard on local disk) would
        # otherwise hold up giving the actor, and every other actor back first, its next shard
        # (measured: ~5% of a 1M-row shard's time idle per actor).
        committer = ThreadPoolExecutor(1, thread_name_prefix="commit")
        committing: dict[Future[None], tuple[_Attempt, ShardOutcome]] = {}
        work_started = time.perf_counter()
        try:
            while queue or in_flight or committing:
                self._submit_to_idle(workers, queue, in_flight)
                self._settle_commits(committing, queue, block=False)
                if not in_flight and not (queue and workers.has_starting()):
                    if not committing:
                        break  # done, or dispatch stopped by --max-failed-shards
                    self._settle_commits(committing, queue, block=True)  # may retry a shard
                    continue
                # Replacement actors are waited on too: one that cannot be placed (its node is
                # gone, the rest are full) gets no shard, and fails the run only when no actor is left.
                timeout = _COMMIT_POLL_S if committing else 1.0
                for handle in workers.wait(list(in_flight), timeout):
                    attempt = in_flight.pop(handle)
                    result = workers.fetch(handle, attempt.actor_index)
                    if isinstance(result, Failure):
                        queue.extend(self._failed(attempt, result))
                    else:
                        future = committer.submit(self._commit, attempt.shard, result)
                        committing[future] = (attempt, result)
                workers.poll(busy=len(in_flight))
            if queue:
                self._not_started(len(queue))
        except KeyboardInterrupt:
            self._settle_commits(committing, queue, block=True)  # whole already; a moment each
            for attempt in in_flight.values():
                self.ledger.interrupted(attempt.shard, attempt.attempt, attempt.started_at)
            raise
        finally:
            committer.shutdown(wait=True)  # no commit may run once the lock is released
            self.work = (work_started, time.perf_counter())

    def _submit_to_idle(
        self, workers: Workers, queue: deque[tuple[Shard, int]], in_flight: dict[Any, _Attempt]
    ) -> None:
        while queue and workers.idle and not self._stop_dispatching():
            shard, attempt = queue.popleft()
            index = workers.idle.pop()
            handle = workers.submit(index, shard, attempt, self._has_label(shard))
            in_flight[handle] = _Attempt(shard, attempt, index, utc_now())

    def _commit(self, shard: Shard, outcome: ShardOutcome) -> None:
        """On the commit thread: make the shard's output visible and durable (`Manifest`)."""
        self.manifest.commit_shard(
            shard,
            run_id=self.context.run_id,
            rows=outcome.rows,
            model_sha256=self.context.model.card.sha256,
            options_digest=self.context.options_digest,
            rows_read=outcome.rows_read,
        )

    def _settle_commits(
        self,
        committing: dict[Future[None], tuple[_Attempt, ShardOutcome]],
        queue: deque[tuple[Shard, int]],
        *,
        block: bool,
    ) -> None:
        """Record the commits that ended (all of them if `block`); a refused one is retried."""
        if block:
            futures_wait(committing)
        for future in [future for future in committing if future.done()]:
            attempt, outcome = committing.pop(future)
            try:
                future.result()
            except LockLostError:
                raise  # another run holds OUTPUT now: nothing more may be committed
            except ScorerError as exc:  # the commit refused the shard
                queue.extend(self._failed(attempt, commit_failure(exc)))
                continue
            self.ledger.committed(attempt.shard, attempt.attempt, outcome)
            self.progress.shard_done(shard_id=attempt.shard.shard_id, rows=outcome.rows)

    def _failed(self, attempt: _Attempt, failure: Failure) -> list[tuple[Shard, int]]:
        """Record a failed attempt; what goes back in line (the shard, or a packed shard's
        files but the one that cannot be read)."""
        shard = attempt.shard
        poison = failure.input_path
        pieces = {p.input_path for p in shard.pieces}
        if poison in pieces and len(pieces) > 1 and not failure.retryable:
            # A poison file fails alone; the shard's other files are scored in this run.
            shard, rest = split_off(shard, poison)
            self._record_failure(_Attempt(shard, attempt.attempt, 0, attempt.started_at), failure)
            return [] if rest is None else [(rest, 1)]
        if self._record_failure(attempt, failure):
            return [(shard, attempt.attempt + 1)]
        return []

    def _record_failure(self, attempt: _Attempt, failure: Failure) -> bool:
        """Tell the ledger and the progress; True if the shard is tried again."""
        shard = attempt.shard
        retry = will_retry(failure, attempt.attempt, self.context.config.max_attempts)
        self.ledger.failed(
            shard, attempt.attempt, failure.error, attempt.started_at, final=not retry
        )
        self.progress.shard_failed(shard_id=shard.shard_id, error=failure.error, will_retry=retry)
        return retry

    def _stop_dispatching(self) -> bool:
        limit = self.context.config.max_failed_shards
        return limit is not None and self.summary.shards_failed >= limit

    def _not_started(self, shards: int) -> None:
        self.progress.message(
            f"stopped dispatching after {self.summary.shards_failed} failed shard(s) "
            f"(--max-failed-shards {self.context.config.max_failed_shards}): {shards} shard(s) "
            "not started; rerun the same command to score them"
        )

    def _has_label(self, shard: Shard) -> bool:
        label = self.context.label_column
        return bool(label) and all(
            label in self.files[piece.input_id].schema.names for piece in shard.pieces
        )
