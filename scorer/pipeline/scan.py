"""Finding a run's input files: listing INPUT, its hive partitions, the footers read fast.

``scan_inputs`` finds the input files (a single file, or every ``*.parquet`` below a directory,
skipping names that start with ``_`` or ``.`` such as ``_scorer``, `is_hidden`), takes each
file's partition from its hive ``key=value`` folders (`partitions.partition_of`), applies
``--partition`` / ``--since`` / ``--until`` (`partitions.PartitionFilter`), and reads each footer
(`footers.read_footer`): in a thread pool on object storage, where latency dominates, and in
forked processes as well as this one for many local files, where Python's CPU time does. A file
whose footer cannot be read does not stop the scan: it becomes a `plan.FailedInput`.

Each file is listed once, by where it is (`plan.InputFile.identity`), and `with_output_names`
gives it the name its scores go by in OUTPUT (see `plan` for identity against relpath).
"""

from __future__ import annotations

import hashlib
import heapq
import multiprocessing
import os
import stat
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.errors import InputLimitError, NoInputFilesError
from scorer.partitions import (
    DATE_KEY,
    SELECT_ALL,
    Partition,
    PartitionFilter,
    hive_tail,
    partition_of,
)
from scorer.pipeline.footers import file_fingerprint, read_footer, row_group_bytes, row_group_rows
from scorer.pipeline.limits import check_row_groups
from scorer.pipeline.plan import FailedInput, InputFile
from scorer.storage import Location, foreign_errors


def scan_inputs(
    location: Location,
    selection: PartitionFilter = SELECT_ALL,
    *,
    max_workers: int = 16,
    processes: int = 1,
    day_columns: bool = False,
) -> list[InputFile | FailedInput]:
    """The selected input files under ``location`` with their footers, sorted by relpath.

    On object storage the footers are read on up to ``max_workers`` threads (latency bound);
    locally, with ``processes`` > 1 and at least `PROCESS_SCAN_MIN_FILES` files a process, by
    that many processes, this one included (CPU bound: see `_scan_forked`).

    ``day_columns``: a file outside a ``dt=`` folder is kept whatever the day filter, as its days
    may be a column (`days.resolve_days` selects its row groups, or leaves it out).

    Raises ``NoInputFilesError`` when nothing is selected and ``StorageError`` when INPUT
    cannot be listed. Unreadable footers are ``FailedInput`` items, not errors.
    """
    loose = selection.without_days()
    candidates = [
        c
        for c in _discover(location)
        if selection.matches(c.partition, c.path)
        or (
            day_columns and DATE_KEY not in dict(c.partition) and loose.matches(c.partition, c.path)
        )
    ]
    if not candidates:
        why = f" selected by {selection.describe()}" if selection else ""
        raise NoInputFilesError(f"{location.uri}: no Parquet file{why}")
    schemas = _SchemaCache()
    if location.is_local:
        # Locally a footer is ~0.2 ms of mostly Python (measured): threads only queue on the GIL,
        # so many footers are read by forked processes as well as this one (`_scan_forked`).
        chunks = _chunks(candidates, processes, PROCESS_SCAN_MIN_FILES)
        if len(chunks) > 1:
            return _scan_forked(location.filesystem, chunks, schemas)
        return _read_footers(location.filesystem, candidates, schemas)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(candidates)))) as pool:
        return list(pool.map(lambda c: _read_footer(location.filesystem, c, schemas), candidates))


PROCESS_SCAN_MIN_FILES = 1_000
"""Local footers a forked process reads at least: a fork and the pickled result cost ~30 ms,
what ~150 footers take (measured, 19-column footers of 4 KB)."""


def _chunks(candidates: list[_Candidate], processes: int, minimum: int) -> list[list[_Candidate]]:
    """``candidates`` in order, in up to ``processes`` runs of at least ``minimum``."""
    count = max(1, min(processes, len(candidates) // max(1, minimum)))
    size = -(-len(candidates) // count)
    return [candidates[i : i + size] for i in range(0, len(candidates), size)]


def _scan_forked(
    fs: pafs.FileSystem, chunks: list[list[_Candidate]], schemas: _SchemaCache
) -> list[InputFile | FailedInput]:
    """The first chunk's footers read here, the others' by forked processes at the same time
    (measured on 2 cores, 4,000 files: 0.88-0.94 s against 1.26-1.98 s in this process alone).

    A forked process's files come back without their parsed footers (`InputFile.footer` is
    None: pickling one is a parse again on this side); the in-process worker parses those when
    it opens them, as an actor does. A process that fails has its files read here instead.
    Fork, not spawn: a spawned process would import pyarrow first (~0.3 s); the caller forks
    only where no Ray is connected (its threads and sockets must not be copied).
    """
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=len(chunks) - 1, mp_context=context)
    try:
        forked = [pool.submit(_read_forked, fs, chunk) for chunk in chunks[1:]]
        items = _read_footers(fs, chunks[0], schemas)
        for future, chunk in zip(forked, chunks[1:], strict=True):
            try:
                items += [schemas.adopted(item) for item in future.result()]
            except BrokenProcessPool:
                items += _read_footers(fs, chunk, schemas)
        return items
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _read_footers(
    fs: pafs.FileSystem, candidates: Sequence[_Candidate], schemas: _SchemaCache
) -> list[InputFile | FailedInput]:
    return [_read_footer(fs, c, schemas) for c in candidates]


def _read_forked(fs: pafs.FileSystem, chunk: list[_Candidate]) -> list[InputFile | FailedInput]:
    """In a forked process: the chunk's footers, without the parsed ones (`_scan_forked`)."""
    items = _read_footers(fs, chunk, _SchemaCache())
    return [replace(i, footer=None) if isinstance(i, InputFile) else i for i in items]


@dataclass(frozen=True)
class _Candidate:
    path: str
    identity: str
    relpath: str
    partition: Partition
    size: int
    mtime_ns: int | None


class _Listed(NamedTuple):
    """A Parquet file found below INPUT: ``below`` is its path below INPUT's folder. (A tuple,
    not a frozen dataclass: 4,000 small files made ~5 ms of the planning's critical path.)"""

    below: str
    path: str
    identity: str
    size: int
    mtime_ns: int | None


def _discover(location: Location) -> list[_Candidate]:
    """INPUT's Parquet files in relpath order, each file once: of the relpaths that reach one
    file (symlinks, a folder linked beside its target), the first."""
    root = location.path.rstrip("/") or "/"
    with foreign_errors(location.uri, "cannot list"):
        if location.is_local:
            parent, listed = _list_local(root, location.uri)
        else:
            parent, listed = _list_remote(location, root)
    prefix = "/".join(hive_tail(parent))
    partitions: dict[str, Partition] = {}  # by folder: small files share a handful
    firsts: dict[str, _Candidate] = {}
    for found in sorted(listed):
        folder, _, name = found.below.rpartition("/")
        if is_hidden(found.below.split("/")):
            continue
        folder = "/".join(p for p in (prefix, folder) if p)
        partition = partitions.get(folder)
        if partition is None:
            partition = partitions[folder] = partition_of(f"{folder}/")
        relpath = f"{folder}/{name}" if folder else name
        firsts.setdefault(
            found.identity,
            _Candidate(found.path, found.identity, relpath, partition, found.size, found.mtime_ns),
        )
    return list(firsts.values())


def _list_remote(location: Location, root: str) -> tuple[str, list[_Listed]]:
    fs = location.filesystem
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise NoInputFilesError(f"{location.uri}: no such file or directory")
    if info.type == pafs.FileType.File:
        parent, _, name = root.rpartition("/")
        found = [(info, name)]
    else:
        parent = root
        selector = pafs.FileSelector(root, recursive=True)
        found = [
            (i, i.path[len(root) + 1 :])
            for i in fs.get_file_info(selector)
            if i.type == pafs.FileType.File and i.path.endswith(".parquet")
        ]
    return parent, [
        _Listed(below, i.path, location.identity(i.path), i.size, i.mtime_ns) for i, below in found
    ]


def _list_local(root: str, where: str) -> tuple[str, list[_Listed]]:
    """Walk a local INPUT, following folder symlinks as pyarrow's listing did, but entering each
    real folder once: a symlink loop ends instead of running until the OS refuses the path, and a
    folder linked beside its target is listed once. Hidden names (`is_hidden`) are not entered.

    A file's identity is its real path, derived from its folder's (one ``realpath`` per symlink
    met, not per file: 4,000 small files would pay ~40 ms)."""
    try:
        top = os.stat(root)
    except FileNotFoundError:
        raise NoInputFilesError(f"{where}: no such file or directory") from None
    if not stat.S_ISDIR(top.st_mode):
        parent, _, name = root.rpartition("/")
        real = f"file://{os.path.realpath(root)}"
        return parent or "/", [_Listed(name, root, real, top.st_size, top.st_mtime_ns)]
    listed: list[_Listed] = []
    entered: set[tuple[int, int]] = set()
    # Folders in order of their path below INPUT, so that which relpath of a folder reached
    # twice is walked does not depend on the order the OS lists entries in.
    folders = [("", root, os.path.realpath(root), (top.st_dev, top.st_ino))]
    while folders:
        below, path, real, folder = heapq.heappop(folders)
        if folder in entered:
            continue
        entered.add(folder)
        with os.scandir(path) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(("_", ".")):
                    continue
                relative = f"{below}/{name}" if below else name
                linked = entry.is_symlink()
                try:
                    if entry.is_dir():
                        info = entry.stat()
                        if (info.st_dev, info.st_ino) in entered:
                            continue  # a symlink loop: a folder above this one
                        target = os.path.realpath(entry.path) if linked else f"{real}/{name}"
                        key = (info.st_dev, info.st_ino)
                        heapq.heappush(folders, (relative, entry.path, target, key))
                    elif name.endswith(".parquet") and entry.is_file():
                        info = entry.stat()
                        target = os.path.realpath(entry.path) if linked else f"{real}/{name}"
                        listed.append(
                            _Listed(
                                relative,
                                entry.path,
                                f"file://{target}",
                                info.st_size,
                                info.st_mtime_ns,
                            )
                        )
                except FileNotFoundError:  # a dangling symlink, or removed while listed
                    continue
    return root, listed


def with_output_names(
    items: Sequence[InputFile | FailedInput], recorded: Mapping[str, str]
) -> list[InputFile | FailedInput]:
    """Each readable file under the name its scores go by in OUTPUT (its `InputFile.relpath`).

    ``recorded`` maps an identity to the relpath its scores were committed under: such a file
    keeps that name, whatever root reached it this time, so its committed shards are recognised
    and its names stay stable. Any other file takes its relpath below INPUT unless another
    file's scores hold that name (a nightly folder's ``part-0.parquet`` after the night
    before's): it then goes by ``<stem>~<8 hex of its identity>.parquet`` beside it, a name
    that no other file can take and every rerun gives it again.
    """
    held = {name: identity for identity, name in recorded.items()}
    for item in items:
        if isinstance(item, InputFile) and item.identity in recorded:
            held.setdefault(recorded[item.identity], item.identity)
    named: list[InputFile | FailedInput] = []
    for item in items:
        if not isinstance(item, InputFile):
            named.append(item)
            continue
        name = recorded.get(item.identity, item.relpath)
        if held.setdefault(name, item.identity) != item.identity:
            folder, _, file_name = name.rpartition("/")
            stem = file_name[: -len(".parquet")] if file_name.endswith(".parquet") else file_name
            suffix = hashlib.sha256(item.identity.encode()).hexdigest()[:8]
            name = "/".join(p for p in (folder, f"{stem}~{suffix}.parquet") if p)
            held[name] = item.identity
        named.append(
            item
            if name == item.relpath
            else replace(item, relpath=name, partition=partition_of(name))
        )
    return named


def is_hidden(parts: Sequence[str]) -> bool:
    """Whether a path below a dataset's root (its ``parts``) is outside the data, as every
    engine reads it: a name starting with ``_`` or ``.`` (``_scorer``, ``_delta_log``)."""
    return any(part.startswith(("_", ".")) for part in parts)


def _read_footer(
    fs: pafs.FileSystem, c: _Candidate, schemas: _SchemaCache
) -> InputFile | FailedInput:
    try:
        with fs.open_input_file(c.path) as source:
            footer = read_footer(source, c.size)
        check_row_groups(footer.metadata)
        schema = schemas.arrow_schema(footer.metadata)
    except InputLimitError as exc:
        return FailedInput(c.path, c.relpath, c.partition, c.size, str(exc))
    except (OSError, ValueError, pa.ArrowException) as exc:
        reason = f"unreadable Parquet footer: {exc}"
        return FailedInput(c.path, c.relpath, c.partition, c.size, reason)
    meta = footer.metadata
    return InputFile(
        path=c.path,
        identity=c.identity,
        relpath=c.relpath,
        partition=c.partition,
        size=c.size,
        mtime_ns=c.mtime_ns,
        fingerprint=file_fingerprint(c.size, c.mtime_ns, footer),
        row_group_rows=row_group_rows(meta),
        row_group_bytes=row_group_bytes(meta),
        schema=schema,
        footer=footer,
    )


class _SchemaCache:
    """Arrow schemas by Parquet schema: the files of one dataset share a handful, and deriving
    one costs ~85 µs a file (measured) that a comparison of the Parquet schemas saves."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, bytes | None], list[tuple[pq.ParquetSchema, pa.Schema]]] = {}
        # Schemas of files a forked process read, by the id of the object it sent (`adopted`):
        # its files of one schema come as one object, so one comparison serves them all.
        self._adopted: dict[int, tuple[pa.Schema, pa.Schema]] = {}

    def arrow_schema(self, metadata: pq.FileMetaData) -> pa.Schema:
        kv = metadata.metadata or {}
        # The stored Arrow schema (types Parquet cannot say, such as timezones) is part of the key.
        key = (metadata.num_columns, kv.get(b"ARROW:schema"))
        known = self._known.setdefault(key, [])
        for parquet_schema, arrow_schema in known:
            if parquet_schema.equals(metadata.schema):
                return arrow_schema
        arrow_schema = metadata.schema.to_arrow_schema()
        known.append((metadata.schema, arrow_schema))
        return arrow_schema

    def adopted(self, item: InputFile | FailedInput) -> InputFile | FailedInput:
        """A file a forked process read, with this cache's object for its schema: the files of
        one schema then share one object whichever process read them (what
        `preflight.first_file_per_schema` and `Piece.schema_token` rely on)."""
        if not isinstance(item, InputFile):
            return item
        _, schema = self._adopted.get(id(item.schema), (None, None))
        if schema is None:
            known = [arrow for pairs in self._known.values() for _, arrow in pairs]
            known += [adopted for _, adopted in self._adopted.values()]
            schema = next(
                (s for s in known if s.equals(item.schema, check_metadata=True)), item.schema
            )
            # The object sent is kept with it: its id is not reused while it is a key here.
            self._adopted[id(item.schema)] = (item.schema, schema)
        return item if schema is item.schema else replace(item, schema=schema)
