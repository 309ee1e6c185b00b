"""Scoring in the driver process: the same shard code as an actor, without starting Ray.

A private local Ray costs seconds before its first actor scores a row (measured on 2 cores:
`ray.init` and two actors ready in 3.6-4.7 s, plus ~1 s of Ray's import and shutdown), while
the work of a typical nightly partition is a few seconds. So when no cluster is named, no actor
count is asked for and no Ray is connected, `executors` first asks whether Ray would finish the
job sooner (`ray_pays_off`): its start-up against the rows it would score faster than the
driver alone. If not, `InProcessWorker` scores the shards itself, with `stages.stream_shard` on
its own stage threads (the overlap of read, score and write an actor has), and the run goes
through the same queue, retries, commit thread and ledger as with actors. Ray is then never
imported, and the run summary says why.

On this 2-core machine Ray does not pay off for any realistic night: one in-process worker
keeps ~1.6 cores busy, so two actors add at most the rest, and their start-up costs more than
that buys below ~90M rows. On a 16-core machine the balance turns at a few million rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from typing import TYPE_CHECKING, Any

from scorer.pipeline.cluster import ClusterInfo, ray_session
from scorer.pipeline.outcome import Identity, ShardOutcome
from scorer.pipeline.plan import Shard
from scorer.pipeline.pool import ActorPool, PoolSpec
from scorer.pipeline.retry import Failure, local_failure
from scorer.pipeline.shipping import ActorSettings
from scorer.pipeline.stages import ShardScorer, StageThreads, stream_shard

if TYPE_CHECKING:
    from collections.abc import Mapping

    import pyarrow.parquet as pq

    from scorer.model.runtime import IntentModel

# Measured with `scorer bench` on this 2-core machine (medians, 8M rows): one worker in the
# work window scores 2.9M rows/s with its three stage threads (1.6 cores busy), an actor
# 1.75M rows/s per core it is given; a private Ray with its actors is ready after 4.7 s and
# takes ~1 s more to import and shut down.
IN_PROCESS_ROWS_PER_S = 2.9e6
ACTOR_ROWS_PER_S_PER_CPU = 1.75e6
RAY_START_S = 5.7
# Each input file's fixed cost in the in-process worker (open, footer, ~20 column chunks),
# measured with 1,000-row files: 4,000 files scored in 2.7-9 s, against ~1.4 s for their rows.
IN_PROCESS_FILE_S = 1.5e-3
# Below this much work for the in-process worker alone, worker processes (`processes`) are not
# started: forked, one is ready in well under 0.1 s, but it takes whole shards, and a job this
# short has one or two. Measured on 2 cores, 2M rows in 4 files (~0.7 s of it): 1.58-1.94 s
# whole-process wall with a process against 1.64-2.31 s without (4 alternating runs).
PROCESSES_MIN_WORK_S = 0.5
# The work the first shard of a run scored in-process is cut to (`quick_first_shard`), so that
# the first commit comes ~1 s after the start (imports, listing, footers) whatever the shape.
FIRST_SHARD_S = 0.1
# Ray must win by this factor: an estimate, and the in-process run is the simpler one.
RAY_MARGIN = 0.8


def ray_pays_off(rows: int, cpus: int) -> bool:
    """Whether a private Ray with an actor per CPU would score `rows` sooner than one
    in-process worker, start-up included."""
    in_process = rows / IN_PROCESS_ROWS_PER_S
    with_ray = RAY_START_S + rows / (max(1, cpus) * ACTOR_ROWS_PER_S_PER_CPU)
    return with_ray < RAY_MARGIN * in_process


def in_process_seconds(rows: int, files: int) -> float:
    """About how long the in-process worker alone takes for `rows` in `files` files."""
    return rows / IN_PROCESS_ROWS_PER_S + files * IN_PROCESS_FILE_S


def worker_processes_for(rows: int, files: int, shards: int, cpus: int) -> int:
    """How many worker processes (`processes`) to start beside the in-process worker where Ray
    does not pay off: one per spare core (and per shard beyond the first), if the in-process
    worker alone would be busy long enough for them to be ready and take shards."""
    if in_process_seconds(rows, files) < PROCESSES_MIN_WORK_S:
        return 0
    return max(0, min(cpus - 1, shards - 1))


# Shards a worker gets at least where the driver plans the default --shard-rows for its own
# cores (`balanced_shard_rows`), and the smallest shard that planning makes for it.
SHARDS_PER_WORKER = 4
BALANCED_MIN_SHARD_ROWS = 100_000


def balanced_shard_rows(shard_rows: int, rows: int, cpus: int) -> int:
    """The default ``--shard-rows`` cut so that each core's worker gets several shards of a job:
    a heavy imported model (a 300-tree GBDT, ~5 µs a row) scored 2M rows in 3 shards on two
    workers, one idle for the last ~2.5 s of an 11.2 s work window; with shards of 250,000 the
    window was 10.2 s (measured on 2 cores). Shards of the bundled model's light rows keep
    their size wherever a job has more than ``cpus * SHARDS_PER_WORKER`` million rows."""
    even = -(-rows // (max(1, cpus) * SHARDS_PER_WORKER))
    return min(shard_rows, max(BALANCED_MIN_SHARD_ROWS, even))


def quick_first_shard(rows: int, files: int) -> bool:
    """Whether a first shard of `rows` in `files` files is quick enough for the in-process
    worker (`plan.with_quick_head` cuts it until it is)."""
    return in_process_seconds(rows, files) <= FIRST_SHARD_S


def in_process_note(rows: int, cpus: int) -> str:
    """The line the summary shows for a run scored without Ray."""
    return (
        f"scored in-process, Ray not started: {rows:,} rows take ~"
        f"{rows / IN_PROCESS_ROWS_PER_S:.1f} s here, less than a private Ray with "
        f"{cpus} actor(s) would take with its ~{RAY_START_S:.0f} s start-up "
        "(--actors N starts it anyway)"
    )


class InProcessWorker:
    """One worker in the driver process, with the pool's interface (`pool.Workers`).

    Shards run one at a time on an event loop thread of its own; `wait` and `fetch` give the
    driver the same view of them as of actors. A failed shard keeps the worker (there is no
    process to lose): bad input is not retried, any other error is, as with actors.
    """

    def __init__(
        self,
        settings: ActorSettings,
        model: IntentModel,
        known_footers: Mapping[str, pq.FileMetaData] | None = None,
    ) -> None:
        # The plan's footers: the worker shares the driver's process, so it need not parse them.
        self.scorer = ShardScorer(settings, model, known_footers)
        self.threads = StageThreads.start()
        self.identity: Identity = {
            "actor_id": "in-process",
            "node_id": socket.gethostname(),
            "node_ip": "",
            "pid": os.getpid(),
        }
        self.size = 1
        self.idle = [0]
        self.loop = asyncio.new_event_loop()
        # A daemon thread: an interrupted run must never wait on a shard it abandoned.
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="in-process-worker", daemon=True
        )
        self.thread.start()

    def has_starting(self) -> bool:
        return False  # the one worker exists from the start

    def submit(
        self, index: int, shard: Shard, attempt: int, has_label: bool
    ) -> Future[ShardOutcome]:
        coroutine = stream_shard(self.scorer, shard, has_label, self.threads, self.identity)
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def wait(
        self, handles: list[Future[ShardOutcome]], timeout: float
    ) -> list[Future[ShardOutcome]]:
        done, _ = futures_wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def fetch(self, handle: Future[ShardOutcome], index: int) -> ShardOutcome | Failure:
        self.idle.append(index)
        try:
            return handle.result()
        except Exception as exc:
            return local_failure(exc)

    def poll(self, busy: int) -> None:
        """Nothing is placed later here."""

    def shutdown(self) -> None:
        """Abandon a shard still running (its sink aborts: nothing reaches OUTPUT), then stop."""

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # Each abandoned shard aborts its sink on the writer thread, after the batch in hand.
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=60)
        self.threads.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


class RayInBackground:
    """A private Ray and its actor pool, started on a thread while the driver already scores.

    Used where `ray_pays_off`: the in-process worker takes shards from the first second, and
    the actors join the same queue once Ray has placed them. If Ray cannot start, the run goes
    on in-process and `error` says why.
    """

    def __init__(self, spec: PoolSpec, wanted: int, num_cpus: int | None = None) -> None:
        self._spec, self._wanted, self._num_cpus = spec, wanted, num_cpus
        self._closing = threading.Event()
        self.joined = False  # set by `InProcessThenActors` once the actors take shards
        self.pool: ActorPool | None = None
        self.cluster: ClusterInfo | None = None
        self.error: str | None = None
        self.ready_after: float | None = None  # seconds after `__init__`
        self._started = time.perf_counter()
        # A daemon: it must never keep an interrupted process alive; `close` joins it.
        self._thread = threading.Thread(target=self._start, name="ray-start", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        # The thread that starts Ray must live as long as Ray: Ray's processes die with the
        # thread that spawned them (Linux PR_SET_PDEATHSIG follows the parent *thread*), so it
        # waits here for `close` and stops Ray itself.
        with contextlib.ExitStack() as stack:
            try:
                cluster = stack.enter_context(ray_session(num_cpus=self._num_cpus))
                pool = ActorPool(self._spec, cluster, wanted=self._wanted)
                pool.wait_ready()
            except Exception as exc:  # Ray's own errors are bare RuntimeErrors too
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self.cluster, self.ready_after = cluster, time.perf_counter() - self._started
            self.pool = pool  # last: the driver's thread reads it without a lock
            self._closing.wait()
            pool.shutdown()

    @property
    def starting(self) -> bool:
        return self.pool is None and self.error is None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the actors and the private Ray, once it has started (a job that ended before
        that waits for it here: Ray's processes must not outlive the run)."""
        self._closing.set()
        self._thread.join()


class InProcessThenActors:
    """`pool.Workers` over the in-process worker (index 0) and, once Ray is up, its actors
    (indices 1..N). When the actors join, the in-process worker takes no further shard: the
    driver goes back to dispatching and committing only."""

    def __init__(self, local: InProcessWorker, ray: RayInBackground) -> None:
        self.local, self.ray = local, ray
        self.size = 1
        self.idle: list[int] = [0]

    def has_starting(self) -> bool:
        pool = self.ray.pool
        return self.ray.starting or (pool is not None and pool.has_starting())

    def submit(self, index: int, shard: Shard, attempt: int, has_label: bool) -> Any:
        if index == 0:
            self.local.idle.remove(0)
            return self.local.submit(0, shard, attempt, has_label)
        pool = self._pool()
        pool.idle.remove(index - 1)
        return pool.submit(index - 1, shard, attempt, has_label)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        deadline = time.perf_counter() + timeout
        local = [h for h in handles if isinstance(h, Future)]
        refs = [h for h in handles if not isinstance(h, Future)]
        while True:
            done = [h for h in local if h.done()]
            if self.ray.pool is not None and (refs or self.ray.pool.has_starting()):
                done += self.ray.pool.wait(refs, timeout=0.0 if done else _WAIT_SLICE_S)
            elif not done:
                done = self.local.wait(local, _WAIT_SLICE_S) if local else []
                if not local:
                    time.sleep(_WAIT_SLICE_S)
            if done or time.perf_counter() >= deadline or self._joinable():
                return done

    def fetch(self, handle: Any, index: int) -> ShardOutcome | Failure:
        result = (
            self.local.fetch(handle, 0) if index == 0 else self._pool().fetch(handle, index - 1)
        )
        self._sync()
        return result

    def poll(self, busy: int) -> None:
        if self._joinable():
            self.ray.joined = True
            pool = self._pool()
            self.size = 1 + pool.size
        if self.ray.joined:
            self._pool().poll(busy)
        self._sync()

    def shutdown(self) -> None:
        try:
            self.local.shutdown()
        finally:
            self.ray.close()

    def _joinable(self) -> bool:
        return not self.ray.joined and self.ray.pool is not None

    def _pool(self) -> ActorPool:
        assert self.ray.pool is not None, "an actor index before the actors joined"
        return self.ray.pool

    def _sync(self) -> None:
        # Once the actors are in, the in-process worker is given nothing more.
        local = [0] if 0 in self.local.idle and not self.ray.joined else []
        actors = [1 + i for i in self.ray.pool.idle] if self.ray.joined and self.ray.pool else []
        self.idle = local + actors


_WAIT_SLICE_S = 0.01  # how often a wait over both kinds of worker looks at each
