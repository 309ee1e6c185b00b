"""Runs of small local files read by DuckDB: many files a scan, off the GIL.

A file of 1,000 rows costs pyarrow's reader ~1.2-1.4 ms of CPU to open and decode (~55 µs a
column chunk, 19 columns, much of it in zstd's context set-up and in Python around it); DuckDB's
Parquet scan of a list of such files costs ~0.5-0.65 ms a file (measured on 2 cores, lists of
100 files). A packed shard of small files is read ahead in runs of consecutive files
(`reading.ShardReader._read_ahead`); a run this module may read (`joins_run`) is scanned at once:
the run's first file by pyarrow, which checks it and gives the types pyarrow reads, and the
rest by DuckDB, cast to those types. Whole jobs of 4,000 files of 1,000 rows went from 4.31 s to
3.25 s, CPU from 7.3-9.0 s to 5.7-6.3 s (3 alternating runs, 2 cores, the in-process worker and
a worker process). DuckDB starts in a process only for a shard of `reading.BULK_MIN_FILES` files.

Only what DuckDB gives back as pyarrow would is read here: local files, whole files of one Arrow
schema in the run's plan (`plan.Piece.schema_token`: without it DuckDB would cast a later file's
column to the first file's type, a double to an integer, say), columns of `is_bulk_type` types
(`bulk_schema`), paths DuckDB would not glob. Everything else keeps the per-file reader.

The guarantee of the per-file reader holds: no row of a version other than the planned one is
scored. Before a run is scanned each file's planned fingerprint is checked (size, mtime, footer
digest, on one open descriptor), and after the scan each file's inode, size and mtime are checked
again, so a file replaced or rewritten before or during the scan is `InputChangedError` naming it,
and none of the run's rows is handed on. (What neither check sees is a rewrite in place, during
the scan, to the same size that also puts the old mtime back.)

Anything DuckDB cannot read (a poison file) is read again file by file by the caller's reader,
which names the file (`BulkReadFailed`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from scorer.pipeline.footers import digest_fingerprint, read_footer_digest
from scorer.pipeline.plan import Piece

if TYPE_CHECKING:
    import duckdb

__all__ = ["BulkReadFailed", "BulkReader", "bulk_schema", "is_bulk_type", "joins_run", "scannable"]

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


def bulk_schema(schema: pa.Schema) -> bool:
    """Whether every column of ``schema`` (the columns read, as pyarrow reads them) is of an
    `is_bulk_type` type."""
    return all(is_bulk_type(f.type) for f in schema)


def scannable(piece: Piece) -> bool:
    """Whether ``piece`` may be read by a DuckDB scan (local files are the caller's to check): a
    whole file whose schema in this plan is known, at a path DuckDB reads as it is."""
    return (
        piece.whole_file
        and piece.schema_token is not None
        and not GLOB_CHARACTERS.intersection(piece.input_path)
    )


def joins_run(first: Piece, piece: Piece) -> bool:
    """Whether ``piece`` may be scanned with a run that starts with ``first`` (`scannable`):
    both `scannable`, files of one schema in this plan."""
    return scannable(first) and scannable(piece) and piece.schema_token == first.schema_token


class BulkReadFailed(Exception):
    """DuckDB could not read a run of files: the caller reads them one by one instead."""


@dataclass(frozen=True)
class _Version:
    inode: int
    size: int
    mtime_ns: int


class BulkReader:
    """DuckDB scans of runs of files, each on the calling thread through a cursor of its own,
    DuckDB itself on one thread (more DuckDB threads spin against the stage threads on few
    cores: measured, 4,000 files in 25.8 s with 2, 3.6 s with one). The connection is made on
    first use, and `import duckdb` with it: a job that never scans pays nothing."""

    def __init__(self) -> None:
        self._connection: duckdb.DuckDBPyConnection | None = None
        self._cursors = threading.local()
        self._lock = threading.Lock()
        self._unavailable: str | None = None
        """Why DuckDB cannot be used in this process (a cluster node without it): every read
        then fails at once, and the caller's per-file reader reads the files."""

    def read(self, pieces: Sequence[Piece], schema: pa.Schema) -> list[pa.RecordBatch]:
        """The rows of ``pieces`` (whole local files, `joins_run`), in file order, as batches of
        ``schema`` (the columns and the types pyarrow reads from their first file).

        Raises `errors.InputChangedError` naming the file if one is not its planned version
        before or after the scan, and `BulkReadFailed` if DuckDB cannot read them.
        """
        paths = [p.input_path for p in pieces]
        if self._unavailable is not None:
            raise BulkReadFailed(self._unavailable)
        before = [_checked_version(p) for p in pieces]
        columns = ", ".join(_quoted(name) for name in schema.names)
        query = (
            f"SELECT {columns} FROM read_parquet($paths, hive_partitioning = false, "
            "union_by_name = false, binary_as_string = false, filename = false)"
        )
        try:
            # A relation, not `execute`'s DB-API result: that one copies the rows once more.
            table = self._cursor().sql(query, params={"paths": paths}).to_arrow_table()
        except Exception as exc:  # duckdb.Error and its kin: read file by file instead
            raise BulkReadFailed(f"{len(paths)} files from {paths[0]}: {exc}") from exc
        for piece, version in zip(pieces, before, strict=True):
            after = _version(piece.input_path)
            if after != version:
                raise piece.changed(
                    "no file" if after is None else f"{after.size}-{after.mtime_ns} (during a scan)"
                )
        expected = sum(p.rows for p in pieces)
        if table.num_rows != expected:  # never seen; the per-file reader would say what is wrong
            raise BulkReadFailed(
                f"{len(paths)} files from {paths[0]}: DuckDB gave {table.num_rows} rows, "
                f"the plan has {expected}"
            )
        try:
            return table.cast(schema).to_batches()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise BulkReadFailed(f"{paths[0]}…: DuckDB's types differ: {exc}") from exc

    @property
    def started(self) -> bool:
        """Whether DuckDB is imported and connected in this process (a scan costs no start)."""
        return self._connection is not None

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._cursors, "cursor", None)
        if cursor is None:
            with self._lock:
                if self._unavailable is not None:  # found by another thread meanwhile
                    raise BulkReadFailed(self._unavailable)
                if self._connection is None:
                    try:
                        self._connection = _connect()
                    except ImportError as exc:
                        self._unavailable = f"DuckDB is not installed here: {exc}"
                        raise BulkReadFailed(self._unavailable) from exc
                cursor = self._cursors.cursor = self._connection.cursor()
        return cursor


def _connect() -> duckdb.DuckDBPyConnection:
    import duckdb  # here: the per-file reader never pays its import (~0.1 s)

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


def _version(path: str) -> _Version | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return _Version(stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _checked_version(piece: Piece) -> _Version:
    """The file's inode, size and mtime, after checking its planned fingerprint (size, mtime
    and footer digest) on the same open descriptor."""
    path = piece.input_path
    try:
        source = pa.OSFile(path)
    except FileNotFoundError as exc:
        raise piece.changed("no file") from exc
    with source:
        stat = os.fstat(source.fileno())
        try:
            digest = read_footer_digest(source, stat.st_size)
        except ValueError:
            found = f"{stat.st_size}-{stat.st_mtime_ns}-(unreadable footer)"
        else:
            found = digest_fingerprint(stat.st_size, stat.st_mtime_ns, digest)
    if found != piece.fingerprint:
        raise piece.changed(found)
    return _Version(stat.st_ino, stat.st_size, stat.st_mtime_ns)
