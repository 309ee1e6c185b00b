"""Worker processes: the machine's spare cores for a job too small to wait for a private Ray.

The in-process worker (`local.InProcessWorker`) keeps 1.3-1.6 cores busy: its Python parts
(opening each small file, joining batches, the event loop) take turns on one GIL. A private Ray
would add actors on the other cores, but only after ~5.7 s; a plain Python process holding the
model is ready in ~0.6 s (measured on 2 cores: interpreter, pyarrow, onnxruntime and the
session). So where the job would keep the in-process worker busy long enough
(`local.worker_processes_for`), the driver starts one process per spare core beside it. Each
joins the queue once its model is loaded and scores whole shards with the actors' own code
(`actor.stream_shard`), writing under the run's temporary folder; the driver commits them, as
it commits an actor's. A job that ends before a process is ready never waits for it.

A worker process is ``python -m scorer.pipeline.processes``, talking over two pipes
(`multiprocessing.connection`, pickled messages): the settings go in, ``ready`` comes out, then
one shard at a time goes in and its `ShardOutcome` (or a `retry.Failure`) comes out. It is bound
to the driver: it dies with it (``PR_SET_PDEATHSIG``), it ends at EOF on its pipe, and Ctrl-C
reaches the driver only (the process has its own process group), which stops it. A process that
dies fails the shard it held the way an actor's death does (retried; a partial file stays under
the run's temporary folder, which the next run clears) and is not replaced.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scorer.pipeline.retry import Failure, local_failure

if TYPE_CHECKING:
    from scorer.pipeline.actor import ActorSettings, Identity, ShardOutcome
    from scorer.pipeline.local import InProcessWorker
    from scorer.pipeline.plan import Shard

# How long a worker process finishing its last shard may take to exit before it is killed.
EXIT_WAIT_S = 2.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class WorkerProcessLost(Exception):
    """The worker process exited (killed, out of memory) while it held a shard."""


class WorkerProcess:
    """One worker process, seen from the driver: its pipes, the shard it holds, whether it is
    ready. A thread of its own reads what the process sends."""

    def __init__(self, settings: ActorSettings, name: str) -> None:
        self.name = name
        self.started = time.perf_counter()
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        env = dict(os.environ)
        # The same `scorer` as the driver's, wherever it was imported from (a checkout, a Ray
        # job's working_dir): put first on the child's path.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # Started from the thread that runs the job: PR_SET_PDEATHSIG fires when the thread
        # that forked the child ends, not the process.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scorer.pipeline.processes", str(to_child), str(from_child)],
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the driver's stdout may be --json
            env=env,
            process_group=0,  # Ctrl-C at the terminal goes to the driver alone
        )
        os.close(to_child)
        os.close(from_child)
        self.outbox = Connection(from_parent, readable=False)
        self.inbox = Connection(to_parent, writable=False)
        self.ready: Future[Identity] = Future()
        self.held: Future[ShardOutcome | Failure] | None = None
        self.lock = threading.Lock()  # `held` is set here and settled on the reader thread
        self._lost = False  # its pipe closed: the process exited
        # Sent by the reader thread: the settings (the model's files among them) fill the pipe,
        # and the child reads them only once its imports are done, ~0.5 s later.
        self.reader = threading.Thread(
            target=self._read, args=(settings,), name=f"{name}-reader", daemon=True
        )
        self.reader.start()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and not self._lost

    def submit(self, shard: Shard, has_label: bool) -> Future[ShardOutcome | Failure]:
        held: Future[ShardOutcome | Failure] = Future()
        with self.lock:
            if self._lost:
                held.set_exception(WorkerProcessLost(self._exit_text()))
                return held
            self.held = held
        # A closed pipe means the process is gone: its reader settles `held` then.
        with contextlib.suppress(OSError):
            self.outbox.send((shard, has_label))
        return held

    def _read(self, settings: ActorSettings) -> None:
        with contextlib.suppress(OSError):  # a process that died at start: seen below
            self.outbox.send((settings, self.name))
        while True:
            try:
                message = self.inbox.recv()
            except (EOFError, OSError):
                break
            if message[0] == "ready":
                self.ready.set_result(message[1])
            elif message[0] == "not-ready":
                self.ready.set_exception(RuntimeError(message[1]))
            else:
                with self.lock:
                    held, self.held = self.held, None
                if held is not None:
                    held.set_result(message[1])
        with self.lock:
            self._lost = True
            held, self.held = self.held, None
        self.process.wait()
        lost = WorkerProcessLost(self._exit_text())
        if not self.ready.done():
            self.ready.set_exception(lost)
        if held is not None:
            held.set_exception(lost)

    def _exit_text(self) -> str:
        code = self.process.poll()
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        return f"worker process {self.process.pid} ({self.name}) died ({how})"

    def stop(self) -> None:
        """Close its pipe: an idle process exits at once; see `stop_worker_processes`."""
        with contextlib.suppress(OSError):
            self.outbox.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class InProcessAndProcesses:
    """`pool.Workers` over the in-process worker (index 0) and the worker processes (indices
    1..N), each admitted by `poll` once its model is loaded; `shutdown` stops them. Unlike a
    private Ray's actors, the processes do not take over: the in-process worker scores beside
    them to the end.

    The processes are started (`start`) once the in-process worker has returned its first
    shard, or `delay_s` into the work, whichever comes first. The driver holds them back where
    the first shard is quick (`local.processes_start_delay`): on 2 cores their imports took the CPU that shard
    needed (measured at 16M rows in 32 files: first commit 0.84-1.86 s after the process
    started, against 0.75-0.88 s held back), and they lose little by it. Where the first shard
    is long (a thousand small files), they start at once.
    """

    def __init__(
        self,
        local: InProcessWorker,
        start: Callable[[], list[WorkerProcess]],
        delay_s: float,
    ) -> None:
        self.local = local
        self._start: Callable[[], list[WorkerProcess]] | None = start
        self._start_at = time.perf_counter() + delay_s
        self.started: float | None = None
        self.processes: list[WorkerProcess] = []
        self.admitted: list[int] = []  # indices into `processes`, in the order they got ready
        self.ready_after: float | None = None  # seconds from their start to the first admitted
        self.errors: list[str] = []
        self.size = 1
        self.idle: list[int] = [0]

    def _start_processes(self, *, now: bool = False) -> None:
        if self._start is None or not (now or time.perf_counter() >= self._start_at):
            return
        start, self._start = self._start, None
        self.started = time.perf_counter()
        self.processes = start()

    def has_starting(self) -> bool:
        return self._start is not None or any(not p.ready.done() for p in self.processes)

    def submit(self, index: int, shard: Shard, attempt: int, has_label: bool) -> Future[Any]:
        if index == 0:
            self.local.idle.remove(0)
            return self.local.submit(0, shard, attempt, has_label)
        return self.processes[index - 1].submit(shard, has_label)

    def wait(self, handles: list[Future[Any]], timeout: float) -> list[Future[Any]]:
        # A process getting ready ends the wait too, as does the time to start them: `poll`
        # admits or starts them.
        if self._start is not None:
            timeout = max(0.0, min(timeout, self._start_at - time.perf_counter()))
        starting = [p.ready for p in self.processes if not p.ready.done()]
        done, _ = futures_wait([*handles, *starting], timeout=timeout, return_when=FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def fetch(self, handle: Future[Any], index: int) -> ShardOutcome | Failure:
        result: ShardOutcome | Failure
        if index == 0:
            result = self.local.fetch(handle, 0)
            self.idle.append(0)
            self._start_processes(now=True)
            return result
        process = self.processes[index - 1]
        try:
            result = handle.result()
        except WorkerProcessLost as exc:  # the only error its reader sets
            self.errors.append(str(exc))
            return Failure(str(exc), retryable=True, actor_lost=True)
        if process.alive:
            self.idle.append(index)
        return result

    def poll(self, busy: int) -> None:
        self._start_processes()
        for i, process in enumerate(self.processes):
            if i in self.admitted or not process.ready.done():
                continue
            if process.ready.exception() is not None:
                error = f"{process.name} could not start: {process.ready.exception()}"
                if error not in self.errors:
                    self.errors.append(error)
                continue
            self.admitted.append(i)
            self.idle.append(i + 1)
            self.size += 1
            if self.ready_after is None and self.started is not None:
                self.ready_after = time.perf_counter() - self.started

    def shutdown(self) -> None:
        """The in-process worker abandons its shard (its sink aborts); the processes stop."""
        self._start = None  # a job that ended first never starts them
        try:
            self.local.shutdown()
        finally:
            stop_worker_processes(self.processes)


def start_worker_processes(
    settings: ActorSettings, count: int, first: int = 1
) -> list[WorkerProcess]:
    """`count` worker processes, started now and named from ``process-{first}``; each loads
    the model on its own."""
    return [WorkerProcess(settings, f"process-{first + i}") for i in range(count)]


def stop_worker_processes(processes: list[WorkerProcess]) -> None:
    """Idle processes exit at EOF on their pipe; one still scoring or starting (an interrupted
    or stopped run, a process not needed after all) is killed, one slow to exit after
    `EXIT_WAIT_S`. Returns once they are all gone."""
    for process in processes:
        if process.held is not None or not process.ready.done():
            process.kill()  # abandoned mid-shard or mid-start: nothing to finish
        else:
            process.stop()  # idle: EOF. Not before it is ready: its reader may be sending
    deadline = time.monotonic() + EXIT_WAIT_S
    for process in processes:
        try:
            process.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.process.wait()
    for process in processes:
        process.reader.join(timeout=5)
        process.stop()


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when the driver's thread that started it ends."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the driver died before the prctl
        os._exit(1)


def main(inbox_fd: int, outbox_fd: int) -> None:
    """A worker process: load the model, then score the shards the driver sends until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops us
    _die_with_parent(os.getppid())
    inbox = Connection(inbox_fd, writable=False)
    outbox = Connection(outbox_fd, readable=False)
    import asyncio
    import socket

    from scorer.pipeline.actor import (
        Identity,
        ShardScorer,
        StageThreads,
        load_shipped_model,
        stream_shard,
    )
    from scorer.pipeline.retry import one_line

    settings, name = inbox.recv()
    try:
        scorer = ShardScorer(settings, load_shipped_model(settings))
    except Exception as exc:
        outbox.send(("not-ready", one_line(exc)))
        return
    threads = StageThreads.start()
    identity = Identity(actor_id=name, node_id=socket.gethostname(), node_ip="", pid=os.getpid())
    outbox.send(("ready", identity))
    loop = asyncio.new_event_loop()
    while True:
        try:
            shard, has_label = inbox.recv()
        except EOFError:
            break
        result: object
        try:
            result = loop.run_until_complete(
                stream_shard(scorer, shard, has_label, threads, identity)
            )
        except Exception as exc:
            result = local_failure(exc)
        outbox.send(("done", result))
    # Done and idle, every outcome sent: skip the interpreter's teardown (~0.1 s of pyarrow and
    # onnxruntime), which the driver would otherwise wait out at the end of every run.
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
