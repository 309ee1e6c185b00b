"""Real servers the tests start on loopback, and stop by the pid they started."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from scorer.jobs.latency import LatencyProxy, latency_proxy, moto_server, moto_server_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(credentials: dict[str, str]) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (its `host:port`), with `credentials` in this process's
    environment and no other AWS endpoint or profile to get in the way."""
    if moto_server_path() is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_DEFAULT_REGION": "us-east-1", **credentials}.items():
            mp.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            mp.delenv(name, raising=False)
        with moto_server() as address:
            yield address


@contextlib.contextmanager
def s3_latency(upstream: str, delay_ms: float) -> Iterator[LatencyProxy]:
    """The scorer's loopback latency proxy (`scorer.jobs.latency`) in front of
    `upstream`, a `moto_s3` address: every HTTP request through it is held `delay_ms`."""
    with latency_proxy(upstream, delay_ms) as proxy:
        yield proxy
