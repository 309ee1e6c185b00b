"""The OUTPUT lock: one run at a time per OUTPUT.

One run at a time per OUTPUT (``OutputLock``). On a local filesystem the lock file is created
exclusively (a hard link to a complete file, so it is never seen half-written); a lock whose
owner on this host is gone is taken over, with a ``StaleLockWarning``, under an ``flock`` of
``_scorer/`` so two runs cannot both take it over. Object storage has no atomic create: the lock
is written, then read back to confirm, which catches most races but not two runs started within
the same instant. A lock held from another host is never taken over: its owner's liveness
cannot be checked from here, so the message says which file to delete if that run is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import psutil
import pyarrow.fs as pafs

from scorer.errors import LockError
from scorer.pipeline.layout import (
    LOCK,
    LOCK_NAME,
    OutputLayout,
    delete_files,
    now_iso,
    read_json_record,
    temp_relpath,
)
from scorer.storage import Location, storage_errors


class StaleLockWarning(UserWarning):
    """A lock whose owner is gone was taken over."""


@dataclass(frozen=True)
class LockHolder:
    """Contents of ``_scorer/lock.json``."""

    host: str
    pid: int
    run_id: str
    started_at: str
    pid_started: float | None
    """The owner process's start time: a reused pid is not mistaken for a live owner."""


class OutputLock:
    """One run at a time per OUTPUT: ``with OutputLock(location, run_id): ...``.

    Raises ``LockError`` (naming the host, pid and lock file) when a live run holds it; takes a
    lock over, with a ``StaleLockWarning``, when its owner on this host is gone. Released on
    exit, also on an exception. Semantics per filesystem: see the module docstring.
    """

    def __init__(self, location: Location, run_id: str) -> None:
        self._layout = OutputLayout(location)
        self._run_id = run_id
        self._held = False

    @property
    def uri(self) -> str:
        return self._layout.uri(LOCK)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        me = LockHolder(
            host=socket.gethostname(),
            pid=os.getpid(),
            run_id=self._run_id,
            started_at=now_iso(),
            pid_started=psutil.Process().create_time(),
        )
        with storage_errors(self.uri, "cannot take the lock"):
            if self._layout.writes_direct:
                self._acquire_object_store(me)
            else:
                self._acquire_local(me)
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            holder = self._read()
        except LockError:
            return
        # After a takeover by another run (we were presumed dead) the lock is no longer ours.
        if holder is not None and (holder.run_id, holder.pid) == (self._run_id, os.getpid()):
            delete_files(self._layout.location.filesystem, [self._layout.path(LOCK)])

    def _acquire_local(self, me: LockHolder) -> None:
        path = self._layout.path(LOCK)
        staged = self._layout.path(temp_relpath(self._run_id, LOCK_NAME))
        os.makedirs(os.path.dirname(staged), exist_ok=True)
        with open(staged, "w") as out:
            json.dump(asdict(me), out)
            out.flush()
            os.fsync(out.fileno())
        try:
            # A few rounds: the lock may be released between our attempt and our read.
            for _ in range(3):
                try:
                    os.link(staged, path)
                    return
                except FileExistsError:
                    pass
                holder = self._read()
                if holder is None:
                    continue
                self._refuse_unless_stale(holder)
                with _flocked(os.path.dirname(path)):
                    if self._read() == holder:
                        os.replace(staged, path)
                        self._warn_takeover(holder)
                        return
            raise LockError(f"{self.uri}: could not be taken, it keeps changing hands")
        finally:
            delete_files(pafs.LocalFileSystem(), [staged])

    def _acquire_object_store(self, me: LockHolder) -> None:
        holder = self._read()
        if holder is not None:
            self._refuse_unless_stale(holder)
        fs = self._layout.location.filesystem
        with fs.open_output_stream(self._layout.path(LOCK)) as out:
            out.write(json.dumps(asdict(me)).encode())
        confirmed = self._read()
        if confirmed != me:
            other = f"{_owner(confirmed)}" if confirmed else "another run, which released it"
            raise LockError(f"{self.uri}: taken at the same time by {other}")
        if holder is not None:
            self._warn_takeover(holder)

    def _read(self) -> LockHolder | None:
        return read_json_record(
            self._layout.location.filesystem,
            self._layout.path(LOCK),
            LockHolder,
            where=self.uri,
            error=LockError,
            advice="delete it if no run is writing OUTPUT",
        )

    def _refuse_unless_stale(self, holder: LockHolder) -> None:
        owner = _owner(holder)
        if holder.host != socket.gethostname():
            raise LockError(
                f"{self.uri} is held by {owner}; its liveness cannot be checked from this host: "
                "if that run is gone, delete the lock file"
            )
        if _process_alive(holder.pid, holder.pid_started):
            raise LockError(f"{self.uri} is held by {owner}, which is still running")

    def _warn_takeover(self, holder: LockHolder) -> None:
        warnings.warn(
            f"{self.uri}: took over the lock of run {holder.run_id} (pid {holder.pid} on "
            f"{holder.host}, since {holder.started_at}), whose process is gone",
            StaleLockWarning,
            stacklevel=4,
        )


def _owner(holder: LockHolder) -> str:
    return f"run {holder.run_id}, pid {holder.pid} on host {holder.host}, since {holder.started_at}"


def _process_alive(pid: int, started: float | None) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@contextmanager
def _flocked(directory: str) -> Iterator[None]:
    """Exclusive ``flock`` of a directory; the kernel drops it if the holder dies."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
