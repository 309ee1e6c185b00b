"""The driver loop: preflight, plan, dispatch shards to actors, retry, commit, record.

Only footers, shard descriptions, per-shard statistics and small calibration states pass through
the driver; row data flows from storage through the actors back to storage.

Where is a shard retried? In `_Run._failed`: an attempt whose actor died (or hit any other Ray
error) goes back in the queue until `max_attempts`, after `pool.ActorPool` replaced the actor;
an input that cannot be read fails its shard at once (bad data stays bad).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import time
import uuid
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any

# Every scorer module the driver needs is imported here, not lazily: a driver started by
# `ray job submit` runs from a working_dir that Ray may unpack again when the driver joins the
# cluster, and a module first imported after that can be missing for a moment.
from scorer._version import __version__
from scorer.config import JobConfig
from scorer.errors import (
    ConfigError,
    Interrupted,
    MissingColumnError,
    OutputConflictError,
    ScorerError,
    ShardReadError,
)
from scorer.metrics import calibration_table
from scorer.model.runtime import load_model
from scorer.pipeline.cluster import check_reachable, ray_session
from scorer.pipeline.lock import OutputLock
from scorer.pipeline.manifest import Manifest
from scorer.pipeline.plan import PartitionFilter, plan_shards, scan_inputs
from scorer.pipeline.pool import ActorPool
from scorer.pipeline.progress import Progress
from scorer.pipeline.stats import (
    RUN_STATS_SCHEMA,
    SHARD_STATS_SCHEMA,
    stats_table,
    utc_now,
    write_table,
)
from scorer.storage import StorageOptions, resolve


@dataclass
class RunSummary:
    """What a run did; `exit_code` follows SPEC §6."""

    run_id: str
    status: str  # completed, failed, interrupted, dry-run
    input: str
    output: str
    rows: int = 0
    rows_skipped: int = 0
    shards_committed: int = 0
    shards_skipped: int = 0
    shards_failed: int = 0
    failures: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0
    work_seconds: float = 0.0
    cpu_seconds: float = 0.0  # the actors' CPU time over committed shards (all their threads)
    rows_per_second: float = 0.0
    work_rows_per_second: float = 0.0
    actors: int = 0
    nodes: int = 0
    cpus: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    rows_per_node: dict[str, int] = field(default_factory=dict)
    plan: dict | None = None
    plan_text: str | None = None

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return 130
        return 1 if self.shards_failed else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"exit_code": self.exit_code}


@dataclass(frozen=True)
class _Context:
    """What every step of a run needs, resolved once."""

    config: JobConfig
    run_id: str
    model: Any  # IntentModel
    key_column: str
    label_column: str | None
    input: Any  # storage.Location
    output: Any
    options_digest: str
    # Read before Ray starts: under `ray job submit` joining the cluster can unpack the job's
    # working directory (which holds the bundled model) again, and a read then finds no file.
    model_files: dict[str, bytes] = field(default_factory=dict, repr=False)


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent drivers."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def _interruptible(function):
    """Ctrl-C or SIGTERM outside the dispatch loop (the footer scan of a large input takes a
    while) is an interruption too: exit 130, not a crash."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
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
    context = _prepare(config)
    items = _scan(context)
    _preflight_columns(context, items)
    if not dry_run:
        check_reachable(config.ray.address)

    if dry_run:
        manifest = Manifest.load(context.output)
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
        with _warnings_shown_by(progress):
            manifest = Manifest.load(context.output)
        manifest.claim(
            model_name=context.model.card.name,
            model_sha256=context.model.card.sha256,
            options_digest=context.options_digest,
            run_id=context.run_id,
            overwrite=config.overwrite,
        )
        report = manifest.cleanup(context.run_id)
        if report.orphans or report.temp_runs:
            progress.message(
                f"cleaned up after an earlier crash: {len(report.orphans)} unreferenced score "
                f"file(s), {len(report.temp_runs)} temporary folder(s)"
            )
        files = [item for item in items if not hasattr(item, "reason")]
        manifest.supersede(files)
        plan = _plan(context, items, manifest)
        run = _Run(context, plan, manifest, progress, started_wall, started)
        try:
            return run.execute()
        finally:
            manifest.discard_temp(context.run_id)
    finally:
        lock.release()


@contextlib.contextmanager
def _warnings_shown_by(progress: Progress):
    """The library's own warnings become progress messages: one line a person reads, not a
    Python warning with a file name and a source line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        progress.message(f"warning: {warning.message}")


def _new_summary(context: _Context, plan, status: str) -> RunSummary:
    return RunSummary(
        run_id=context.run_id,
        status=status,
        input=context.input.uri,
        output=context.output.uri,
        rows_skipped=plan.skipped_rows,
        shards_skipped=len(plan.skipped),
    )


def _prepare(config: JobConfig) -> _Context:
    model = load_model(config.model, threads=config.threads_per_actor)
    card = model.card
    key_column = config.key_column or card.key_column
    label_column = config.label_column or card.label_column
    storage = StorageOptions(**dataclasses.asdict(config.storage))
    source = resolve(config.input, storage)
    target = resolve(config.output, storage)
    if type(source.filesystem) is type(target.filesystem) and _inside(target.path, source.path):
        raise OutputConflictError(
            f"OUTPUT {target.uri} is inside INPUT {source.uri}: its score files would be read as "
            "input by the next run"
        )
    digest = hashlib.sha256(
        json.dumps({"key_column": key_column, "keep": list(config.keep)}).encode()
    ).hexdigest()[:16]
    files = {name: (model.model_dir / name).read_bytes() for name in ("model.onnx", "model.json")}
    return _Context(
        config, new_run_id(), model, key_column, label_column, source, target, digest, files
    )


def _inside(path: str, parent: str) -> bool:
    path, parent = path.rstrip("/"), parent.rstrip("/")
    return path == parent or path.startswith(parent + "/")


def _scan(context: _Context) -> list:
    config = context.config
    selection = PartitionFilter.parse(
        [f"{k}={v}" for k, v in config.partition.items()], config.since, config.until
    )
    return scan_inputs(context.input, selection)


def _preflight_columns(context: _Context, items: list) -> None:
    """A model column missing (or mistyped) in *every* readable file makes the whole job wrong;
    one bad file only fails its own shards."""
    schemas = [item.schema for item in items if not hasattr(item, "reason")]
    if not schemas:
        return  # every footer unreadable: each file fails as its own shard, exit 1
    card = context.model.card
    wanted = [(spec.name, spec) for spec in card.inputs]
    wanted += [(context.key_column, None)] + [(name, None) for name in context.config.keep]
    for name, spec in wanted:
        types = [schema.field(name).type for schema in schemas if name in schema.names]
        if not types:
            raise MissingColumnError(
                f"{context.input.uri}: column '{name}' is in none of the {len(schemas)} input "
                f"file(s) (the model {card.name} {card.version} needs it)"
                if spec is not None
                else f"{context.input.uri}: column '{name}' (key or kept) is in none of the input files"
            )
        if spec is not None and not any(_usable(spec, t) for t in types):
            raise MissingColumnError(
                f"{context.input.uri}: column '{name}' has type {types[0]} in every file; the "
                f"model needs a {spec.kind} column of {spec.dtype}"
            )


def _usable(spec, arrow_type) -> bool:
    import pyarrow as pa

    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if spec.kind == "numeric":
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    if spec.kind == "boolean":
        return pa.types.is_boolean(t)
    if spec.dtype == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    return pa.types.is_integer(t)


def _plan(context: _Context, items: list, manifest):
    files = [item for item in items if not hasattr(item, "reason")]
    committed = None
    if not context.config.overwrite:
        committed = manifest.committed_ranges(
            files, model_sha256=context.model.card.sha256, options_digest=context.options_digest
        )
    return plan_shards(items, context.config.shard_rows, committed)


_COMMIT_POLL_S = 0.02  # how often the loop looks at commits in progress while it waits on actors


@dataclass(frozen=True)
class _Fetched:
    """What came back for an attempt: its outcome, or its error and whether to retry."""

    outcome: Any = None  # actor.ShardOutcome
    error: str | None = None
    retryable: bool = False


@dataclass
class _Attempt:
    shard: Any  # plan.Shard
    attempt: int
    actor_index: int
    started_at: Any


class _Run:
    """One run under the lock: start actors, dispatch, retry, commit, write stats."""

    def __init__(
        self, context: _Context, plan, manifest, progress: Progress, started_wall, started
    ):
        self.context, self.plan, self.manifest, self.progress = context, plan, manifest, progress
        self.started_wall, self.started = started_wall, started
        self.summary = _new_summary(context, plan, "completed")
        self.shard_stats: list[dict] = []
        self.calibration: dict[str | None, Any] = {}
        self.attempts_failed = 0
        self.work_started: float | None = None
        self.work_ended: float | None = None
        self.files = {f.relpath: f for f in plan.files}

    # -- the run --------------------------------------------------------------------------

    def execute(self) -> RunSummary:
        plan, progress = self.plan, self.progress
        for shard in plan.skipped:
            self._record(shard, attempt=0, status="skipped")
        if plan.skipped:
            progress.message(
                f"resuming: {len(plan.skipped):,} shard(s), {plan.skipped_rows:,} rows already "
                "committed for this input and model are skipped"
            )
        for failed in plan.failed:
            self._fail_input(failed)
        progress.start(
            total_rows=plan.rows, total_shards=len(plan.shards), skipped_rows=plan.skipped_rows
        )
        try:
            if plan.shards and not self._stop_dispatching():
                self._score_all()
            elif plan.shards:  # unreadable footers alone reached --max-failed-shards
                self._not_started(len(plan.shards))
        except KeyboardInterrupt:
            self.summary.status = "interrupted"
        except BaseException:
            self.summary.status = "failed"  # the error goes on; the stats must not say completed
            raise
        finally:
            progress.finish()
            self._finish()
        if self.summary.status == "interrupted":
            raise Interrupted(
                f"run {self.context.run_id} interrupted: {self.summary.shards_committed} shard(s) "
                f"committed, in-flight shards abandoned; rerun the same command to resume"
            )
        return self.summary

    def _score_all(self) -> None:
        config = self.context.config
        with ray_session(config.ray.address) as cluster:
            import ray

            pool = ActorPool(self.context, cluster, wanted=len(self.plan.shards))
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
            self.progress.dispatching()
            try:
                self._dispatch(ray, pool)
            finally:
                pool.shutdown()

    def _dispatch(self, ray, pool: ActorPool) -> None:
        queue: deque = deque((shard, 1) for shard in self.plan.shards)
        in_flight: dict[Any, _Attempt] = {}
        # Commits run on their own thread: their fsyncs (~30 ms per shard on local disk) would
        # otherwise hold up giving the actor, and every other actor back first, its next shard
        # (measured: ~5% of a 1M-row shard's time idle per actor).
        committer = ThreadPoolExecutor(1, thread_name_prefix="commit")
        committing: dict[Future, tuple[_Attempt, Any]] = {}
        self.work_started = time.perf_counter()
        try:
            while queue or in_flight or committing:
                self._submit_to_idle(pool, queue, in_flight)
                self._settle_commits(committing, queue, block=False)
                if not in_flight and not (queue and pool.starting):
                    if not committing:
                        break  # done, or dispatch stopped by --max-failed-shards
                    self._settle_commits(committing, queue, block=True)  # may retry a shard
                    continue
                # Replacement actors are waited on too: one that cannot be placed (its node is
                # gone, the rest are full) gets no shard, and fails the run only when no actor is left.
                timeout = _COMMIT_POLL_S if committing else 1.0
                done, _ = ray.wait([*in_flight, *pool.starting], num_returns=1, timeout=timeout)
                for ref in done:
                    attempt = in_flight.pop(ref, None)
                    if attempt is None:
                        continue  # a replacement actor is ready: poll_starting takes it
                    result = self._fetch(ray, pool, ref, attempt)
                    if result.outcome is None:
                        if self._failed(attempt, result.error, result.retryable):
                            queue.append((attempt.shard, attempt.attempt + 1))
                    else:
                        future = committer.submit(self._commit, attempt.shard, result.outcome)
                        committing[future] = (attempt, result.outcome)
                pool.poll_starting(busy=len(in_flight))
            if queue:
                self._not_started(len(queue))
        except KeyboardInterrupt:
            self._settle_commits(committing, queue, block=True)  # whole already; a moment each
            for attempt in in_flight.values():
                self._record(
                    attempt.shard,
                    attempt=attempt.attempt,
                    status="interrupted",
                    started_at=attempt.started_at,
                    error="interrupted",
                )
            raise
        finally:
            committer.shutdown(wait=True)  # no commit may run once the lock is released
            self.work_ended = time.perf_counter()

    def _submit_to_idle(self, pool: ActorPool, queue: deque, in_flight: dict) -> None:
        while queue and pool.idle and not self._stop_dispatching():
            shard, attempt = queue.popleft()
            index = pool.idle.pop()
            ref = pool.submit(index, shard, attempt, self._has_label(shard))
            in_flight[ref] = _Attempt(shard, attempt, index, utc_now())

    def _fetch(self, ray, pool: ActorPool, ref, attempt: _Attempt) -> _Fetched:
        """The attempt's outcome, or its error; the actor goes back to the idle ones or, if it
        died, is replaced."""
        from ray.exceptions import RayActorError, RayError, RayTaskError

        try:
            outcome = ray.get(ref)
        except RayActorError as exc:
            pool.replace(attempt.actor_index)
            return _Fetched(error=f"actor died: {_first_line(exc)}", retryable=True)
        except RayTaskError as exc:
            pool.idle.append(attempt.actor_index)
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc.as_instanceof_cause()
            # Bad data stays bad: an unreadable input is not retried.
            return _Fetched(error=_one_line(cause), retryable=not isinstance(cause, ShardReadError))
        except (
            RayError
        ) as exc:  # its worker or node died otherwise (OutOfMemoryError, NodeDiedError)
            pool.replace(attempt.actor_index)
            return _Fetched(error=f"{type(exc).__name__}: {_first_line(exc)}", retryable=True)
        pool.idle.append(attempt.actor_index)
        return _Fetched(outcome=outcome)

    def _commit(self, shard, outcome) -> None:
        """On the commit thread: make the shard's output visible and durable (`Manifest`)."""
        self.manifest.commit_shard(
            shard,
            run_id=self.context.run_id,
            rows=outcome.rows,
            model_sha256=self.context.model.card.sha256,
            options_digest=self.context.options_digest,
        )

    def _settle_commits(self, committing: dict, queue: deque, *, block: bool) -> None:
        """Record the commits that ended (all of them if `block`); a refused one is retried."""
        if block:
            futures_wait(committing)
        for future in [future for future in committing if future.done()]:
            attempt, outcome = committing.pop(future)
            try:
                future.result()
            except ScorerError as exc:  # the commit refused the shard
                if self._failed(attempt, f"{type(exc).__name__}: {exc}", retryable=True):
                    queue.append((attempt.shard, attempt.attempt + 1))
                continue
            shard = attempt.shard
            self._record(shard, attempt=attempt.attempt, status="committed", outcome=outcome)
            self.summary.shards_committed += 1
            self.summary.rows += outcome.rows
            self.summary.cpu_seconds += outcome.seconds.get("cpu", 0.0)
            self.progress.shard_done(shard_id=shard.shard_id, rows=outcome.rows)

    def _failed(self, attempt: _Attempt, error: str, retryable: bool) -> bool:
        """Record a failed attempt; True if the shard goes back in line."""
        shard, config = attempt.shard, self.context.config
        will_retry = retryable and attempt.attempt < config.max_attempts
        self._record(
            shard,
            attempt=attempt.attempt,
            status="failed",
            error=error,
            started_at=attempt.started_at,
        )
        self.attempts_failed += 1
        if not will_retry:
            self.summary.shards_failed += 1
            self.summary.failures.append(
                {"shard_id": shard.shard_id, "input": shard.input_path, "error": error}
            )
        self.progress.shard_failed(shard_id=shard.shard_id, error=error, will_retry=will_retry)
        return will_retry

    def _stop_dispatching(self) -> bool:
        limit = self.context.config.max_failed_shards
        return limit is not None and self.summary.shards_failed >= limit

    def _not_started(self, shards: int) -> None:
        self.progress.message(
            f"stopped dispatching after {self.summary.shards_failed} failed shard(s) "
            f"(--max-failed-shards {self.context.config.max_failed_shards}): {shards} shard(s) "
            "not started; rerun the same command to score them"
        )

    def _has_label(self, shard) -> bool:
        label = self.context.label_column
        return bool(label) and label in self.files[shard.input_relpath].schema.names

    def _fail_input(self, failed) -> None:
        """A file whose footer cannot be read fails as one shard; the rest of the run goes on."""
        now = utc_now()
        error = f"{failed.path}: {failed.reason}"
        self.shard_stats.append(
            {
                "run_id": self.context.run_id,
                "shard_id": failed.shard_id,
                "input_path": failed.path,
                "input_bytes": failed.size,
                "attempt": 1,
                "status": "failed",
                "error": error,
                "started_at": now,
                "ended_at": now,
            }
        )
        self.summary.shards_failed += 1
        self.summary.failures.append(
            {"shard_id": failed.shard_id, "input": failed.path, "error": error}
        )
        self.progress.shard_failed(shard_id=failed.shard_id, error=error, will_retry=False)

    # -- records --------------------------------------------------------------------------

    def _record(
        self,
        shard,
        *,
        attempt: int,
        status: str,
        outcome=None,
        error: str | None = None,
        started_at=None,
    ) -> None:
        row = {
            "run_id": self.context.run_id,
            "shard_id": shard.shard_id,
            "input_path": shard.input_path,
            "row_group_start": shard.rg_start,
            "row_group_stop": shard.rg_stop,
            "output_path": shard.output_relpath,
            "rows": shard.rows,
            "input_bytes": shard.input_bytes,
            "attempt": attempt,
            "status": status,
            "error": error,
            "started_at": started_at,
            "ended_at": utc_now() if status != "skipped" else None,
        }
        if outcome is not None:
            seconds = outcome.seconds
            row |= {
                "rows": outcome.rows,
                "rows_ok": outcome.rows_ok,
                "rows_invalid": outcome.rows_invalid,
                "rows_unseen_category": outcome.rows_unseen_category,
                "output_bytes": outcome.output_bytes,
                "peak_rss_bytes": outcome.peak_rss_bytes,
                "read_seconds": seconds["read"],
                "encode_seconds": seconds["encode"],
                "infer_seconds": seconds["infer"],
                "write_seconds": seconds["write"],
                "total_seconds": seconds["total"],
                "cpu_seconds": seconds.get("cpu"),
                "actor_id": outcome.actor_id,
                "node_id": outcome.node_id,
                "node_ip": outcome.node_ip,
                "pid": outcome.pid,
                "started_at": outcome.started_at,
                "ended_at": outcome.ended_at,
            }
            for stage in ("read", "encode", "infer", "write"):
                self.summary.stage_seconds[stage] = (
                    self.summary.stage_seconds.get(stage, 0.0) + seconds[stage]
                )
            node = outcome.node_ip or outcome.node_id
            self.summary.rows_per_node[node] = (
                self.summary.rows_per_node.get(node, 0) + outcome.rows
            )
            if outcome.calibration is not None:
                day = dict(shard.partition).get("dt")
                previous = self.calibration.get(day)
                self.calibration[day] = (
                    outcome.calibration if previous is None else previous.merge(outcome.calibration)
                )
        self.shard_stats.append(row)

    def _finish(self) -> None:
        summary, context = self.summary, self.context
        ended = time.perf_counter()
        summary.wall_seconds = ended - self.started
        if self.work_started is not None:
            summary.work_seconds = (self.work_ended or ended) - self.work_started
        summary.rows_per_second = (
            summary.rows / summary.wall_seconds if summary.wall_seconds else 0.0
        )
        summary.work_rows_per_second = (
            summary.rows / summary.work_seconds if summary.work_seconds else 0.0
        )
        if summary.status != "interrupted" and summary.shards_failed:
            summary.status = "failed"
        out = context.output
        stats_dir = f"run_id={context.run_id}/part-0.parquet"
        write_table(
            out.filesystem,
            out.child(f"stats/shards/{stats_dir}").path,
            stats_table(self.shard_stats, SHARD_STATS_SCHEMA),
        )
        write_table(
            out.filesystem,
            out.child(f"stats/runs/{stats_dir}").path,
            stats_table([self._run_row(ended)], RUN_STATS_SCHEMA),
        )
        if self.calibration:
            write_table(
                out.filesystem,
                out.child(f"calibration/{stats_dir}").path,
                calibration_table(context.run_id, self.calibration),
            )

    def _run_row(self, ended: float) -> dict:
        import onnxruntime
        import pyarrow

        summary, context, config = self.summary, self.context, self.context.config
        card = context.model.card
        return dataclasses.asdict(summary) | {
            "started_at": self.started_wall,
            "ended_at": utc_now(),
            "attempts_failed": self.attempts_failed,
            "batch_rows": config.batch_rows,
            "shard_rows": config.shard_rows,
            "model_name": card.name,
            "model_version": card.version,
            "model_sha256": card.sha256,
            "scorer_version": __version__,
            "ray_version": _ray_version(),
            "onnxruntime_version": onnxruntime.__version__,
            "pyarrow_version": pyarrow.__version__,
        }


def _ray_version() -> str | None:
    import importlib.metadata

    return importlib.metadata.version("ray")


def _one_line(exc: BaseException) -> str:
    """An error raised in an actor, whole, on one line: its message names the file (for the
    stats and the terminal), and the reason is often on the lines after (pyarrow's are)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not isinstance(exc, ScorerError):
        text = f"{type(exc).__name__}: {text}"
    return text[:1000]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # Ray prefixes task errors with a traceback header; the cause's message is the last line.
    return (lines[-1] if lines else repr(exc))[:500]
