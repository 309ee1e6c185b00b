"""Row groups read from object storage in a few concurrent ranged requests, counted.

Every request to object storage costs 10-50 ms before its first byte; reading a row group's
column chunks one after another, and row group after row group, makes an actor wait on the
network (measured through a 50 ms proxy: 0.39x of the rows/s at 0 ms). Here a row group's
column chunks are planned from the footer (`group_ranges`: the chunks of the columns read, and
the gaps between them up to `HOLE_BYTES` read along, so a group is one or a few requests), the
ranges are fetched on a thread pool of `requests_in_flight` threads (pyarrow's reads release
the GIL), and the group is decoded from those bytes in memory (`RangeFile`). The caller decides
how many groups are fetched ahead (`[storage] read_ahead`); memory is those groups' compressed
bytes, a few MB each.

pyarrow's own pre-buffering plans ranges alike, but its reads cannot be counted from Python, and
a file wrapper that counts them (`pa.PythonFile`) serialises them under one lock. Fetching the
ranges here gives the shard stats their ``requests`` and ``bytes_read``, exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

# Column chunks this close are fetched as one range, the gap read along: a gap of 1 MiB costs
# ~1 ms at 1 GB/s, a second request 10-50 ms.
HOLE_BYTES = 1 << 20
# A range no longer than this: longer ones are split so their parts download in parallel.
RANGE_BYTES = 8 << 20

_T = TypeVar("_T")


@dataclass
class ReadCounts:
    """Requests made and bytes received for one shard (object storage only)."""

    requests: int = 0
    bytes_read: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, requests: int, nbytes: int) -> None:
        with self._lock:
            self.requests += requests
            self.bytes_read += nbytes


def column_indices(metadata: pq.FileMetaData, columns: Sequence[str]) -> list[int]:
    """The leaf column indices of `columns` (a nested column: all its leaves)."""
    wanted = set(columns)
    schema = metadata.schema
    return [i for i in range(metadata.num_columns) if schema.column(i).path.split(".")[0] in wanted]


def group_ranges(
    metadata: pq.FileMetaData, group: int, leaves: Sequence[int], size: int
) -> list[tuple[int, int]]:
    """``(offset, length)`` ranges covering the column chunks `leaves` of row group `group`,
    neighbours closer than `HOLE_BYTES` merged, none longer than `RANGE_BYTES`."""
    row_group = metadata.row_group(group)
    chunks = []
    for leaf in leaves:
        column = row_group.column(leaf)
        start = column.data_page_offset
        if column.has_dictionary_page and 0 < column.dictionary_page_offset < start:
            start = column.dictionary_page_offset
        chunks.append((start, min(size, start + column.total_compressed_size)))
    merged: list[list[int]] = []
    for start, stop in sorted(chunks):
        if merged and start - merged[-1][1] <= HOLE_BYTES:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    ranges = []
    for start, stop in merged:
        for offset in range(start, stop, RANGE_BYTES):
            ranges.append((offset, min(RANGE_BYTES, stop - offset)))
    return ranges


class RangeFile:
    """A file-like view of an object of which some ranges are in memory, for `pa.PythonFile`.

    Reads inside a fetched range are served from memory; any other read (a reader that wants
    bytes the plan did not foresee) goes to `source`, counted, so a wrong plan is slower,
    never wrong.
    """

    def __init__(
        self,
        source: pa.NativeFile,
        size: int,
        ranges: Sequence[tuple[int, bytes]],
        counts: ReadCounts,
    ) -> None:
        self._source, self._size, self._counts = source, size, counts
        self._ranges = sorted(ranges)
        self._position = 0
        self.closed = False

    def read(self, nbytes: int = -1) -> bytes:
        start = self._position
        stop = self._size if nbytes is None or nbytes < 0 else min(self._size, start + nbytes)
        self._position = stop
        for offset, data in self._ranges:
            if offset <= start and stop <= offset + len(data):
                return data[start - offset : stop - offset]
        self._counts.add(1, stop - start)
        return bytes(self._source.read_at(stop - start, start))

    def seek(self, position: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._size}[whence]
        self._position = base + position
        return self._position

    def tell(self) -> int:
        return self._position

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class RemoteReads:
    """The pool that fetches ranges of object-storage files, `requests_in_flight` at a time."""

    def __init__(self, requests_in_flight: int) -> None:
        self._pool = ThreadPoolExecutor(requests_in_flight, thread_name_prefix="s3-read")

    def submit(self, call: Callable[[], _T]) -> Future[_T]:
        """Run `call` on the pool (an object-storage open: its HEADs and footer read)."""
        return self._pool.submit(call)

    def fetch(
        self, source: pa.NativeFile, ranges: Sequence[tuple[int, int]], counts: ReadCounts
    ) -> list[Future[tuple[int, bytes]]]:
        """Start fetching `ranges` of `source`; each future gives ``(offset, bytes)``."""
        return [self._pool.submit(_read_at, source, offset, n, counts) for offset, n in ranges]

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _read_at(
    source: pa.NativeFile, offset: int, nbytes: int, counts: ReadCounts
) -> tuple[int, bytes]:
    data = source.read_at(nbytes, offset)
    counts.add(1, len(data))
    return offset, data
