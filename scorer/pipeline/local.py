"""Scoring in the driver process: the same shard code as an actor, without starting Ray.

A private local Ray costs seconds before its first actor scores a row (measured on 2 cores:
`ray.init` and two actors ready in 3.6-4.7 s, plus ~1 s of Ray's import and shutdown), while
the work of a typical nightly partition is a few seconds. So when no cluster is named, no actor
count is asked for and no Ray is connected, the driver first asks whether Ray would finish the
job sooner (`ray_pays_off`): its start-up against the rows it would score faster than the
driver alone. If not, `InProcessWorker` scores the shards itself, with `actor.stream_shard` on
its own stage threads (the overlap of read, score and write an actor has), and the run goes
through the same queue, retries, commit thread and ledger as with actors. Ray is then never
imported, and the run summary says why.

On this 2-core machine Ray does not pay off for any realistic night: one in-process worker
keeps ~1.6 cores busy, so two actors add at most the rest, and their start-up costs more than
that buys below ~90M rows. On a 16-core machine the balance turns at a few million rows.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from typing import TYPE_CHECKING

from scorer.pipeline.actor import (
    ActorSettings,
    Identity,
    ShardOutcome,
    ShardScorer,
    StageThreads,
    stream_shard,
)
from scorer.pipeline.plan import Shard
from scorer.pipeline.retry import Failure, local_failure

if TYPE_CHECKING:
    from scorer.model.runtime import IntentModel

# Measured with `scorer bench` on this 2-core machine (medians, 8M rows): one worker in the
# work window scores 2.9M rows/s with its three stage threads (1.6 cores busy), an actor
# 1.75M rows/s per core it is given; a private Ray with its actors is ready after 4.7 s and
# takes ~1 s more to import and shut down.
IN_PROCESS_ROWS_PER_S = 2.9e6
ACTOR_ROWS_PER_S_PER_CPU = 1.75e6
RAY_START_S = 5.7
# Ray must win by this factor: an estimate, and the in-process run is the simpler one.
RAY_MARGIN = 0.8


def ray_pays_off(rows: int, cpus: int) -> bool:
    """Whether a private Ray with an actor per CPU would score `rows` sooner than one
    in-process worker, start-up included."""
    in_process = rows / IN_PROCESS_ROWS_PER_S
    with_ray = RAY_START_S + rows / (max(1, cpus) * ACTOR_ROWS_PER_S_PER_CPU)
    return with_ray < RAY_MARGIN * in_process


def in_process_note(rows: int, cpus: int) -> str:
    """The line the summary shows for a run scored without Ray."""
    return (
        f"scored in-process, Ray not started: {rows:,} rows take ~"
        f"{rows / IN_PROCESS_ROWS_PER_S:.1f} s here, less than a private Ray with "
        f"{cpus} actor(s) would take with its ~{RAY_START_S:.0f} s start-up "
        "(--actors N starts it anyway)"
    )


class InProcessWorker:
    """One worker in the driver process, with the pool's interface (`driver.Workers`).

    Shards run one at a time on an event loop thread of its own; `wait` and `fetch` give the
    driver the same view of them as of actors. A failed shard keeps the worker (there is no
    process to lose): bad input is not retried, any other error is, as with actors.
    """

    def __init__(self, settings: ActorSettings, model: IntentModel) -> None:
        self.scorer = ShardScorer(settings, model)
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
