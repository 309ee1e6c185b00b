"""Object storage at a chosen latency: a loopback TCP proxy that holds each HTTP request.

On a cluster every request to object storage costs 10-50 ms before its first byte, and an S3
server on loopback answers in well under one. `LatencyProxy` sits between the scorer and such a
server (the tests' moto, `scorer bench --s3-latency`) and holds the first bytes of every HTTP
request for `delay_ms` before it forwards them. Keep-alive connections carry many requests one
after another: a request starts with the first client bytes after the server has answered the
previous one (S3 clients do not pipeline), so each of them is held, not only a connection's
first. Bodies of uploads, sent right after their headers, are not held again.

It also counts what went through (requests, bytes each way), and can stall the next requests
that match a pattern far longer than the delay (`stall`), to see what a client's timeout does,
or hold one until told (`gate`), so that a test orders two clients' requests as it likes.

The proxy runs its own asyncio loop on a daemon thread, so it serves synchronous callers (a
test, the bench) and the scorer's processes alike; `start()` returns once it listens.

`run_latency_bench` is `scorer bench --s3-latency 0,20,50`: moto's S3 server on loopback, the
scorer from s3:// to s3:// through a proxy per latency, alternating them; work-window rows/s
against the first latency's, requests and bytes per shard, the actors' peak memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.errors import ConfigError

_CHUNK = 1 << 16
_METHODS = frozenset({b"GET", b"HEAD", b"PUT", b"POST", b"DELETE", b"PATCH", b"OPTIONS"})


@dataclass
class ProxyCounts:
    """What went through the proxy since it started (or since `reset`)."""

    requests: int = 0
    bytes_up: int = 0  # client to server: request headers and bodies
    bytes_down: int = 0  # server to client
    stalled: int = 0
    methods: dict[str, int] = field(default_factory=dict)


@dataclass
class _Stall:
    match: bytes
    seconds: float
    remaining: int


class Gate:
    """One request held by `LatencyProxy.gate` until `open()`; `seen` is set when it arrives."""

    def __init__(self, match: bytes, after: int) -> None:
        self.match = match
        self.after = after
        """Matching requests let through before the one held."""
        self.seen = threading.Event()
        self.opened = threading.Event()
        self.dropped = False
        """Set by `drop`: the held request is never forwarded, its connection is closed."""

    def open(self) -> None:
        self.opened.set()

    def drop(self) -> None:
        """Let go of the held request without forwarding it, as if lost on the way."""
        self.dropped = True
        self.opened.set()

    def wait_seen(self, timeout: float) -> None:
        """Return once the held request has arrived; AssertionError after `timeout` s."""
        if not self.seen.wait(timeout):
            raise AssertionError(f"no request matching {self.match!r} in {timeout:g} s")


class LatencyProxy:
    """`127.0.0.1:<port>` forwarding to `upstream` (``host:port``), each request held `delay_ms`."""

    def __init__(self, upstream: str, delay_ms: float = 0.0) -> None:
        host, _, port = upstream.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"upstream must be host:port, got {upstream!r}")
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be at least 0, got {delay_ms}")
        self.upstream = (host, int(port))
        self.delay_ms = delay_ms
        self.counts = ProxyCounts()
        self._stalls: list[_Stall] = []
        self._gates: list[Gate] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address = ""
        """``127.0.0.1:<port>`` once started: what the scorer's endpoint_override names."""

    def start(self) -> LatencyProxy:
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", 0)
                )
            except BaseException as exc:  # reported to start()'s caller
                failed.append(exc)
                ready.set()
                return
            port = self._server.sockets[0].getsockname()[1]
            self.address = f"127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._drain())
            loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with self._lock:
            for gate in self._gates:
                if not gate.opened.is_set():
                    gate.drop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stall(self, match: bytes, seconds: float, times: int = 1) -> None:
        """Hold the next `times` requests whose head contains `match`, in any case (e.g.
        ``b"range: bytes=4-"``: a file's first row group), for `seconds` instead of the delay."""
        with self._lock:
            self._stalls.append(_Stall(match, seconds, times))

    def gate(self, match: bytes, *, after: int = 0) -> Gate:
        """Hold the request whose head contains `match`, in any case, after letting `after`
        such requests through, until the returned gate is opened (`stop` drops what a gate
        still holds: a request held when its client died never reaches the server)."""
        gate = Gate(match, after)
        with self._lock:
            self._gates.append(gate)
        return gate

    def reset(self) -> ProxyCounts:
        """The counts so far, and zero from now on."""
        with self._lock:
            counts, self.counts = self.counts, ProxyCounts()
        return counts

    # -- on the proxy's loop ----------------------------------------------------------------

    async def _drain(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # Held here: asyncio keeps only a weak reference to a connection's task, and one whose
        # client went away mid-request would be collected while it waits.
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        # Set by the server's answer: the next client bytes begin a new request.
        answered = asyncio.Event()
        answered.set()
        try:
            await asyncio.gather(
                self._up(client_r, server_w, answered), self._down(server_r, client_w, answered)
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_w, server_w):
                with contextlib.suppress(Exception):
                    writer.close()

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answered: asyncio.Event
    ) -> None:
        while chunk := await reader.read(_CHUNK):
            if answered.is_set():
                answered.clear()
                await asyncio.sleep(self._hold(chunk))
                gate = self._gated(chunk)
                while gate is not None and not gate.opened.is_set():
                    await asyncio.sleep(0.005)
                if gate is not None and gate.dropped:
                    writer.close()
                    return
            with self._lock:
                self.counts.bytes_up += len(chunk)
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answered: asyncio.Event
    ) -> None:
        while chunk := await reader.read(_CHUNK):
            answered.set()
            with self._lock:
                self.counts.bytes_down += len(chunk)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    def _gated(self, head: bytes) -> Gate | None:
        """The gate that holds the request starting with `head`, if one does."""
        if head.split(b" ", 1)[0] not in _METHODS:
            return None
        with self._lock:
            for gate in self._gates:
                if gate.seen.is_set() or gate.match.lower() not in head.lower():
                    continue
                if gate.after > 0:
                    gate.after -= 1
                    continue
                gate.seen.set()
                return gate
        return None

    def _hold(self, head: bytes) -> float:
        """Seconds to hold the client bytes `head`, sent after an answer; counted as a request
        if they start one (else they are a body the server asked for: ``100 Continue``)."""
        method = head.split(b" ", 1)[0]
        if method not in _METHODS:
            return self.delay_ms / 1000
        name = method.decode()
        with self._lock:
            self.counts.requests += 1
            self.counts.methods[name] = self.counts.methods.get(name, 0) + 1
            for stall in self._stalls:
                if stall.remaining > 0 and stall.match.lower() in head.lower():
                    stall.remaining -= 1
                    self.counts.stalled += 1
                    return stall.seconds
        return self.delay_ms / 1000


@contextlib.contextmanager
def latency_proxy(upstream: str, delay_ms: float = 0.0) -> Iterator[LatencyProxy]:
    """A started `LatencyProxy` for the block."""
    proxy = LatencyProxy(upstream, delay_ms).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# -- `scorer bench --s3-latency` ----------------------------------------------------------------

LATENCY_SCHEMA = pa.schema(
    [
        ("delay_ms", pa.float64()),  # held per request by the proxy
        ("repetition", pa.int32()),
        ("actors", pa.int32()),
        ("rows", pa.int64()),
        ("shards", pa.int64()),
        ("work_seconds", pa.float64()),
        ("work_rows_per_second", pa.float64()),
        ("requests_per_shard", pa.float64()),  # the actors' reads (shard stats `requests`)
        ("mb_read_per_shard", pa.float64()),
        ("proxy_requests", pa.int64()),  # everything through the proxy: driver, reads, writes
        ("peak_rss_mb", pa.float64()),  # the largest actor's
    ]
)


@dataclass(frozen=True)
class LatencyBench:
    measurements: pa.Table  # LATENCY_SCHEMA
    path: Path

    def medians(self) -> list[dict]:
        """Per delay: medians over repetitions, and the rows/s against the first delay's."""
        by_delay: dict[float, list[dict]] = {}
        for row in self.measurements.to_pylist():
            by_delay.setdefault(row["delay_ms"], []).append(row)
        summary = []
        for delay, runs in by_delay.items():
            row = {"delay_ms": delay, "runs": len(runs)}
            for name in LATENCY_SCHEMA.names[2:]:
                row[name] = statistics.median(r[name] for r in runs)
            summary.append(row)
        base = summary[0]["work_rows_per_second"] if summary else None
        for row in summary:
            row["ratio"] = row["work_rows_per_second"] / base if base else None
        return summary


def run_latency_bench(
    out_dir: str | os.PathLike,
    delays_ms: Sequence[float],
    *,
    sessions: int,
    files: int,
    reps: int,
    actors: int = 2,
    batch_rows: int | None = None,
    on_message: Callable[[str], None] = lambda text: None,
) -> LatencyBench:
    """`scorer score s3://… s3://… --actors N` against a moto S3 server on loopback, through
    the latency proxy at each of `delays_ms`, alternating them `reps` times; written to
    OUT/s3-latency.parquet. Needs ``moto_server`` (``pip install 'moto[server]'``)."""
    from scorer.jobs.generate import generate
    from scorer.pipeline.cluster import ray_session
    from scorer.pipeline.entry import score

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if moto_server_path() is None:
        raise ConfigError(
            "scorer bench --s3-latency needs moto's S3 server: pip install 'moto[server]'"
        )
    for name, value in _MOTO_ENV.items():  # moto accepts any credentials; set only where none are
        os.environ.setdefault(name, value)
    with moto_server() as upstream:
        direct = pafs.S3FileSystem(
            endpoint_override=upstream, scheme="http", allow_bucket_creation=True
        )
        direct.create_dir("bench")
        started = time.perf_counter()
        generate(
            f"s3://bench/sessions?endpoint_override={upstream}&scheme=http",
            sessions=sessions,
            files=files,
            days=min(2, files),
            seed=0,
        )
        on_message(
            f"generated {sessions:,} sessions in {files} files on the S3 server at {upstream} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        proxies = [LatencyProxy(upstream, delay).start() for delay in delays_ms]
        options: dict[str, Any] = {"batch_rows": batch_rows} if batch_rows else {}
        try:
            with ray_session():  # one private Ray: each run still starts its own actors
                for repetition in range(reps):
                    for proxy in proxies:
                        proxy.reset()
                        name = f"out-{proxy.delay_ms:g}-{repetition}"
                        query = f"endpoint_override={proxy.address}&scheme=http"
                        summary = score(
                            f"s3://bench/sessions?{query}",
                            f"s3://bench/{name}?{query}",
                            actors=actors,
                            overwrite=True,
                            **options,
                        )
                        counts = proxy.reset()
                        stats = pq.read_table(
                            f"bench/{name}/stats/shards/run_id={summary.run_id}", filesystem=direct
                        ).to_pylist()
                        direct.delete_dir(f"bench/{name}")
                        shards = len(stats)
                        rows.append(
                            {
                                "delay_ms": proxy.delay_ms,
                                "repetition": repetition,
                                "actors": actors,
                                "rows": summary.rows,
                                "shards": shards,
                                "work_seconds": summary.work_seconds,
                                "work_rows_per_second": summary.rows / summary.work_seconds,
                                "requests_per_shard": sum(s["requests"] or 0 for s in stats)
                                / shards,
                                "mb_read_per_shard": sum(s["bytes_read"] or 0 for s in stats)
                                / shards
                                / 2**20,
                                "proxy_requests": counts.requests,
                                "peak_rss_mb": max(s["peak_rss_bytes"] for s in stats) / 2**20,
                            }
                        )
                        last = rows[-1]
                        on_message(
                            f"{proxy.delay_ms:g} ms rep {repetition}: "
                            f"{last['work_rows_per_second'] / 1e6:.2f}M rows/s in the work "
                            f"window, {last['requests_per_shard']:.1f} requests a shard, "
                            f"peak RSS {last['peak_rss_mb']:.0f} MB"
                        )
        finally:
            for proxy in proxies:
                proxy.stop()
    table = pa.Table.from_pylist(rows, LATENCY_SCHEMA)
    path = out / "s3-latency.parquet"
    pq.write_table(table, path)
    return LatencyBench(table, path)


def render_latency(result: LatencyBench):
    """The medians as a rich table (the CLI prints it)."""
    from rich.table import Table

    table = Table(title="scorer bench --s3-latency: s3 → s3 through the latency proxy, medians")
    headings = ("ms/request", "runs", "actors", "shards", "work rows/s", "× 0 ms")
    for heading in (*headings, "requests/shard", "MB read/shard", "proxy requests", "RSS MB"):
        table.add_column(heading, justify="right")
    for row in result.medians():
        table.add_row(
            f"{row['delay_ms']:g}",
            str(row["runs"]),
            f"{row['actors']:.0f}",
            f"{row['shards']:.0f}",
            f"{row['work_rows_per_second'] / 1e6:.2f}M",
            f"{row['ratio']:.2f}",
            f"{row['requests_per_shard']:.1f}",
            f"{row['mb_read_per_shard']:.1f}",
            f"{row['proxy_requests']:.0f}",
            f"{row['peak_rss_mb']:.0f}",
        )
    return table


def moto_server_path() -> str | None:
    """moto's S3 server executable, beside this Python or on PATH; None when not installed."""
    return shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which(
        "moto_server"
    )


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port (its ``host:port``), stopped by its pid: the
    bench's, and the tests' (`tests/support/servers.py` sets their credentials around it)."""
    server = moto_server_path()
    if server is None:
        raise ConfigError("moto's S3 server is not installed: pip install 'moto[server]'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError(f"moto_server did not start on port {port}") from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
