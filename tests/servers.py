"""Real servers the tests start on loopback, and stop by the pid they started."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from scorer.evaluation.latency import LatencyProxy, latency_proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(credentials: dict[str, str]) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (its `host:port`), with `credentials` in this process's
    environment and no other AWS endpoint or profile to get in the way."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which(
        "moto_server"
    )
    if server is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_DEFAULT_REGION": "us-east-1", **credentials}.items():
            mp.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            mp.delenv(name, raising=False)
        try:
            _wait_listening(proc, port)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start on port {port}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def s3_latency(upstream: str, delay_ms: float) -> Iterator[LatencyProxy]:
    """The scorer's loopback latency proxy (`scorer.evaluation.latency`) in front of
    `upstream`, a `moto_s3` address: every HTTP request through it is held `delay_ms`."""
    with latency_proxy(upstream, delay_ms) as proxy:
        yield proxy
