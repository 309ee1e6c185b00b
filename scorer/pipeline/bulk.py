"""Reading a packed shard of small local files with DuckDB: many files a query, off the GIL.

A file of 1,000 rows costs pyarrow ~1.0-1.3 ms of CPU to open and decode (~55 µs a column
chunk, 19 columns), much of it holding the GIL, so the in-process worker read 4,000 such files
at ~1.8 ms a file whatever the threads. DuckDB's Parquet scan over a list of files, on the
calling thread, releases the GIL and read them at ~0.8 ms a file (measured on 2 cores: the
whole job's work window 3.0-3.5 s against 7.3-7.8 s). For big files pyarrow is the faster
reader (2M rows in 0.34 s against 0.52 s), so shards of one file, files of several pieces and
object storage keep `actor.ShardScorer`'s own reader; so does any shard whose columns DuckDB
might not give back with the very types pyarrow gives (`bulk_readable`).

The guarantee of the per-file reader holds: no row of a version other than the planned one is
scored. Before a group of files is scanned each one's planned fingerprint is checked (size,
mtime, footer digest, from two reads of its end), and after the scan each file's inode, size
and mtime are checked again, so a file replaced or rewritten before or during the scan is
`errors.InputChangedError` and none of the group's rows is handed on. (What neither check sees is a
rewrite in place, during the scan, to the same size that also puts the old mtime back.)

Anything DuckDB cannot read (a poison file, a column missing in a later file) is read again
file by file by the caller's reader, which names the file (`BulkReadFailed`).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from scorer.pipeline.plan import Piece, Shard, digest_fingerprint, footer_digest

if TYPE_CHECKING:
    import duckdb

GLOB_CHARACTERS = frozenset("*?[{")
"""DuckDB reads a path with one of these as a glob: such files keep the per-file reader."""


def is_bulk_type(kind: pa.DataType) -> bool:
    """Whether DuckDB reads a Parquet column of this Arrow type back as the same values, castable
    without loss to what pyarrow gives: integers, floats, booleans, strings, dates, and
    dictionaries of strings (pyarrow's `read_dictionary` columns)."""
    if pa.types.is_dictionary(kind):
        return pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)
    return (
        pa.types.is_integer(kind)
        or (pa.types.is_floating(kind) and not pa.types.is_float16(kind))
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_date32(kind)
    )


def bulk_readable(shard: Shard, schema: pa.Schema, local: bool) -> bool:
    """Whether DuckDB reads ``shard`` (``schema``: its first file's, as pyarrow reads the
    shard's columns): a local shard of several whole files of one Arrow schema, columns of
    `is_bulk_type` types, no path DuckDB would glob."""
    pieces = shard.pieces
    if not local or len(pieces) < 2:
        return False
    first = pieces[0].schema
    return (
        first is not None
        and all(p.whole_file and _same_schema(p.schema, first) for p in pieces)
        and all(is_bulk_type(f.type) for f in schema)
        and not any(GLOB_CHARACTERS.intersection(p.input_path) for p in pieces)
    )


def file_groups(pieces: Sequence[Piece], batch_rows: int) -> list[list[Piece]]:
    """Consecutive files of about ``batch_rows`` rows: one query each (a file larger than that
    is a group of its own)."""
    groups: list[list[Piece]] = []
    rows = 0
    for piece in pieces:
        if not groups or rows + piece.rows > batch_rows:
            groups.append([])
            rows = 0
        groups[-1].append(piece)
        rows += piece.rows
    return groups


class BulkReadFailed(Exception):
    """DuckDB could not read a group of files: the caller reads them one by one instead."""


@dataclass(frozen=True)
class _Version:
    inode: int
    size: int
    mtime_ns: int


class BulkReader:
    """DuckDB scans of file groups, one thread each (more DuckDB threads spin against the
    actor's stage threads on few cores: measured, 4,000 files in 25.8 s with 2, 3.6 s with
    one). A connection is made on first use; each thread queries through its own cursor."""

    def __init__(self) -> None:
        self._connection: duckdb.DuckDBPyConnection | None = None
        self._cursors = threading.local()
        self._lock = threading.Lock()

    def read(
        self, pieces: Sequence[Piece], schema: pa.Schema, batch_rows: int
    ) -> list[pa.RecordBatch]:
        """The rows of ``pieces`` (whole files), in file order, as batches of at most
        ``batch_rows`` rows of ``schema`` (the columns and types pyarrow reads).

        Raises `errors.InputChangedError` naming the file if one is not its planned version before or
        after the scan, and `BulkReadFailed` if DuckDB cannot read the group.
        """
        paths = [p.input_path for p in pieces]
        before = [_checked_version(p) for p in pieces]
        columns = ", ".join(_quoted(name) for name in schema.names)
        query = (
            f"SELECT {columns} FROM read_parquet($paths, hive_partitioning = false, "
            "union_by_name = false, binary_as_string = false)"
        )
        try:
            # A relation, not `execute`'s DB-API result: that one copies the rows once more.
            relation = self._cursor().sql(query, params={"paths": paths})
            reader = relation.to_arrow_reader(batch_rows)
            batches = None if reader is None else list(reader)
        except Exception as exc:  # duckdb.Error and its kin: read file by file instead
            raise BulkReadFailed(f"{len(paths)} files from {paths[0]}: {exc}") from exc
        if batches is None:
            raise BulkReadFailed(f"{len(paths)} files from {paths[0]}: DuckDB gave no result")
        for piece, version in zip(pieces, before, strict=True):
            after = _version(piece.input_path)
            if after != version:
                found = "no file" if after is None else f"{after.size}-{after.mtime_ns}"
                raise piece.changed(found)
        try:
            return [batch.cast(schema) for batch in batches]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise BulkReadFailed(f"{paths[0]}…: DuckDB's types differ: {exc}") from exc

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._cursors, "cursor", None)
        if cursor is None:
            with self._lock:
                if self._connection is None:
                    self._connection = _connect()
                cursor = self._cursors.cursor = self._connection.cursor()
        return cursor


def read_groups(
    reader: BulkReader,
    shard: Shard,
    schema: pa.Schema,
    batch_rows: int,
    one_by_one: Callable[[Piece], list[pa.RecordBatch]],
    pool: Executor,
    in_flight: int,
) -> Iterator[tuple[Piece, list[pa.RecordBatch]]]:
    """The shard's batches group by group, each with the group's first piece, ``in_flight``
    groups read at once on ``pool``; a group DuckDB cannot read comes from ``one_by_one`` (the
    per-file reader, which names a bad file)."""
    groups = file_groups(shard.pieces, batch_rows)
    reads: deque[Future[list[pa.RecordBatch]]] = deque()
    try:
        for index, group in enumerate(groups):
            for ahead in groups[index + len(reads) : index + max(1, in_flight)]:
                reads.append(pool.submit(reader.read, ahead, schema, batch_rows))
            try:
                batches = reads.popleft().result()
            except BulkReadFailed:
                for piece in group:
                    yield piece, one_by_one(piece)
                continue
            yield group[0], batches
    finally:  # an abandoned shard: the scans not started are dropped
        for read in reads:
            read.cancel()


def _connect() -> duckdb.DuckDBPyConnection:
    import duckdb  # here: the per-file reader never pays its import

    return duckdb.connect(
        config={
            "threads": 1,
            "preserve_insertion_order": True,  # the files' rows in order, as pyarrow reads
            "autoinstall_known_extensions": False,  # Parquet is built in; never the network
            "autoload_known_extensions": False,
            "enable_external_file_cache": False,  # files are read once: no copy kept
        }
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _same_schema(schema: pa.Schema | None, first: pa.Schema) -> bool:
    return schema is first or (schema is not None and schema.equals(first))


def _version(path: str) -> _Version | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return _Version(stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _checked_version(piece: Piece) -> _Version:
    """The file's inode, size and mtime, after checking its planned fingerprint (the digest
    of its footer's bytes, as `plan.read_footer` takes it) on the same open descriptor."""
    path = piece.input_path
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise piece.changed("no file") from exc
    try:
        stat = os.fstat(descriptor)
        size = stat.st_size
        found = f"{size}-{stat.st_mtime_ns}-(unreadable footer)"
        if size >= 12:
            end = os.pread(descriptor, 8, size - 8)
            footer_bytes = int.from_bytes(end[:4], "little")
            if end[4:] == b"PAR1" and footer_bytes + 12 <= size:
                serialized = os.pread(descriptor, footer_bytes, size - 8 - footer_bytes)
                found = digest_fingerprint(size, stat.st_mtime_ns, footer_digest(serialized))
    finally:
        os.close(descriptor)
    if found != piece.fingerprint:
        raise piece.changed(found)
    return _Version(stat.st_ino, size, stat.st_mtime_ns)
