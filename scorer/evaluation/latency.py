"""Object storage at a chosen latency: a loopback TCP proxy that holds each HTTP request.

On a cluster every request to object storage costs 10-50 ms before its first byte, and an S3
server on loopback answers in well under one. `LatencyProxy` sits between the scorer and such a
server (the tests' moto, `scorer bench --s3-latency`) and holds the first bytes of every HTTP
request for `delay_ms` before it forwards them. Keep-alive connections carry many requests one
after another: a request starts with the first client bytes after the server has answered the
previous one (S3 clients do not pipeline), so each of them is held, not only a connection's
first. Bodies of uploads, sent right after their headers, are not held again.

It also counts what went through (requests, bytes each way), and can stall the next requests
that match a pattern far longer than the delay (`stall`), to see what a client's timeout does.

The proxy runs its own asyncio loop on a daemon thread, so it serves synchronous callers (a
test, the bench) and the scorer's processes alike; `start()` returns once it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

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
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
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
