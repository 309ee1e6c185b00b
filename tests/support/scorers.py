"""`scorer score` processes as typed, each optionally in a pid namespace of its own, for the
lock's tests (docs/exactly-once.md, "The lock: lease and fencing"), and the slow in-process run
they catch mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

HISTORY = dict(sessions=6_000, files=2, days=1, row_group_rows=10)  # 12 shards of 500 rows
# In-process, small batches: a run lasts long enough to be seen mid-way, without Ray.
OPTIONS = ["--batch-rows", "5", "--processes", "0", "--json"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "lock-test-key", "AWS_SECRET_ACCESS_KEY": "lock-test-secret"}


class Scorers:
    """`scorer score` processes of one test, each optionally in a pid namespace of its own;
    every one still running at the end is killed by its pid."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict[str, str] | None = None, namespace: bool = False):
        n = len(self.procs)
        command = [sys.executable, "-m", "scorer", "score", *args]
        if namespace:  # the scorer is pid 1 of a new pid namespace, as in a container
            command = ["unshare", "--pid", "--fork", "--mount-proc", *command]
        environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
        with open(self.logs / f"scorer-{n}.out", "w") as out:
            with open(self.logs / f"scorer-{n}.err", "w") as err:
                proc = subprocess.Popen(command, stdout=out, stderr=err, env=environ)
        proc.n = n
        self.procs.append(proc)
        return proc

    def scorer_process(self, proc: subprocess.Popen) -> psutil.Process:
        """The scorer itself: `proc`, or the child `unshare` forked into the namespace."""
        process = psutil.Process(proc.pid)
        if process.name() != "unshare":
            return process
        deadline = time.monotonic() + 30
        while not (children := process.children()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return children[0]

    def stop(self, proc: subprocess.Popen) -> None:
        self.scorer_process(proc).send_signal(signal.SIGSTOP)

    def resume(self, proc: subprocess.Popen) -> None:
        self.scorer_process(proc).send_signal(signal.SIGCONT)

    def wait(self, proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
        code = proc.wait(timeout)
        out = (self.logs / f"scorer-{proc.n}.out").read_text()
        err = (self.logs / f"scorer-{proc.n}.err").read_text()
        return code, out, err

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                for process in psutil.Process(proc.pid).children(recursive=True):
                    process.kill()
                proc.kill()
                proc.wait()
