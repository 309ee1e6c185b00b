"""Start a private local Ray, or join an existing cluster.

A local Ray started here is private and closed: `address="local"` so a stale or foreign cluster
is never joined by accident, every server bound to loopback, no dashboard, and Ray's token
authentication on for what Ray still serves (its dashboard agent keeps job endpoints on loopback
even without a dashboard; CVE-2023-48022 and CVE-2025-62593 were remote code execution there).

Ray reads `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` when it is first imported, so `ray` is imported
here lazily, after the environment is set.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from scorer.errors import ClusterError

# On Linux Ray 2.60 ignores `_node_ip_address="127.0.0.1"` and binds the primary interface;
# with this variable at 0 it treats the machine as a single-node cluster bound to 127.0.0.1.
_PRIVATE_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # A private engine reports nothing about its use to anyone (Ray's usage-stats reporter runs
    # in the dashboard process it starts even without a dashboard).
    "RAY_USAGE_STATS_ENABLED": "0",
}
_AUTH_ENV = "RAY_AUTH_MODE"
_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


@dataclass(frozen=True)
class ClusterInfo:
    """What the job runs on."""

    address: str
    local: bool
    nodes: int
    cpus: float
    seconds_to_start: float


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: the flag, else `RAY_ADDRESS`, else None for a private local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str | None) -> None:
    """Preflight for a run that will join a cluster: fail now, before OUTPUT is touched, if the
    address does not answer or refuses this process's token. No-op for a private local Ray or
    when this process is already connected."""
    address = resolve_address(address)
    if address is not None and not ray_connected():
        _probe(address)


@contextmanager
def ray_session(
    address: str | None = None, *, num_cpus: int | None = None
) -> Iterator[ClusterInfo]:
    """Use the Ray this process is already connected to, or start/join one for the block.

    A session this function opened is shut down on exit; one opened by the caller (a notebook,
    a test session, a Ray job driver) is left as it was.
    """
    started = time.perf_counter()
    address = resolve_address(address)
    opened_here = False
    if not ray_connected():
        with _caller_sigterm_handler_kept():
            if address is None:
                _init_local(num_cpus)
            else:
                _join(address)
        opened_here = True
    import ray

    try:
        yield _describe(ray, local=address is None, started=started)
    finally:
        if opened_here:
            ray.shutdown()


@contextmanager
def _caller_sigterm_handler_kept() -> Iterator[None]:
    """Put back a SIGTERM handler the caller installed, which `ray.init` replaces.

    Ray's handlers end the process at once (`sys.exit(15)`, or `sys.exit(1)` after killing the
    local Ray), so a scheduler's SIGTERM would skip the run's clean abandon: no exit 130, no
    stats of the interrupted shards. The CLI maps SIGTERM to KeyboardInterrupt before it starts
    Ray, and its cleanup shuts Ray down. Without a handler of the caller's, Ray's stays: it at
    least stops the Ray processes it started.
    """
    import signal
    import threading

    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and previous not in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, previous)


def ray_connected() -> bool:
    # Checking without importing ray keeps the environment settable until the first real use.
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _init_local(num_cpus: int | None) -> None:
    for key, value in _PRIVATE_ENV.items():
        os.environ[key] = value
    # Token auth is Ray 2.60's default for a new local cluster; saying so explicitly keeps it on
    # even where a user's shell exports RAY_AUTH_MODE=disabled, and silences Ray's notice.
    os.environ[_AUTH_ENV] = "token"
    import ray

    # If ray was imported before the variables were set, its constant and its cached config say
    # otherwise; the driver reads them, the Ray processes read the environment. With the auth
    # mode cached as disabled the driver cannot talk to its own token-checking GCS. Re-reading
    # the config is what Ray itself does when it turns token auth on.
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    ray._raylet.Config.initialize("")
    try:
        with _no_dashboard_process():
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
                configure_logging=True,
            )
    except Exception as exc:  # Ray raises bare RuntimeError/ConnectionError here
        raise ClusterError(f"could not start a local Ray: {exc}") from exc


@contextmanager
def _no_dashboard_process() -> Iterator[None]:
    """Start the private Ray without the dashboard process `include_dashboard=False` still
    starts.

    With the dashboard off, Ray 2.60 still starts that process to host its usage-stats reporter
    only (off here, `RAY_USAGE_STATS_ENABLED=0`), and `ray.init` waits for it to come up before
    it starts the raylet: measured 5.2 s -> 3.7 s for `ray.init` (medians of 3, alternating).
    Ray has no setting for this, so its private `Node.start_api_server` is skipped while this
    process starts its own private Ray; it is the only caller. If a Ray release moves it, Ray
    starts as it would anyway. (The per-node dashboard agent, with its token-checked job
    endpoints, is the raylet's and still runs.)
    """
    try:
        from ray._private.node import Node
    except ImportError:
        yield
        return
    start_api_server = Node.__dict__.get("start_api_server")
    if start_api_server is None:
        yield
        return
    Node.start_api_server = lambda self, **_: None
    try:
        yield
    finally:
        Node.start_api_server = start_api_server


def _join(address: str) -> None:
    # Token mode is never switched on here for a found token, as Ray itself does not for an
    # explicit address: the token would go to whatever ADDRESS names. The user says so.
    import ray

    _probe(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except Exception as exc:
        raise ClusterError(_join_failure_message(address, exc)) from exc


def _probe(address: str) -> None:
    """Fail within seconds where `ray.init` would retry for a minute: nothing listening at
    ADDRESS, or a GCS that refuses this process's token (or its lack of one)."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", ray:// client addresses: Ray's own checks
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterError(
            f"could not join the Ray cluster at {address}: nothing answers there "
            f"({exc.strerror or exc}); is its head node running (`ray start --head`)?"
        ) from None
    try:
        # Ray's stub of its Cython module lacks the class the module has.
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
        from ray.exceptions import AuthenticationError
    except ImportError:  # a private API moved: ray.init still reports, only slower
        return
    try:
        with _stderr_silenced():  # the GCS client logs each refused attempt itself
            GcsClient(address=address)
    except AuthenticationError:
        raise ClusterError(_auth_message(address)) from None
    except Exception:
        return  # anything else is ray.init's to report


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _auth_message(address: str) -> str:
    where = f"RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or {_TOKEN_FILE}"
    if os.environ.get(_AUTH_ENV, "").lower() != "token":
        return (
            f"could not join the Ray cluster at {address}: it requires token authentication. "
            f"Set RAY_AUTH_MODE=token and put the cluster's token in {where} "
            "(print it on the head node with `ray get-auth-token`)."
        )
    return (
        f"could not join the Ray cluster at {address}: it refused this process's token (from "
        f"{where}). Use the cluster's token: print it on the head node with `ray get-auth-token`."
    )


def _join_failure_message(address: str, exc: Exception) -> str:
    text = str(exc)
    if "auth" in text.lower() or "token" in text.lower():
        return _auth_message(address)
    return f"could not join the Ray cluster at {address}: {text.splitlines()[0] if text else exc!r}"


def _describe(ray: ModuleType, *, local: bool, started: float) -> ClusterInfo:
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return ClusterInfo(
        address=ray.get_runtime_context().gcs_address,
        local=local,
        nodes=len(nodes),
        cpus=float(ray.cluster_resources().get("CPU", 0.0)),
        seconds_to_start=time.perf_counter() - started,
    )
