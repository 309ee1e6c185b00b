"""Catching a run mid-flight and doing it harm, deterministically (docs/backfills.md): `scorer
score` driver processes and every process they start, stopped and signalled at a point the test
has observed (a commit record, a shard's temporary file open), never after a sleep; and files
broken on purpose.

Runs that must be caught mid-flight score "slow" inputs (`SLOW_HISTORY`): row groups of 10 rows
read in batches of 5, so a 500-row shard takes a few hundred milliseconds on any machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from support.outputs import commits

SLOW_HISTORY = dict(sessions=6_000, files=2, days=1, row_group_rows=10)  # 12 shards of 500 rows
TOTAL_SHARDS = 12


def wait_for(condition, timeout: float, what: str, poll: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _wait_until_stopped(pid: int, timeout: float = 30) -> None:
    """Until every thread of ``pid`` is stopped: `kill` returns before a thread running on
    another core takes SIGSTOP, so a commit it is making could still land after it."""

    def stopped() -> bool:
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError):
                states.append(stat.read_text().rpartition(")")[2].split()[0])
        return all(state in "tTZX" for state in states)

    wait_for(stopped, timeout, f"pid {pid} to stop")


class ScoresWatcher(threading.Thread):
    """Reads every file that shows up under OUTPUT/scores/ while a run goes on."""

    def __init__(self, out: Path) -> None:
        super().__init__(daemon=True)
        self.scores = out / "scores"
        self.seen: dict[tuple, int] = {}  # (path, size, mtime) -> rows, each version read once
        self.bad: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.sweep()
            time.sleep(0.02)
        self.sweep()

    def sweep(self) -> None:
        try:
            paths = [p for p in self.scores.rglob("*") if not p.is_dir()]
        except FileNotFoundError:
            return
        for path in paths:
            try:
                info = path.stat()
                version = (path, info.st_size, info.st_mtime_ns)
                if version not in self.seen:
                    self.seen[version] = pq.read_table(path).num_rows
            except FileNotFoundError:
                continue  # deleted between listing and reading (a cleanup): never half there
            except Exception as exc:
                self.bad.append(f"{path}: {exc!r}")

    def __enter__(self) -> ScoresWatcher:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopping.set()
        self.join(timeout=30)


def _scoring_actors() -> list[psutil.Process]:
    """Scoring actor processes of this test session's Ray (descendants of this process)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if " ".join(process.cmdline()).startswith("ray::ScoringActor"):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def _writing_a_shard(out: Path, processes: list[psutil.Process]):
    """(process, temp file) of one of `processes` that has a shard's temporary output open."""
    temp = str(out.resolve() / "_scorer" / "tmp")
    for process in processes:
        try:
            for opened in process.open_files():
                if opened.path.startswith(temp) and opened.path.endswith(".parquet"):
                    return process, opened.path
        except psutil.NoSuchProcess:
            continue
    return None


def stopped_writing_a_shard(out: Path, processes=_scoring_actors):
    """(process, temp file) of a process caught writing a shard, stopped (SIGSTOP) with that
    file still open: it cannot finish the shard (close the file, hand back its outcome) before
    the test acts on it. `processes` is called for the candidates at each look."""
    found = _writing_a_shard(out, processes())
    if found is None:
        return None
    process, path = found
    try:
        process.suspend()
        if any(opened.path == path for opened in process.open_files()):
            return found
        process.resume()  # it closed the file between the two looks: look again
    except psutil.NoSuchProcess:
        pass
    return None


# `python -m scorer`, with Ctrl-C raising KeyboardInterrupt as in a terminal. A process started
# in the background by a non-interactive shell inherits SIGINT ignored, and Python then leaves it
# ignored: a test run from such a shell (a CI script put in the background) would otherwise see
# the SIGINT test's driver finish instead of stopping.
_WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'scorer'; runpy.run_module('scorer', run_name='__main__', alter_sys=True)"
)


class Drivers:
    """`scorer score` subprocesses of one test and every process they started."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen] = []
        self.family: dict[int, psutil.Process] = {}

    def start(self, *args: str) -> subprocess.Popen:
        n = len(self.procs)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        stdout, stderr = self.logs / f"driver-{n}.out", self.logs / f"driver-{n}.err"
        with open(stdout, "w") as out, open(stderr, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WITH_CTRL_C, "score", *args],
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,  # its own process group, as a job under a scheduler
            )
        proc.n = n
        self.procs.append(proc)
        return proc

    def remember_family(self, proc: subprocess.Popen) -> None:
        """Note the driver's descendants now: once it is SIGKILLed they are orphans of init."""
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                self.family.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def signal(self, proc: subprocess.Popen, signum: int, *, group: bool = False) -> None:
        self.remember_family(proc)
        if group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        if signum == signal.SIGSTOP:  # what the test does next sees the driver still
            _wait_until_stopped(proc.pid)

    def signal_mid_run(
        self, proc: subprocess.Popen, signum: int, out: Path, *, group: bool = False
    ) -> int:
        """Deliver `signum` while the run is seen unfinished, however fast the machine: stop the
        driver (its commit thread with it), count the commits, signal, let it go on. Returns
        the commits it had made."""
        self.signal(proc, signal.SIGSTOP, group=group)
        committed = commits(out)
        assert committed < TOTAL_SHARDS, "the run ended before the signal could land mid-run"
        self.signal(proc, signum, group=group)
        if signum != signal.SIGKILL:
            self.signal(proc, signal.SIGCONT, group=group)
        return committed

    def wait(self, proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(proc, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"driver {proc.pid} did not end within {timeout:.0f} s") from None
        out = (self.logs / f"driver-{proc.n}.out").read_text()
        err = (self.logs / f"driver-{proc.n}.err").read_text()
        return code, out, err

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.signal(proc, signal.SIGKILL)
                proc.wait()
        for process in self.family.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()  # psutil checks the pid still names the same process


def zero_data_pages(path: Path) -> None:
    """Overwrite everything between the magic and the footer with zeros: the footer still
    plans, every page header is garbage."""
    data = bytearray(path.read_bytes())
    footer = struct.unpack("<i", data[-8:-4])[0]
    data[4 : len(data) - 8 - footer] = bytes(len(data) - 12 - footer)
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def stopped(proc: subprocess.Popen) -> bool:
    """Whether PROC is stopped (SIGSTOP) now; False once it is gone."""
    try:
        return psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False
