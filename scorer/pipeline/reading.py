"""Reading a shard's input, and the read-ahead that hides object-storage (S3) latency.

`ShardReader` opens a shard's files, each checked against the version the plan fingerprinted
before any row is read, and yields its rows in batches of at most ``batch_rows``, row group by
row group so that memory is bounded by a few batches, not by the file. Around that read it
hides the fixed costs of each file and the round trips of object storage:

- on object storage, a row group's column chunks are fetched as coalesced ranged reads
  (`ranges`), the next ``read_ahead`` row groups while one is decoded; the next shard of a
  worker is opened and its first groups fetched while the one before is scored (`open_ahead`);
  a packed shard's next files are opened ahead likewise (each open is three round trips);
- a shard that packs many small files (one piece per file) is read ahead on a small thread
  pool, a few row groups in flight, so each file's fixed cost (opening it, its footer, ~1.5 ms
  of per-column-chunk work for 1,000 rows) overlaps the others'; runs of small local files are
  read by one task, or scanned by DuckDB (`bulk`);
- the small batches of consecutive files are coalesced into batches of up to ``batch_rows``
  before they are scored, because encoding costs ~2 ms per batch whatever its size.

Separate from scoring and writing (`stages`, `sink`): everything here is input, its limits
(`limits`) and its errors (`ShardReadError` naming the file, `InputChangedError`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.errors import InputLimitError, ShardReadError, StorageError
from scorer.partitions import DATE_KEY
from scorer.pipeline.bulk import BulkReader, BulkReadFailed, bulk_schema, joins_run, scannable
from scorer.pipeline.days import ShardDays
from scorer.pipeline.footers import (
    FOOTER_DIGEST_TAG,
    FOOTER_TAIL_BYTES,
    file_fingerprint,
    read_footer,
)
from scorer.pipeline.limits import (
    MAX_STRING_BYTES_PER_BATCH,
    ReadAt,
    check_string_bytes,
    string_bound,
    string_leaves,
)
from scorer.pipeline.plan import Piece, Shard
from scorer.pipeline.ranges import (
    RangeFile,
    ReadCounts,
    RemoteReads,
    column_indices,
    group_ranges,
)
from scorer.pipeline.shipping import ActorSettings
from scorer.storage import foreign_errors

Run = list[list[pa.RecordBatch]]
"""The batches of a run of small files read by one task, a list per file."""

# Row groups of a packed shard read ahead, at most (and about `batch_rows` rows in all).
# Measured on 2 cores, 1,000-row files: 1.6-2.0 ms a file read one by one, 0.9-1.3 ms with 2-3
# in flight (pyarrow releases the GIL while it opens and decodes).
READ_AHEAD = 3
# Consecutive small files one read-ahead task opens and reads in turn (see `_read_ahead`).
FILES_PER_READ = 8
# The same where DuckDB scans them (`bulk`): measured on 2 cores, files of 1,000 rows, 0.8-0.9 ms
# of CPU a file in scans of 10, 0.5-0.65 ms in scans of 100; whole jobs alike with 64 and 200.
BULK_FILES_PER_READ = 64
# A shard's files are scanned by DuckDB only from this many files on, until it has started in
# the process (`ShardReader._scans`).
BULK_MIN_FILES = 200

# A row group of more than this many batches is streamed page by page: pre-buffering (pyarrow's
# default) loads the whole group's column chunks before its first batch, and a file written as
# one row group (pandas' `to_parquet`, many Spark jobs) made an actor's memory grow with the file
# (measured, one group: 2M rows peak 520 MB, 10M rows 1.9 GB). Smaller groups keep pre-buffering:
# on object storage it fetches a group's column chunks in a few coalesced ranged reads instead of
# one read per buffer per column, and its memory is a few batches' anyway.
STREAM_ROW_GROUP_BATCHES = 8
# Read buffer per column chunk while streaming: what a streamed group holds of its file at once.
STREAM_BUFFER_BYTES = 1 << 20
# A local file up to this size is read whole, in one read, and decoded from memory: a small
# file's reads were otherwise one per column chunk (19 for the session schema), and its
# footer one more. Bounded: at most `READ_AHEAD` such files are held at once.
WHOLE_FILE_BYTES = 8 << 20


@dataclass(frozen=True)
class RemoteFile:
    """An object-storage input file, opened: what its row groups' ranged reads need."""

    file: pa.NativeFile
    size: int
    metadata: pq.FileMetaData
    leaves: list[int]
    counts: ReadCounts
    fetched: dict[int, list[Future[tuple[int, bytes]]]] = field(default_factory=dict)
    """Row groups whose ranges are being fetched (read ahead), by index."""


@dataclass(frozen=True)
class ShardSource:
    """An opened input file (a shard's first) and the columns a shard reads from it."""

    parquet: pq.ParquetFile
    columns: list[str]
    streamed: bool = False
    """Its row groups are read page by page (`STREAM_ROW_GROUP_BATCHES`), not pre-buffered."""
    remote: RemoteFile | None = None
    """On object storage (not streamed): row groups come from concurrent ranged reads."""
    counts: ReadCounts | None = None
    """On object storage: the shard's requests and bytes, shared by its files."""
    string_leaves: list[int] = field(default_factory=list)
    """Leaves of the key and kept columns stored as strings, not read dictionary-encoded: their
    decoded size is checked per row group before it is read (`limits.check_string_bytes`)."""
    read_at: ReadAt | None = None
    """Reads of the open file (local), for the dictionary pages those checks read."""


@dataclass(frozen=True)
class SourcedBatch:
    """Rows to score, and the file its first row comes from (named if it cannot be scored)."""

    data: pa.RecordBatch | pa.Table
    input_path: str


class ShardReader:
    """A worker's reads of its shards: open a shard, then its rows in batches.

    Each call runs where it is made; the thread pools it starts (read-ahead, object-storage
    fetches) and DuckDB's connection live as long as the reader, one per worker.
    """

    def __init__(
        self,
        settings: ActorSettings,
        model_columns: Sequence[str],
        dictionary_columns: list[str],
        known_footers: Mapping[str, pq.FileMetaData] | None = None,
    ) -> None:
        self.settings = settings
        self.model_columns = model_columns
        """The columns the model reads (`IntentModel.required_columns`)."""
        self.dictionary_columns = dictionary_columns
        """The model's string columns, read dictionary-encoded
        (`IntentModel.categorical_string_columns`)."""
        self.known_footers = known_footers
        """Footers already parsed, by digest: the plan's, for a worker in the driver process."""
        self._read_pool: ThreadPoolExecutor | None = None
        self._remote_reads: RemoteReads | None = None
        self._bulk_reader: BulkReader | None = None
        self._strings: dict[int, list[int]] = {}
        """`ShardSource.string_leaves` by `Piece.schema_token`: one schema, one answer."""

    @property
    def remote(self) -> bool:
        """Whether the input is on object storage (ranged reads, read ahead, counted)."""
        return not self.settings.input_location.is_local

    def open(self, shard: Shard, has_label: bool) -> ShardSource:
        """The shard's first file and the columns to read; `ShardReadError` names the file."""
        settings = self.settings
        wanted = [*self.model_columns, settings.key_column, *settings.keep]
        day = self.day_column(shard)
        wanted += [day] if day else []
        if has_label and settings.label_column:
            wanted.append(settings.label_column)
        counts = ReadCounts() if self.remote else None
        return self._open(shard.pieces[0], list(dict.fromkeys(wanted)), counts)

    def day_column(self, shard: Shard) -> str | None:
        """The column giving the shard's rows their days; None where a ``dt=`` folder does."""
        if DATE_KEY in dict(shard.partition):
            return None
        return self.settings.days.column

    def shard_days(self, shard: Shard) -> ShardDays | None:
        """The selection and per-day scoring of a shard whose days are a column."""
        if self.day_column(shard) is None:
            return None
        return ShardDays(self.settings.days, shard.pieces[0].days)

    def open_ahead(self, shard: Shard, has_label: bool) -> Future[ShardSource]:
        """On object storage: open the shard and start fetching its first row groups now, on
        `remote_reads`, while the shard before it is still being scored (each step there is a
        round trip: two HEADs and the footer, then the groups)."""

        def opened() -> ShardSource:
            source = self.open(shard, has_label)
            piece = shard.pieces[0]
            ahead = self.settings.read_ahead if len(shard.pieces) == 1 else 1
            for group in piece.row_groups[:ahead]:
                self._fetch(source, group)
            return source

        return self.remote_reads.submit(opened)

    def _open(
        self, piece: Piece, columns: list[str], counts: ReadCounts | None = None
    ) -> ShardSource:
        """The piece's file, opened once: checked against its planned fingerprint before any row
        is read, and every read of the piece goes through this handle (or the file's bytes read
        at once), so a shard never holds rows of a version other than the one planned."""
        path = piece.input_path
        try:
            source, size, mtime_ns = self._open_version(path)
        except FileNotFoundError as exc:
            raise piece.changed("no file") from exc
        except Exception as exc:
            raise ShardReadError(f"{path}: cannot open: {exc}", input_path=path) from exc
        in_memory = self.settings.input_location.is_local and size <= WHOLE_FILE_BYTES
        try:
            if in_memory:
                with source:
                    source = pa.BufferReader(source.read_buffer())
            footer = read_footer(source, size, self.known_footers)
            if counts is not None:  # the open's HEAD, the HEAD for mtime, the footer's reads
                counts.add(2, 0)
                counts.add(*_footer_reads(footer.metadata, size))
        except Exception as exc:
            if not piece.fingerprint.startswith(f"{size}-{mtime_ns}-"):
                found = f"{size}-{mtime_ns}-(unreadable footer)"
                raise piece.changed(found) from exc
            raise ShardReadError(f"{path}: cannot open: {exc}", input_path=path) from exc
        found = file_fingerprint(size, mtime_ns, footer)
        if found != piece.fingerprint:
            raise piece.changed(found)
        metadata = footer.metadata
        # Checked before the reader is made: given a dictionary column the file lacks, pyarrow
        # fails with a bare KeyError (b'month') that names neither the problem nor the file.
        # Leaf names answer for flat columns; the Arrow schema only where a name is not a leaf.
        leaves = set(metadata.schema.names)
        if any(c not in leaves for c in columns):
            names = metadata.schema.to_arrow_schema().names
            missing = [c for c in columns if c not in names]
            if missing:
                raise ShardReadError(
                    f"{path}: missing column(s) {', '.join(missing)}", input_path=path
                )
        group_rows = piece.rows / len(piece.row_groups) if piece.row_groups else 0
        streamed = group_rows > STREAM_ROW_GROUP_BATCHES * self.settings.batch_rows
        try:
            parquet = pq.ParquetFile(
                source,
                metadata=metadata,
                read_dictionary=self.dictionary_columns,
                pre_buffer=not (streamed or in_memory),
                buffer_size=STREAM_BUFFER_BYTES if streamed else 0,
            )
        except Exception as exc:
            raise ShardReadError(f"{path}: cannot open: {exc}", input_path=path) from exc
        remote = None
        if counts is not None and not streamed:
            read = column_indices(metadata, columns)
            remote = RemoteFile(source, size, metadata, read, counts)
        token = piece.schema_token
        strings = self._strings.get(token) if token is not None else None
        if strings is None:
            # Read dictionary-encoded, the model's string columns cannot grow when decoded.
            dictionaries = set(self.dictionary_columns)
            key_and_kept = (self.settings.key_column, *self.settings.keep)
            strings = string_leaves(metadata, [c for c in key_and_kept if c not in dictionaries])
            if token is not None:
                self._strings[token] = strings
        opened = source
        read_at = (lambda offset, nbytes: opened.read_at(nbytes, offset)) if strings else None
        return ShardSource(parquet, columns, streamed, remote, counts, strings, read_at)

    def _open_version(self, path: str) -> tuple[pa.NativeFile, int, int | None]:
        """An input file opened, with the size and mtime of what was opened.

        Locally they are the open descriptor's own (`fstat`): a file replaced after the open is
        still the version checked. On object storage the size is the opened object's and the
        mtime a HEAD's after the open (a replacement in between is seen as a change). Ranged
        reads there are not pinned to the object version that was checked: an ETag with
        `If-Match` would pin them, but pyarrow's S3 filesystem offers neither (see
        `footers.file_fingerprint`).
        """
        location = self.settings.input_location
        if location.is_local:
            local = pa.OSFile(path)
            stat = os.fstat(local.fileno())
            return local, stat.st_size, stat.st_mtime_ns
        fs = location.filesystem
        source = fs.open_input_file(path)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            source.close()
            raise FileNotFoundError(path)
        return source, source.size(), info.mtime_ns

    def batches(self, source: ShardSource, shard: Shard) -> Iterator[pa.RecordBatch | pa.Table]:
        """The shard's rows in batches of at most `batch_rows` (`sourced_batches` without
        where each batch comes from)."""
        return (batch.data for batch in self.sourced_batches(source, shard))

    def sourced_batches(self, source: ShardSource, shard: Shard) -> Iterator[SourcedBatch]:
        """The shard's rows, file after file, in batches of at most `batch_rows`.

        Row group by row group: given the whole shard, the reader pre-buffers every row group
        of it at once, and an actor's memory grows with the shard (measured: peak 340 MB reading
        a 5M-row file, 217 MB for 1M; flat at ~235 MB row group by row group). A shard of one
        file streams its row groups on the calling thread; a packed shard's row groups are read
        ahead, at most `READ_AHEAD` and about `batch_rows` rows in flight, so memory stays
        bounded by a batch and a row group whatever the number of files.
        """
        if len(shard.pieces) == 1 and source.remote is not None:
            reads: Iterator[tuple[Piece, Iterable[pa.RecordBatch]]] = self._fetched_ahead(
                source, shard.pieces[0]
            )
        elif len(shard.pieces) == 1:
            piece = shard.pieces[0]
            reads = (
                (piece, self._row_group_batches(source, piece, group)) for group in piece.row_groups
            )
        else:
            reads = self._read_ahead(source, shard)
        yield from coalesced(reads, self.settings.batch_rows)

    def _read_row_group(
        self,
        source: ShardSource | Future[ShardSource],
        piece: Piece,
        group: int,
        after: Future[list[pa.RecordBatch]] | None = None,
    ) -> list[pa.RecordBatch]:
        """A row group's batches at once (read ahead, on `read_pool`)."""
        opened = source.result() if isinstance(source, Future) else source
        if after is not None:  # a file's reader is not thread-safe: its row groups in turn
            futures_wait([after])
        return list(self._row_group_batches(opened, piece, group))

    def _open_and_read(self, piece: Piece, columns: list[str]) -> list[pa.RecordBatch]:
        """A file of one row group, opened and read in one task (read ahead, on `read_pool`)."""
        return list(self._row_group_batches(self._open(piece, columns), piece, piece.rg_start))

    def _fetched_ahead(
        self, source: ShardSource, piece: Piece
    ) -> Iterator[tuple[Piece, Iterable[pa.RecordBatch]]]:
        """A single-file shard on object storage: while one row group is decoded, the ranges
        of the next `read_ahead` are being fetched (`open_ahead` started the first ones)."""
        remote = source.remote
        assert remote is not None
        groups = piece.row_groups
        try:
            for position, group in enumerate(groups):
                for ahead in groups[position + 1 : position + 1 + self.settings.read_ahead]:
                    self._fetch(source, ahead)
                yield piece, self._row_group_batches(source, piece, group)
        finally:  # an abandoned shard's reads in flight: their bytes are dropped as they come
            for futures in remote.fetched.values():
                for future in futures:
                    future.cancel()
            remote.fetched.clear()

    def _open_files_ahead(
        self,
        shard: Shard,
        index: int,
        first: ShardSource,
        opened: dict[int, ShardSource | Future[ShardSource]],
    ) -> None:
        """On object storage, a packed shard's next `read_ahead` files are opened, and their
        first row groups fetched, while file `index` is read: each open is three round trips."""
        stop = min(len(shard.pieces), index + 1 + self.settings.read_ahead)
        for ahead in range(index, stop):
            if ahead not in opened:
                piece = shard.pieces[ahead]
                opened[ahead] = self.remote_reads.submit(
                    functools.partial(self._open_fetching, piece, first.columns, first.counts)
                )

    def _open_fetching(
        self, piece: Piece, columns: list[str], counts: ReadCounts | None
    ) -> ShardSource:
        source = self._open(piece, columns, counts)
        self._fetch(source, piece.rg_start)
        return source

    def _fetch(self, source: ShardSource, group: int) -> None:
        """Start fetching row group `group`'s column chunks (once)."""
        remote = source.remote
        if remote is None or group in remote.fetched:
            return
        ranges = group_ranges(remote.metadata, group, remote.leaves, remote.size)
        remote.fetched[group] = self.remote_reads.fetch(remote.file, ranges, remote.counts)

    def _remote_parquet(
        self, source: ShardSource, piece: Piece, group: int
    ) -> tuple[pq.ParquetFile, RangeFile]:
        """A reader of row group `group` over its fetched bytes (fetched now if not ahead), and
        those bytes as a file.
        A read the S3 client gave up on (after its own retries) is a `StorageError`, which the
        driver retries: the network failed, not the data."""
        remote = source.remote
        assert remote is not None
        self._fetch(source, group)
        with foreign_errors(piece.input_path, f"cannot read row group {group} from object storage"):
            ranges = [future.result() for future in remote.fetched.pop(group)]
        view = RangeFile(remote.file, remote.size, ranges, remote.counts)
        parquet = pq.ParquetFile(
            pa.PythonFile(view, mode="r"),
            metadata=remote.metadata,
            read_dictionary=self.dictionary_columns,
            pre_buffer=False,
        )
        return parquet, view

    def _row_group_batches(
        self, opened: ShardSource, piece: Piece, group: int
    ) -> Iterator[pa.RecordBatch]:
        """A row group's batches, one at a time as they are decoded."""
        try:
            parquet, read_at = opened.parquet, opened.read_at
            if opened.remote is not None:
                parquet, view = self._remote_parquet(opened, piece, group)
                read_at = _read_at(view) if opened.string_leaves else None
                if group + 1 < piece.rg_stop:
                    self._fetch(opened, group + 1)  # fetched while this one is decoded
            if opened.string_leaves:  # before the row group is decoded
                check_string_bytes(
                    parquet.metadata,
                    group,
                    opened.string_leaves,
                    self.settings.batch_rows,
                    read_at,
                    piece.input_path,
                )
            yield from parquet.iter_batches(
                batch_size=self.settings.batch_rows,
                row_groups=[group],
                columns=opened.columns,
                use_threads=False,
            )
        except (StorageError, InputLimitError):
            raise
        except Exception as exc:
            raise ShardReadError(
                f"{piece.input_path}: unreadable data in row groups "
                f"{piece.rg_start}-{piece.rg_stop}: {exc}",
                input_path=piece.input_path,
            ) from exc

    def _read_ahead(
        self, first: ShardSource, shard: Shard
    ) -> Iterator[tuple[Piece, list[pa.RecordBatch]]]:
        """A packed shard's row groups in order, read on `read_pool` ahead of their use.

        A run of consecutive local files of one row group each is opened and read by one task
        (`_open_and_read_run`): a task per file cost two thread hand-offs per file, each a
        futex wake-up and a GIL hand-off. Any other file is opened by a task submitted before
        its row groups' reads, and each read waits for the file's read before it (one reader is
        not safe on two threads): the pool takes tasks in order, so a task never waits on one
        still queued.
        """
        pool = self.read_pool
        scan = self._scans(shard)
        todo = deque(
            (index, piece, group)
            for index, piece in enumerate(shard.pieces)
            for group in piece.row_groups
        )
        opened: dict[int, ShardSource | Future[ShardSource]] = {0: first}
        last_read: dict[int, Future[list[pa.RecordBatch]]] = {}
        # The pieces' indices, the row group of a single piece, their rows, and the read: of
        # the row group's batches, or (`Run`) of a run of files.
        window: deque[tuple[list[int], int, int, Future[Any]]] = deque()
        rows_ahead = 0
        try:
            while todo or window:
                while todo and (
                    not window
                    or (len(window) < READ_AHEAD and rows_ahead < self.settings.batch_rows)
                ):
                    index, piece, group = todo.popleft()
                    if first.counts is not None:  # object storage: the next files' opens too
                        self._open_files_ahead(shard, index, first, opened)
                    if index in opened:
                        after = last_read.get(index)
                        read = pool.submit(self._read_row_group, opened[index], piece, group, after)
                        last_read[index] = read
                        indices = [index]
                    elif len(piece.row_groups) == 1:
                        run, bulk = self._run_of_files(piece, todo, scan)
                        read = pool.submit(self._open_and_read_run, run, first.columns, bulk)
                        indices = [index] + [todo.popleft()[0] for _ in run[1:]]
                        group = -1  # a run
                    else:
                        opened[index] = pool.submit(self._open, piece, first.columns, first.counts)
                        read = pool.submit(self._read_row_group, opened[index], piece, group)
                        last_read[index] = read
                        indices = [index]
                    # Only a piece's total is known before its file is opened: spread evenly.
                    rows = sum(shard.pieces[i].rows for i in indices) // len(piece.row_groups)
                    window.append((indices, group, rows, read))
                    rows_ahead += rows
                indices, group, rows, read = window.popleft()
                rows_ahead -= rows
                got = read.result()
                per_file = got if group == -1 else [got]
                for index, batches in zip(indices, per_file, strict=True):
                    piece = shard.pieces[index]
                    if group in (-1, piece.rg_stop - 1):
                        # Done with the file: its reader and its last rows go. Held here,
                        # memory grew with a shard's files (measured, 4,000 files in shards of
                        # 1,000: peak 500-600 MB against 320 MB).
                        opened.pop(index, None)
                        last_read.pop(index, None)
                    yield piece, batches
        finally:
            for _, _, _, read in window:
                read.cancel()

    def _run_of_files(
        self, piece: Piece, todo: deque[tuple[int, Piece, int]], scan: bool
    ) -> tuple[list[Piece], bool]:
        """`piece` and the files of one row group after it in `todo`, to be read by one task:
        at most `FILES_PER_READ` and `WHOLE_FILE_BYTES` in all, or, where DuckDB may scan
        them (``scan``, the shard's `_scans`, and `bulk.joins_run`), at most
        `BULK_FILES_PER_READ` and `batch_rows` rows; and whether it is such a run. (Local files
        only: on object storage every file is opened ahead, one by one, by
        `_open_files_ahead`.)"""
        run = [piece]
        size, rows = piece.input_bytes, piece.rows
        bulk = scan and scannable(piece)
        limit = BULK_FILES_PER_READ if bulk else FILES_PER_READ
        for _, following, _ in todo:
            if len(run) == limit or len(following.row_groups) != 1:
                break
            if bulk and not joins_run(piece, following):
                break
            size += following.input_bytes
            rows += following.rows
            if size > WHOLE_FILE_BYTES or (bulk and rows > self.settings.batch_rows):
                break
            run.append(following)
        return run, bulk

    def _scans(self, shard: Shard) -> bool:
        """Whether runs of the shard's files may be scanned by DuckDB (`bulk`): local files,
        and once the reader has started, or for a shard of `BULK_MIN_FILES` files or more. DuckDB's
        import and connection cost ~0.13 s of CPU, what ~200 files' scans save; a quick first
        shard of ~50 files (`packing.with_quick_head`) took 0.2-0.3 s longer to commit with them."""
        if self.remote:
            return False
        started = self._bulk_reader is not None and self._bulk_reader.started
        return started or shard.files >= BULK_MIN_FILES

    def _open_and_read_run(self, pieces: list[Piece], columns: list[str], bulk: bool) -> Run:
        """Files of one row group each, opened and read by one task (on `read_pool`): in turn,
        or, for a ``bulk`` run (`_run_of_files`), the first so and the rest by one DuckDB scan
        (`bulk`), whose rows then all come as the first file's."""
        if not bulk or len(pieces) == 1:
            return [self._open_and_read(piece, columns) for piece in pieces]
        first, rest = self._open(pieces[0], columns), pieces[1:]
        batches = list(self._row_group_batches(first, pieces[0], pieces[0].rg_start))
        schema = pa.schema([first.parquet.schema_arrow.field(name) for name in columns])
        if bulk_schema(schema) and self._bulk_strings_bounded(first, rest):
            with contextlib.suppress(BulkReadFailed):  # read file by file below: names a bad file
                return [batches + self.bulk_reader.read(rest, schema)] + [[] for _ in rest]
        return [batches] + [self._open_and_read(piece, columns) for piece in rest]

    def _bulk_strings_bounded(self, first: ShardSource, rest: list[Piece]) -> bool:
        """Whether DuckDB may decode the key and kept strings of `rest` (files of `first`'s
        schema): it decodes them before their size could be checked (`limits`), so only files
        whose plan footers bound them, whatever their dictionaries hold, are scanned. Without
        the plan's footers (a Ray actor), such files are read by pyarrow, each row group
        checked before it is decoded."""
        if not first.string_leaves:
            return True
        if not self.known_footers:
            return False
        for piece in rest:
            metadata = self.known_footers.get(piece.fingerprint.rpartition(FOOTER_DIGEST_TAG)[2])
            if metadata is None or any(
                string_bound(metadata, group, first.string_leaves, self.settings.batch_rows, None)[
                    0
                ]
                > MAX_STRING_BYTES_PER_BATCH
                for group in piece.row_groups
            ):
                return False
        return True

    @property
    def remote_reads(self) -> RemoteReads:
        """The threads fetching object-storage ranges; started with the first remote shard."""
        if self._remote_reads is None:
            self._remote_reads = RemoteReads(self.settings.requests_in_flight)
        return self._remote_reads

    @property
    def bulk_reader(self) -> BulkReader:
        """DuckDB's scans of runs of small local files (`bulk`); made with the first."""
        if self._bulk_reader is None:
            self._bulk_reader = BulkReader()
        return self._bulk_reader

    @property
    def read_pool(self) -> ThreadPoolExecutor:
        """The threads reading a packed shard's files ahead; started with the first such shard."""
        if self._read_pool is None:
            self._read_pool = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="read-ahead")
        return self._read_pool

    def empty(self, source: ShardSource) -> pa.Table:
        """No rows, the columns read: a shard of empty row groups still commits a file."""
        return source.parquet.schema_arrow.empty_table().select(source.columns)


def coalesced(
    reads: Iterable[tuple[Piece, Iterable[pa.RecordBatch]]], limit: int
) -> Iterator[SourcedBatch]:
    """Consecutive batches joined up to `limit` rows (never split, so a shard of one big file
    keeps its batches); a change of schema between files ends a batch."""
    held: list[pa.RecordBatch] = []
    held_rows, held_from, held_schema = 0, "", None
    for piece, batches in reads:
        for batch in batches:
            # `equals`, not `!=`: the operator costs 25 µs a batch, 30x the method (measured).
            if held and (
                held_rows + batch.num_rows > limit or not batch.schema.equals(held_schema)
            ):
                yield SourcedBatch(_joined(held), held_from)
                held, held_rows = [], 0
            if not held:
                held_from, held_schema = piece.input_path, batch.schema
            held.append(batch)
            held_rows += batch.num_rows
    if held:
        yield SourcedBatch(_joined(held), held_from)


def _footer_reads(metadata: pq.FileMetaData, size: int) -> tuple[int, int]:
    """Requests and bytes `footers.read_footer` took: its tail, and the rest of a longer footer."""
    tail = min(size, FOOTER_TAIL_BYTES)
    footer = metadata.serialized_size
    if footer + 8 <= tail:
        return 1, tail
    return 2, tail + footer


def _joined(batches: list[pa.RecordBatch]) -> pa.RecordBatch | pa.Table:
    """Batches as one contiguous table. Files have dictionaries of their own for the categorical
    columns: `unify_dictionaries` first makes them one (measured, 131 batches of 1,000 rows:
    29 ms, against 85 ms for `combine_chunks` alone and 123 ms through `concat_tables`), and
    the scores come out identical to scoring each file's batch alone."""
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).unify_dictionaries().combine_chunks()


def _read_at(view: RangeFile) -> ReadAt:
    """`limits.ReadAt` over a row group's fetched ranges (read on the calling thread only)."""

    def read(offset: int, nbytes: int) -> bytes:
        view.seek(offset)
        return view.read(nbytes)

    return read
