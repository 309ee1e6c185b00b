"""Worker processes: the machine's spare cores for a job too small to wait for a private Ray.

The in-process worker (`local.InProcessWorker`) keeps 1.3-1.6 cores busy: its Python parts
(opening each small file, joining batches, the event loop) take turns on one GIL. A private Ray
would add actors on the other cores, but only after ~5.7 s. So where the job would keep the
in-process worker busy long enough (`local.worker_processes_for`), the driver forks one process
per spare core beside it, right after planning and before the in-process worker's threads
start, when the driver is one thread. A forked process has pyarrow, onnxruntime and the plan's
parsed footers already (`known_footers`): it is ready once its own onnxruntime session is made,
in ~10-50 ms, where a spawned ``python -m`` one took ~0.8 s and ~0.6 s of CPU for its imports
on 2 cores, while the in-process worker needed that CPU. Each joins the queue once its model
is loaded and scores whole shards with the actors' own code (`stages.stream_shard`), writing
under the run's temporary folder; the driver commits them, as it commits an actor's. A job that
ends before a process is ready never waits for it.

A worker process talks to the driver over two pipes (`multiprocessing.connection`, pickled
messages): ``ready`` comes out, then one shard at a time goes in and its `ShardOutcome` (or a
`retry.Failure`) comes out. It is bound to the driver: it dies with it (``PR_SET_PDEATHSIG``),
it ends at EOF on its pipe, and Ctrl-C reaches the driver only (the process has its own
process group), which stops it. A process that dies fails the shard it held the way an actor's
death does (retried; a partial file stays under the run's temporary folder, which the next run
clears) and is not replaced. ``ps`` shows it as ``scorer-worker``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from scorer.pipeline.retry import Failure, local_failure

if TYPE_CHECKING:
    import pyarrow.parquet as pq

    from scorer.pipeline.local import InProcessWorker
    from scorer.pipeline.outcome import Identity, ShardOutcome
    from scorer.pipeline.plan import Shard
    from scorer.pipeline.shipping import ActorSettings

# How long a worker process finishing its last shard may take to exit before it is killed.
EXIT_WAIT_S = 2.0
# What `ps` and `/proc/<pid>/comm` call a worker process (at most 15 characters).
PROCESS_NAME = "scorer-worker"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PR_SET_NAME = 15


class WorkerProcessLost(Exception):
    """The worker process exited (killed, out of memory) while it held a shard."""


class WorkerProcess:
    """One worker process, seen from the driver: its pipes, the shard it holds, whether it is
    ready. A thread of its own reads what the process sends (`reader`, started by
    `start_worker_processes` once it has forked them all).

    `known_footers` and the settings reach the child in the forked memory, not through the
    pipe."""

    def __init__(
        self,
        settings: ActorSettings,
        name: str,
        known_footers: Mapping[str, pq.FileMetaData],
        siblings: list[WorkerProcess],
    ) -> None:
        self.name = name
        self.started = time.perf_counter()
        child_inbox, self.outbox = multiprocessing.Pipe(duplex=False)
        self.inbox, child_outbox = multiprocessing.Pipe(duplex=False)
        # The child closes the driver's ends of its own pipes and of its siblings': a copy of a
        # write end left open in any process would keep a worker from seeing EOF when it ends.
        driver_ends = [c for w in (*siblings, self) for c in (w.outbox, w.inbox)]
        context = multiprocessing.get_context("fork")
        self.process = context.Process(
            target=_child,
            args=(settings, name, child_inbox, child_outbox, driver_ends, known_footers),
            name=name,
            daemon=True,
        )
        # Ctrl-C held off until the child has its own process group and ignores it (`_child`);
        # the driver gets one that came meanwhile once the fork returns.
        with _sigint_blocked():
            self.process.start()
        child_inbox.close()
        child_outbox.close()
        self.ready: Future[Identity] = Future()
        self.held: Future[ShardOutcome | Failure] | None = None
        self.lock = threading.Lock()  # `held` is set here and settled on the reader thread
        self._lost = False  # its pipe closed: the process exited
        self.reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None  # started in __init__
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None and not self._lost

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

    def _read(self) -> None:
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
        self.process.join()
        lost = WorkerProcessLost(self._exit_text())
        if not self.ready.done():
            self.ready.set_exception(lost)
        if held is not None:
            held.set_exception(lost)

    def _exit_text(self) -> str:
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        return f"worker process {self.pid} ({self.name}) died ({how})"

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
    them to the end."""

    def __init__(self, local: InProcessWorker, processes: list[WorkerProcess]) -> None:
        self.local = local
        self.processes = processes
        self.started = min((p.started for p in processes), default=time.perf_counter())
        self.admitted: list[int] = []  # indices into `processes`, in the order they got ready
        self.ready_after: float | None = None  # seconds from their start to the first admitted
        self.errors: list[str] = []
        self.size = 1
        self.idle: list[int] = [0]

    def has_starting(self) -> bool:
        return any(not p.ready.done() for p in self.processes)

    def submit(self, index: int, shard: Shard, attempt: int, has_label: bool) -> Future[Any]:
        if index == 0:
            self.local.idle.remove(0)
            return self.local.submit(0, shard, attempt, has_label)
        return self.processes[index - 1].submit(shard, has_label)

    def wait(self, handles: list[Future[Any]], timeout: float) -> list[Future[Any]]:
        # A process getting ready ends the wait too: `poll` admits it.
        starting = [p.ready for p in self.processes if not p.ready.done()]
        done, _ = futures_wait([*handles, *starting], timeout=timeout, return_when=FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def fetch(self, handle: Future[Any], index: int) -> ShardOutcome | Failure:
        result: ShardOutcome | Failure
        if index == 0:
            result = self.local.fetch(handle, 0)
            self.idle.append(0)
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
            if self.ready_after is None:
                self.ready_after = time.perf_counter() - self.started

    def shutdown(self) -> None:
        """The in-process worker abandons its shard (its sink aborts); the processes stop."""
        try:
            self.local.shutdown()
        finally:
            stop_worker_processes(self.processes)


def start_worker_processes(
    settings: ActorSettings, count: int, known_footers: Mapping[str, pq.FileMetaData]
) -> list[WorkerProcess]:
    """`count` worker processes named ``process-1``..., forked now; each loads the model on
    its own. Call it where the driver has no other thread that could hold a lock at the fork
    (before the in-process worker starts), and from the thread that runs the job: the children
    die when it ends (``PR_SET_PDEATHSIG``)."""
    processes: list[WorkerProcess] = []
    for i in range(count):
        processes.append(WorkerProcess(settings, f"process-{i + 1}", known_footers, processes))
    for process in processes:  # after the last fork: no reader thread is forked with it
        process.reader.start()
    return processes


def stop_worker_processes(processes: list[WorkerProcess]) -> None:
    """Idle processes exit at EOF on their pipe; one still scoring or starting (an interrupted
    or stopped run, a process not needed after all) is killed, one slow to exit after
    `EXIT_WAIT_S`. Returns once they are all gone."""
    for process in processes:
        if process.held is not None or not process.ready.done():
            process.kill()  # abandoned mid-shard or mid-start: nothing to finish
        else:
            process.stop()  # idle: EOF
    deadline = time.monotonic() + EXIT_WAIT_S
    for process in processes:
        process.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.process.exitcode is None:
            process.kill()
            process.process.join()
    for process in processes:
        process.reader.join(timeout=5)
        process.stop()
        with contextlib.suppress(OSError):
            process.inbox.close()


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _bind_to_driver(parent_pid: int) -> None:
    """Linux: SIGKILL this process when the driver's thread that forked it ends, and name it."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(_PR_SET_NAME, PROCESS_NAME.encode(), 0, 0, 0)
    if os.getppid() != parent_pid:  # the driver died before the prctl
        os._exit(1)


def _child(
    settings: ActorSettings,
    name: str,
    inbox: Connection,
    outbox: Connection,
    driver_ends: list[Connection],
    known_footers: Mapping[str, pq.FileMetaData],
) -> None:
    """A forked worker process: load the model, then score the shards the driver sends until
    EOF. SIGINT is blocked on arrival (`WorkerProcess`): it gets its own process group and
    ignores Ctrl-C before taking signals again; the driver's handlers are not its own. Of the
    driver's objects it uses the settings and the footers alone, never one another thread of
    the driver could have held a lock of at the fork."""
    parent_pid = os.getppid()
    os.setpgid(0, 0)  # Ctrl-C at the terminal goes to the driver alone
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _bind_to_driver(parent_pid)
    for end in driver_ends:  # closed through their objects: no stale close of a reused fd
        end.close()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the driver's stdout may be --json
    os.close(devnull)
    # New stream objects: the driver's may have been mid-write on another thread at the fork
    # (a terminal's progress bar refreshes on one), and their locks would stay held here.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    sys.stderr = open(os.dup(2), "w", buffering=1)  # noqa: SIM115
    import asyncio
    import socket

    from scorer.pipeline.outcome import Identity
    from scorer.pipeline.retry import one_line
    from scorer.pipeline.shipping import load_shipped_model
    from scorer.pipeline.stages import ShardScorer, StageThreads, stream_shard

    try:
        scorer = ShardScorer(settings, load_shipped_model(settings), known_footers)
    except Exception as exc:
        outbox.send(("not-ready", one_line(exc)))
        os._exit(0)
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
    # onnxruntime), which the driver would otherwise wait out at the end of every run, and the
    # driver's exit handlers, which are not this process's to run.
    os._exit(0)
