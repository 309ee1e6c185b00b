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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scorer.errors import ClusterError

# On Linux Ray 2.60 ignores `_node_ip_address="127.0.0.1"` and binds the primary interface;
# with this variable at 0 it treats the machine as a single-node cluster bound to 127.0.0.1.
_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
_AUTH_ENV = "RAY_AUTH_MODE"
_TOKEN_ENV = "RAY_AUTH_TOKEN"
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


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[ClusterInfo]:
    """Use the Ray this process is already connected to, or start/join one for the block.

    A session this function opened is shut down on exit; one opened by the caller (a notebook,
    a test session, a Ray job driver) is left as it was.
    """
    started = time.perf_counter()
    address = resolve_address(address)
    opened_here = False
    if not _ray_initialized():
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


def _ray_initialized() -> bool:
    # Checking without importing ray keeps the environment settable until the first real use.
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _init_local(num_cpus: int | None) -> None:
    for key, value in _LOOPBACK_ENV.items():
        os.environ[key] = value
    # Token auth is Ray 2.60's default for a new local cluster; saying so explicitly keeps it on
    # even where a user's shell exports RAY_AUTH_MODE=disabled, and silences Ray's notice.
    os.environ[_AUTH_ENV] = "token"
    import ray

    # If ray was imported before the variable was set, its constant says otherwise; the driver
    # reads it when it picks its own address, the Ray processes read the environment.
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    try:
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


def _join(address: str) -> None:
    # A cluster started with `ray start` in Ray 2.60 has token auth on; a driver without
    # RAY_AUTH_MODE=token retries "InvalidAuthToken" for a minute and then fails obscurely.
    has_token = bool(os.environ.get(_TOKEN_ENV)) or _TOKEN_FILE.exists()
    if _AUTH_ENV not in os.environ and has_token:
        os.environ[_AUTH_ENV] = "token"
    import ray

    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except Exception as exc:
        raise ClusterError(_join_failure_message(address, exc)) from exc


def _join_failure_message(address: str, exc: Exception) -> str:
    text = str(exc)
    if "auth" in text.lower() or "token" in text.lower():
        return (
            f"could not join the Ray cluster at {address}: it requires token authentication. "
            f"Set RAY_AUTH_MODE=token and provide the cluster's token in RAY_AUTH_TOKEN or "
            f"{_TOKEN_FILE} (copy it from the head node: `ray get-auth-token`)."
        )
    return f"could not join the Ray cluster at {address}: {text.splitlines()[0] if text else exc!r}"


def _describe(ray, *, local: bool, started: float) -> ClusterInfo:
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    return ClusterInfo(
        address=ray.get_runtime_context().gcs_address,
        local=local,
        nodes=len(nodes),
        cpus=float(ray.cluster_resources().get("CPU", 0.0)),
        seconds_to_start=time.perf_counter() - started,
    )
