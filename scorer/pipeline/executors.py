"""Where a run's shards are scored: the choice of executor, and the workers it hands the driver.

Four executors give the driver's loop the same ``pool.Workers``: Ray actors on a named or
connected cluster, or of an asked-for actor count (``pool.ActorPool``); the driver process
alone (``local.InProcessWorker``); the driver process with worker processes forked beside it
(``processes.InProcessAndProcesses``); the driver process while a private Ray starts beside it
(``local.InProcessThenActors``). This module decides which (``score_on_workers``, with the
rates of ``local``), builds what every worker is shipped (``actor_settings``, ``pool_spec``) and
records in the run summary what ran. The loop that dispatches to the workers is the driver's.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

from scorer.config import JobConfig
from scorer.pipeline.cluster import ray_connected, ray_session, resolve_address
from scorer.pipeline.context import RunContext
from scorer.pipeline.days import DaySource
from scorer.pipeline.footers import footers_by_digest
from scorer.pipeline.layout import OutputLayout
from scorer.pipeline.ledger import RunSummary
from scorer.pipeline.local import (
    InProcessThenActors,
    InProcessWorker,
    RayInBackground,
    in_process_note,
    ray_pays_off,
    worker_processes_for,
)
from scorer.pipeline.plan import Plan
from scorer.pipeline.pool import ActorPool, PoolSpec, Workers
from scorer.pipeline.processes import (
    InProcessAndProcesses,
    start_worker_processes,
    stop_worker_processes,
)
from scorer.pipeline.progress import Progress
from scorer.pipeline.shipping import ActorSettings

__all__ = ["actor_settings", "pool_spec", "private_ray_optional", "score_on_workers"]


def private_ray_optional(config: JobConfig) -> bool:
    """Whether the run may do without Ray: no cluster named, no actor count asked for, and no
    Ray this process is connected to (a notebook's, a test session's, a Ray job's)."""
    return (
        resolve_address(config.ray.address) is None
        and config.ray.actors is None
        and not ray_connected()
    )


def actor_settings(context: RunContext) -> ActorSettings:
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


def pool_spec(context: RunContext) -> PoolSpec:
    """What the actors are shipped, and what each takes of the cluster."""
    config = context.config
    return PoolSpec(
        actor_settings(context),
        actors=config.ray.actors,
        cpus_per_actor=config.ray.cpus_per_actor,
        memory_per_actor_mb=config.ray.memory_per_actor_mb,
        # On object storage an actor holds a second shard, opened and read ahead while the
        # first is scored: every open is three round trips, every file one more to upload.
        shards_per_actor=1 if context.input.is_local else 2,
    )


def score_on_workers(
    context: RunContext,
    plan: Plan,
    summary: RunSummary,
    progress: Progress,
    started: float,
    run: Callable[[Workers], None],
) -> None:
    """Start the executor the run calls for, hand its workers to ``run`` (the driver's loop),
    and record in ``summary`` what scored (executor, actors, nodes, cpus, setup time)."""
    config = context.config
    if private_ray_optional(config):
        _score_in_process_first(context, plan, summary, progress, run)
        return
    with ray_session(config.ray.address) as cluster:
        pool = ActorPool(pool_spec(context), cluster, wanted=len(plan.shards))
        summary.actors, summary.nodes, summary.cpus = pool.size, cluster.nodes, cluster.cpus
        pool.wait_ready()
        summary.setup_seconds = time.perf_counter() - started
        progress.message(
            f"{pool.size} actor(s) on {cluster.nodes} node(s) ready in "
            f"{summary.setup_seconds:.1f} s"
        )
        run(pool)


def _score_in_process_first(
    context: RunContext,
    plan: Plan,
    summary: RunSummary,
    progress: Progress,
    run: Callable[[Workers], None],
) -> None:
    """No cluster, no actor count, no Ray connected: the driver scores from the first
    second; a private Ray starts beside it only where it pays off (`local`)."""
    cpus = os.cpu_count() or 1
    summary.executor = "in-process"
    summary.actors, summary.nodes, summary.cpus = 1, 1, float(cpus)
    settings = actor_settings(context)
    # The plan's parsed footers: the in-process worker and forked processes need not parse
    # them again.
    footers = footers_by_digest(plan.files)
    in_process = functools.partial(InProcessWorker, settings, context.model, footers)
    if not ray_pays_off(plan.rows, cpus):
        progress.message(in_process_note(plan.rows, cpus))
        processes = context.config.processes
        if processes is None:
            pieces = sum(len(shard.pieces) for shard in plan.shards)
            processes = worker_processes_for(plan.rows, pieces, len(plan.shards), cpus)
        if not processes:
            run(in_process())
            return
        progress.message(f"{processes} worker process(es) to start beside it")
        # Forked first, while this process is one thread (`start_worker_processes`).
        forked = start_worker_processes(settings, processes, footers)
        try:
            local = in_process()
        except BaseException:
            stop_worker_processes(forked)
            raise
        workers = InProcessAndProcesses(local, forked)
        try:
            run(workers)
        finally:
            _note_processes(workers, summary, progress)
        return
    worker = in_process()
    progress.message(f"scoring in-process while a private Ray and {cpus} actor(s) start beside it")
    ray = RayInBackground(pool_spec(context), wanted=len(plan.shards))
    try:
        run(InProcessThenActors(worker, ray))
    finally:
        _note_ray(ray, summary, progress)


def _note_processes(
    workers: InProcessAndProcesses, summary: RunSummary, progress: Progress
) -> None:
    for error in workers.errors:
        progress.message(error)
    if workers.admitted:
        summary.executor = "in-process+processes"
        summary.actors = 1 + len(workers.admitted)
        progress.message(
            f"{len(workers.admitted)} worker process(es) joined the in-process worker, "
            f"ready {workers.ready_after:.1f} s after they were started"
        )
    else:
        progress.message("the job ended before a worker process was ready: scored in-process alone")


def _note_ray(ray: RayInBackground, summary: RunSummary, progress: Progress) -> None:
    if ray.error is not None:
        progress.message(f"Ray could not start ({ray.error}): scored in-process")
    elif ray.pool is not None and ray.cluster is not None and ray.joined:
        summary.executor = "in-process+ray"
        summary.actors = 1 + ray.pool.size
        summary.nodes, summary.cpus = ray.cluster.nodes, ray.cluster.cpus
        progress.message(
            f"{ray.pool.size} actor(s) joined the in-process worker after {ray.ready_after:.1f} s"
        )
    else:
        progress.message("the job ended before the private Ray was up: scored in-process alone")
