"""The lock on a local filesystem (`scorer.pipeline.lock`, docs/exactly-once.md): one run holds
OUTPUT at a time, a dead holder's lock is taken over with a warning, a live one's (here, on another
host, or this very process) is refused naming who holds it. The lease and its fencing, with real
`scorer score` processes and on S3, are in test_lock_lease.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scorer.errors import LockError
from scorer.pipeline.layout import LOCK
from scorer.pipeline.lock import OutputLock, StaleLockWarning
from scorer.storage import resolve

REPO = Path(__file__).resolve().parents[2]


def hold_lock_in_subprocess(out_dir, run_id):
    """Start a process that takes the lock and waits; returns it once it holds the lock."""
    script = textwrap.dedent(
        f"""
        import sys
        from scorer.pipeline.lock import OutputLock
        from scorer.storage import resolve
        with OutputLock(resolve({str(out_dir)!r}), {run_id!r}):
            print("locked", flush=True)
            sys.stdin.read()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    out = resolve(tmp_path / "out")
    holder = hold_lock_in_subprocess(tmp_path / "out", "first")
    try:
        with pytest.raises(LockError) as err:
            with OutputLock(out, "second"):
                pass
        message = str(err.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert str(tmp_path / "out" / LOCK) in message and "run first" in message
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert not (tmp_path / "out" / LOCK).exists()  # released by the first run
    with OutputLock(out, "second"):
        assert json.loads((tmp_path / "out" / LOCK).read_text())["run_id"] == "second"


def test_a_lock_whose_owner_was_killed_is_taken_over_with_a_warning(tmp_path):
    out = resolve(tmp_path / "out")
    holder = hold_lock_in_subprocess(tmp_path / "out", "killed")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "out" / LOCK).exists()
    with pytest.warns(StaleLockWarning, match=f"run killed \\(pid {holder.pid}"):
        with OutputLock(out, "next"):
            state = json.loads((tmp_path / "out" / LOCK).read_text())
            assert (state["run_id"], state["pid"]) == ("next", os.getpid())
    assert not (tmp_path / "out" / LOCK).exists()


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path):
    out = resolve(tmp_path / "out")
    lock = tmp_path / "out" / LOCK
    lock.parent.mkdir(parents=True)
    # Our own (live) pid, but a process start time that is not ours: the pid was reused.
    lock.write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "run_id": "old",
                "started_at": "x",
                "pid_started": 1.0,
            }
        )
    )
    with pytest.warns(StaleLockWarning):
        with OutputLock(out, "new"):
            pass


def test_a_lock_held_on_another_host_is_refused(tmp_path):
    lock = tmp_path / "out" / LOCK
    lock.parent.mkdir(parents=True)
    lock.write_text(
        json.dumps(
            {"host": "worker-7", "pid": 1, "run_id": "r", "started_at": "x", "pid_started": None}
        )
    )
    with pytest.raises(LockError, match="pid 1 on host worker-7.*delete the lock file"):
        with OutputLock(resolve(tmp_path / "out"), "new"):
            pass
    assert lock.exists()


def test_the_lock_is_released_on_an_exception_and_not_reentrant(tmp_path):
    out = resolve(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with OutputLock(out, "r1"):
            with pytest.raises(LockError, match="still running"):
                with OutputLock(out, "r2"):
                    pass
            raise RuntimeError
    assert not (tmp_path / "out" / LOCK).exists()
