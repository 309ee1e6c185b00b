"""The OUTPUT lock: one writer per OUTPUT, as a lease with a fencing number.

How it works, and what each storage guarantees: docs/exactly-once.md, "The lock: lease and
fencing". In short:

- ``_scorer/lock.json`` is created only if absent (locally a hard link of a complete file; on
  ``s3://`` a PUT with ``If-None-Match: *``), and every later change is a compare-and-swap
  against the version that was read (locally under an ``flock`` of ``_scorer/``; on ``s3://`` a
  PUT with ``If-Match`` on its ETag). Two runs can never both believe they wrote it.
- It is a lease: a heartbeat thread renews it every quarter of ``lease_s`` (``expires_at``
  moves on). A lock whose lease has expired is taken over by the next run, on any host.
- It carries a fencing number, greater than that of the lock it replaced. Before each commit
  record and each deletion under OUTPUT, ``Manifest`` calls ``OutputLock.check``: it raises
  ``LockLostError`` once the heartbeat has found the lock changed hands, or once three quarters
  of the lease have passed since the last renewal went out (a run stopped with SIGSTOP, a
  long GC pause): by then another run may take it over, and this one stops committing.
- A lock whose owner is gone is taken over at once when that owner ran on this host, in this
  boot and in this pid namespace (boot id and pid-namespace inode are in the lock); a live
  run in another pid namespace, a container beside this one, is never mistaken for a dead
  one: outside our namespace the lease alone decides.

The lease is ``DEFAULT_LEASE_S`` seconds, or ``SCORER_LOCK_LEASE_S`` from the environment.
The heartbeat thread runs when the driver forks its worker processes (``processes``): they
share none of its objects (they use their settings and the footers alone).
Conditional writes on ``s3://`` go through boto3 (pyarrow's S3 filesystem cannot send
``If-None-Match`` or ``If-Match``); other object stores are refused as OUTPUT.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import psutil

from scorer.errors import ConfigError, LockError, LockLostError, StorageError
from scorer.pipeline.layout import LOCK, OutputLayout, now_iso
from scorer.storage import Location, foreign_errors

LEASE_ENV = "SCORER_LOCK_LEASE_S"
DEFAULT_LEASE_S = 60.0
_RENEWALS_PER_LEASE = 4
# The holder stops committing this far into its lease without a renewal; a taker waits for
# all of it. The quarter between absorbs clock skew between hosts and one slow request.
_SAFE_FRACTION = 0.75


class StaleLockWarning(UserWarning):
    """A lock whose owner is gone, or whose lease expired, was taken over."""


@dataclass(frozen=True)
class LockHolder:
    """Contents of ``_scorer/lock.json``; locks written before leases lack the last five."""

    host: str
    pid: int
    run_id: str
    started_at: str
    pid_started: float | None
    """The owner process's start time: a reused pid is not mistaken for a live owner."""
    boot_id: str | None = None
    pid_namespace: int | None = None
    """Inode of the owner's ``/proc/self/ns/pid``: its pid means something only in that one."""
    fence: int = 0
    """The fencing number: greater than that of the lock this one replaced."""
    lease_s: float | None = None
    expires_at: float | None = None
    """Unix time at which the lease ends unless renewed (the owner's clock)."""

    @classmethod
    def from_json(cls, data: bytes) -> LockHolder:
        values = json.loads(data)
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now > self.expires_at


def lease_from_env(environ: Mapping[str, str] | None = None) -> float:
    """``SCORER_LOCK_LEASE_S`` (seconds, > 0), else ``DEFAULT_LEASE_S``."""
    environ = os.environ if environ is None else environ
    text = environ.get(LEASE_ENV)
    if text is None:
        return DEFAULT_LEASE_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{LEASE_ENV}: must be a positive number of seconds, got {text!r}")
    return value


class OutputLock:
    """One writer per OUTPUT: ``with OutputLock(location, run_id): ...``.

    Raises ``LockError`` (naming the owner and the lock file) while a live run holds it; takes
    it over, with a ``StaleLockWarning``, when its owner is gone or its lease expired. While
    held, a heartbeat thread renews the lease; ``check()`` is the fence every write to OUTPUT
    calls. Released on exit, also on an exception (only if still ours).
    """

    def __init__(self, location: Location, run_id: str, *, lease_s: float | None = None) -> None:
        layout = OutputLayout(location)
        self.uri = layout.uri(LOCK)
        self.lease_s = lease_from_env() if lease_s is None else lease_s
        self._run_id = run_id
        self._store = _store_for(layout)
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._holder: LockHolder | None = None
        self._version: object = None
        self._deadline = 0.0
        self._renewed_at = ""
        self._lost: str | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    @property
    def fence(self) -> int:
        """This run's fencing number (0 before ``acquire``)."""
        return self._holder.fence if self._holder else 0

    def acquire(self) -> None:
        me = _me(self._run_id, self.lease_s)
        # A few rounds: the lock may be released or renewed between our read and our write.
        for _ in range(3):
            sent = time.monotonic()
            current = self._store.read()
            if current is None:
                me = replace(me, fence=_clock_fence(), expires_at=time.time() + self.lease_s)
                version = self._store.create(me.to_json())
                taken_over = None
            else:
                data, seen = current
                taken_over = self._parse(data)
                self._refuse_unless_free(taken_over)
                fence = max(taken_over.fence + 1, _clock_fence())
                me = replace(me, fence=fence, expires_at=time.time() + self.lease_s)
                version = self._store.replace(me.to_json(), seen)
            if version is not None:
                break
        else:
            raise LockError(f"{self.uri}: could not be taken, it keeps changing hands")
        with self._state:
            self._holder, self._version, self._lost = me, version, None
            self._deadline = sent + self.lease_s * _SAFE_FRACTION
            self._renewed_at = now_iso()
        if taken_over is not None:
            self._warn_takeover(taken_over)
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def check(self) -> None:
        """The fence: raise ``LockLostError`` unless this run still holds the lock.

        Called before every commit record and every deletion under OUTPUT (``Manifest``). Costs
        no request on object storage (the heartbeat's conditional renewals are the check there);
        locally it also reads the lock file.
        """
        with self._state:
            holder, lost, deadline = self._holder, self._lost, self._deadline
        if holder is None:
            raise LockLostError(f"{self.uri}: not held by run {self._run_id}")
        if lost is None and time.monotonic() > deadline:
            lost = (
                f"its lease ({self.lease_s:g} s) was last renewed at {self._renewed_at} and may "
                "have expired since (was the process stopped?)"
            )
        if lost is None and isinstance(self._store, _LocalStore):
            current = self._store.read()
            if current is None or self._parse(current[0]).fence != holder.fence:
                lost = "the lock file no longer names it"
        if lost is not None:
            self._lose(lost)
            raise LockLostError(
                f"{self.uri}: run {self._run_id} lost the lock (fencing number {holder.fence}): "
                f"{lost}; it stops committing. What it committed stays; the run that holds the "
                "lock now, or a rerun, scores the rest"
            )

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        with self._state:
            holder, version = self._holder, self._version
            self._holder = None
        if holder is not None:  # deleted only if still the version we wrote: never another's
            self._store.delete(version)

    # -- the heartbeat ------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / _RENEWALS_PER_LEASE):
            if not self._renew():
                return

    def _renew(self) -> bool:
        """Extend the lease if the lock is still ours; False once it is not (stop beating)."""
        with self._state:
            holder, version = self._holder, self._version
        if holder is None or self._lost is not None:
            return False
        sent = time.monotonic()
        renewed = replace(holder, expires_at=time.time() + self.lease_s)
        try:
            new_version = self._store.replace(renewed.to_json(), version)
        except StorageError:
            return True  # tried again next beat; check() fails once the lease runs out
        if new_version is None:
            self._lose("another run took it over (its lease had expired)")
            return False
        with self._state:
            if self._lost is None:
                self._holder, self._version = renewed, new_version
                self._deadline = sent + self.lease_s * _SAFE_FRACTION
                self._renewed_at = now_iso()
        return True

    def _lose(self, why: str) -> None:
        with self._state:
            if self._lost is None:
                self._lost = why
        self._stop.set()

    # -- who holds it ---------------------------------------------------------------------------

    def _parse(self, data: bytes) -> LockHolder:
        try:
            return LockHolder.from_json(data)
        except (TypeError, ValueError) as exc:
            raise LockError(
                f"{self.uri}: unreadable ({exc}); delete it if no run is writing OUTPUT"
            ) from exc

    def _refuse_unless_free(self, holder: LockHolder) -> None:
        """Return if ``holder``'s lock may be taken over: lease expired, or its owner, whose
        pid means something here, is gone. Else raise ``LockError``."""
        if holder.expired(time.time()):
            return
        owner = _owner(holder)
        if _comparable_pid(holder):
            if _process_alive(holder.pid, holder.pid_started):
                raise LockError(f"{self.uri} is held by {owner}, which is still running")
            return
        if holder.expires_at is None:  # written before leases: only a person can tell
            raise LockError(
                f"{self.uri} is held by {owner}; its liveness cannot be checked from this host: "
                "if that run is gone, delete the lock file"
            )
        where = "another host" if holder.host != socket.gethostname() else "another pid namespace"
        raise LockError(
            f"{self.uri} is held by {owner} (on {where}), whose lease runs until "
            f"{_iso(holder.expires_at)}: it expires {holder.lease_s:g} s after that run stops "
            "renewing it, and the next run then takes the lock over"
        )

    def _warn_takeover(self, holder: LockHolder) -> None:
        why = (
            f"whose lease expired at {_iso(holder.expires_at)}"
            if holder.expired(time.time()) and holder.expires_at is not None
            else "whose process is gone"
        )
        warnings.warn(
            f"{self.uri}: took over the lock of run {holder.run_id} (pid {holder.pid} on "
            f"{holder.host}, since {holder.started_at}), {why}",
            StaleLockWarning,
            stacklevel=4,
        )


def _me(run_id: str, lease_s: float) -> LockHolder:
    return LockHolder(
        host=socket.gethostname(),
        pid=os.getpid(),
        run_id=run_id,
        started_at=now_iso(),
        pid_started=psutil.Process().create_time(),
        boot_id=_boot_id(),
        pid_namespace=_pid_namespace(),
        lease_s=lease_s,
    )


def _clock_fence() -> int:
    """A fencing number for a lock that replaces none: milliseconds of the clock, so numbers
    keep growing across runs that released the lock between them."""
    return time.time_ns() // 1_000_000


def _owner(holder: LockHolder) -> str:
    return f"run {holder.run_id}, pid {holder.pid} on host {holder.host}, since {holder.started_at}"


def _iso(unix: float | None) -> str:
    if unix is None:
        return "?"
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _comparable_pid(holder: LockHolder) -> bool:
    """Whether ``holder.pid`` names a process we can look at: this host, this boot, this pid
    namespace. A lock written before leases records only the host, and is judged by it."""
    if holder.host != socket.gethostname():
        return False
    if holder.expires_at is None:
        return True
    mine = (_boot_id(), _pid_namespace())
    return None not in mine and (holder.boot_id, holder.pid_namespace) == mine


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


# -- where the lock is kept ---------------------------------------------------------------------


class _Store(Protocol):
    """Compare-and-swap on one small file. A version is what the store compares: the bytes
    locally, the ETag on S3. ``create``/``replace`` return the new version, None if beaten."""

    def read(self) -> tuple[bytes, object] | None: ...

    def create(self, data: bytes) -> object | None: ...

    def replace(self, data: bytes, version: object) -> object | None: ...

    def delete(self, version: object) -> None: ...


def _store_for(layout: OutputLayout) -> _Store:
    location = layout.location
    if location.is_local:
        return _LocalStore(layout.path(LOCK), layout.uri(LOCK))
    if urlsplit(location.uri).scheme == "s3":
        return _S3Store(location, layout.path(LOCK), layout.uri(LOCK))
    raise StorageError(
        f"{location.uri}: OUTPUT must be a local path or s3://: the lock needs conditional "
        "writes (If-None-Match, If-Match), which the scorer makes only on S3"
    )


class _LocalStore:
    """Create by hard link (exclusive, never half-written), swap and delete under an ``flock``
    of ``_scorer/``, which the kernel drops if its holder dies."""

    def __init__(self, path: str, uri: str) -> None:
        self.path, self.uri = path, uri
        self.folder = os.path.dirname(path)

    def read(self) -> tuple[bytes, object] | None:
        with foreign_errors(self.uri, "cannot read"):
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
        return data, data

    def create(self, data: bytes) -> object | None:
        staged = self._stage(data)
        try:
            with foreign_errors(self.uri, "cannot write", passes=(FileExistsError,)):
                os.link(staged, self.path)
        except FileExistsError:
            return None
        finally:
            os.unlink(staged)
        return data

    def replace(self, data: bytes, version: object) -> object | None:
        staged = self._stage(data)
        try:
            with foreign_errors(self.uri, "cannot write"), self._flocked():
                current = self.read()
                if current is None or current[1] != version:
                    return None
                os.replace(staged, self.path)
            return data
        finally:
            if os.path.exists(staged):
                os.unlink(staged)

    def delete(self, version: object) -> None:
        with foreign_errors(self.uri, "cannot delete"), self._flocked():
            current = self.read()
            if current is not None and current[1] == version:
                os.unlink(self.path)

    def _stage(self, data: bytes) -> str:
        os.makedirs(self.folder, exist_ok=True)
        staged = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(staged, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return staged

    @contextmanager
    def _flocked(self) -> Iterator[None]:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class _S3Store:
    """The lock object on S3 through boto3, whose ``put_object`` sends ``IfNoneMatch`` and
    ``IfMatch`` (botocore's S3 model maps them to the headers); configured from the OUTPUT
    location's endpoint, region and scheme, credentials from the AWS environment as pyarrow."""

    _BEATEN = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404"})

    def __init__(self, location: Location, path: str, uri: str) -> None:
        import boto3
        from botocore.config import Config

        query = dict(parse_qsl(urlsplit(location.uri).query))
        endpoint = query.get("endpoint_override")
        scheme = query.get("scheme", "https")
        self.uri = uri
        self.bucket, _, self.key = path.partition("/")
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=f"{scheme}://{endpoint}" if endpoint else None,
            region_name=query.get("region") or None,
            config=Config(
                s3={"addressing_style": "path"} if endpoint else {},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=10,
                read_timeout=30,
            ),
        )

    def read(self) -> tuple[bytes, object] | None:
        with self._errors("cannot read"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
            except self.client.exceptions.NoSuchKey:
                return None
            return answer["Body"].read(), answer["ETag"]

    def create(self, data: bytes) -> object | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, version: object) -> object | None:
        return self._put(data, IfMatch=str(version))

    def delete(self, version: object) -> None:
        current = self.read()
        if current is None or current[1] != version:
            return
        with self._errors("cannot delete"):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=str(version))
            except self._client_error() as exc:
                if self._code(exc) not in self._BEATEN:
                    raise

    def _put(self, data: bytes, **condition: str) -> object | None:
        with self._errors("cannot write"):
            try:
                answer = self.client.put_object(
                    Bucket=self.bucket, Key=self.key, Body=data, **condition
                )
            except self._client_error() as exc:
                if self._code(exc) in self._BEATEN:
                    return None
                raise
            return answer["ETag"]

    @staticmethod
    def _client_error() -> type[Exception]:
        from botocore.exceptions import ClientError

        return ClientError

    @staticmethod
    def _code(exc: Exception) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def _errors(self, doing: str) -> AbstractContextManager[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        return foreign_errors(self.uri, doing, foreign=(BotoCoreError, ClientError))
