"""Planning: input files to shards, from the Parquet footers alone (no row data is read).

``scan_inputs`` finds the input files (a single file, or every ``*.parquet`` below a directory,
skipping names that start with ``_`` or ``.`` such as ``_scorer``), parses hive ``key=value``
folders into a partition, applies ``--partition`` / ``--since`` / ``--until``, and reads each
footer from one read of its tail (in a thread pool on object storage, where latency dominates).
A file whose footer cannot be read does not stop the plan: it becomes a ``FailedInput``, which
the driver reports as a failed shard naming the file and the reason.

``plan_shards`` cuts the row groups of each output folder (a file's hive folder) into shards of
about ``shard_rows`` rows. A shard is a tuple of *pieces*, each a run of consecutive row groups
of one file: a big file splits on row-group boundaries into shards of one piece, and the small
files that streaming ingestion writes by the thousand are packed, in relpath order, several to
a shard (per-shard costs, ~2 ms a stage, would otherwise outweigh their rows). Files of
different folders never share a shard, so every score file stays in its input's partition.
Row groups a previous run committed for the same file fingerprint keep their boundaries, per
piece (they are the ``skipped`` shards); only the row groups they leave uncovered are packed
with the current ``shard_rows``. So changing ``--shard-rows`` on a rerun never plans a row twice.

A file is identified by where it is (``InputFile.identity``: ``file://`` and its resolved
absolute path, or the scheme, endpoint, bucket and key of an object), never by its path below
INPUT: two nightly folders holding a ``part-0.parquet`` each are two files, and one file reached
through another root or a symlink is one file (listed once: ``scan_inputs`` keeps its first
relpath). Its *relpath*, its path below INPUT led by INPUT's own trailing ``key=value`` folders
(so that scoring ``sessions/dt=2026-11-27`` and scoring ``sessions`` partition that day's files
alike), is only the name its scores go by: ``with_output_names`` keeps the name a file was
committed under before, and gives a file whose natural name another file's scores hold a name of
its own (README: "What identifies a file").
"""

from __future__ import annotations

import hashlib
import heapq
import multiprocessing
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.errors import (
    ConfigError,
    InputChangedError,
    InputLimitError,
    NoInputFilesError,
    PreflightError,
)
from scorer.pipeline.layout import shard_output_relpath
from scorer.pipeline.limits import check_footer_bytes, check_row_groups
from scorer.storage import Location, storage_errors

if TYPE_CHECKING:
    from scorer.pipeline.days import DaySelection

Partition = tuple[tuple[str, str], ...]
"""Hive partition of a file: ``(key, value)`` pairs in folder order (``dict(p)`` for lookups)."""

DATE_KEY = "dt"


@dataclass(frozen=True)
class PartitionFilter:
    """Which partitions to score: ``--partition KEY=VALUE`` (repeatable) and ``--since/--until``.

    Values given for one key are alternatives, different keys must all match. ``since`` and
    ``until`` bound the ``dt`` partition, both inclusive; with either set, a file without ``dt``
    is left out.
    """

    partitions: Partition = ()
    since: date | None = None
    until: date | None = None

    @classmethod
    def parse(
        cls,
        partitions: Iterable[str] = (),
        since: str | date | None = None,
        until: str | date | None = None,
    ) -> PartitionFilter:
        """Build from option values; a malformed one is a ``ConfigError`` naming the option."""
        pairs = []
        for text in partitions:
            key, sep, value = text.partition("=")
            if not sep or not key or not value:
                raise ConfigError(f"--partition {text!r}: expected KEY=VALUE, e.g. dt=2026-11-27")
            pairs.append((key, value))
        bounds = {"since": _as_date(since, "since"), "until": _as_date(until, "until")}
        if bounds["since"] and bounds["until"] and bounds["since"] > bounds["until"]:
            raise ConfigError(f"--since {bounds['since']} is after --until {bounds['until']}")
        return cls(tuple(pairs), bounds["since"], bounds["until"])

    def __bool__(self) -> bool:
        return bool(self.partitions) or self.since is not None or self.until is not None

    def matches(self, partition: Partition, where: str) -> bool:
        """Whether a file in ``partition`` is selected; ``where`` names it in errors."""
        values = dict(partition)
        wanted: dict[str, set[str]] = {}
        for key, value in self.partitions:
            wanted.setdefault(key, set()).add(value)
        if any(values.get(key) not in options for key, options in wanted.items()):
            return False
        if self.since is None and self.until is None:
            return True
        if DATE_KEY not in values:
            return False
        try:
            day = date.fromisoformat(values[DATE_KEY])
        except ValueError:
            raise PreflightError(
                f"{where}: partition {DATE_KEY}={values[DATE_KEY]!r} is not an ISO date, "
                "so --since/--until cannot select it"
            ) from None
        return (self.since or day) <= day <= (self.until or day)

    def without_days(self) -> PartitionFilter:
        """This filter but for its days: what selects a file whose days are a column, whose
        row groups `days.resolve_days` then selects."""
        return PartitionFilter(tuple((k, v) for k, v in self.partitions if k != DATE_KEY))

    def describe(self) -> str:
        parts = [f"--partition {k}={v}" for k, v in self.partitions]
        bounds = (("since", self.since), ("until", self.until))
        parts += [f"--{name} {value}" for name, value in bounds if value]
        return " ".join(parts)


@dataclass(frozen=True)
class InputFile:
    """One readable input file, as its footer describes it."""

    path: str
    """Path within the input filesystem (what an actor opens)."""
    identity: str
    """Where the file is, however it was reached (`storage.Location.identity`): what commit
    records name it by."""
    relpath: str
    """The name its scores go by below OUTPUT (see the module docstring)."""
    partition: Partition
    size: int
    mtime_ns: int | None
    fingerprint: str
    """Changes with the file: size, mtime and a digest of the footer's schema and row groups."""
    row_group_rows: tuple[int, ...]
    row_group_bytes: tuple[int, ...]
    """Compressed bytes per row group."""
    schema: pa.Schema = field(compare=False, repr=False)
    footer: Footer | None = field(default=None, compare=False, repr=False)
    """The parsed footer, kept for this process (the in-process worker opens files with it);
    None for a file a forked process read (`scan_inputs`)."""

    @property
    def folder(self) -> str:
        return self.relpath.rpartition("/")[0]

    @property
    def stem(self) -> str:
        name = self.relpath.rpartition("/")[2]
        return name[: -len(".parquet")] if name.endswith(".parquet") else name

    @property
    def rows(self) -> int:
        return sum(self.row_group_rows)

    @property
    def bytes(self) -> int:
        return sum(self.row_group_bytes)


@dataclass(frozen=True)
class FailedInput:
    """An input file whose footer could not be read: planned as one failed item."""

    path: str
    relpath: str
    partition: Partition
    size: int
    reason: str

    @property
    def shard_id(self) -> str:
        # No row-group range is known; the file itself is the unit that failed.
        return self.relpath


@dataclass(frozen=True)
class Piece:
    """Consecutive row groups ``[rg_start, rg_stop)`` of one input file: a part of a shard."""

    input_path: str
    input_relpath: str
    rg_start: int
    rg_stop: int
    rows: int
    input_bytes: int
    fingerprint: str
    input_id: str
    """Its file's `InputFile.identity`."""
    whole_file: bool = field(default=False, compare=False)
    """Every row group of its file: a run of such pieces may be read by DuckDB (`bulk`)."""
    schema_token: int | None = field(default=None, compare=False)
    """Equal for pieces of files of one Arrow schema in this run's plan (the scan gives them one
    schema object); None where not known (pieces rebuilt from commit records)."""
    days: DaySelection | None = None
    """Only the rows of these days (a row group straddling a day filter, `days`); None: all."""
    day_folder: bool = False
    """Of one day (or of the rows without one), its scores in that day's ``dt=`` folder: a
    table format's partition (`days.DaySource.day_folders`)."""

    @property
    def piece_id(self) -> str:
        """``<relpath>:<rg_start>-<rg_stop>``, the id a shard of this piece alone has; with
        ``@dt=<days>`` after it for a piece of some days of its row group (`days`)."""
        piece = shard_id(self.input_relpath, self.rg_start, self.rg_stop)
        return piece if self.days is None else f"{piece}@{DATE_KEY}={self.days.token}"

    @property
    def row_groups(self) -> range:
        return range(self.rg_start, self.rg_stop)

    def changed(self, found: str) -> InputChangedError:
        """The error for its file found as ``found`` (a fingerprint, or what was found instead)
        where the planned version was expected."""
        return InputChangedError(
            f"input changed during the run: {self.input_path} "
            f"(planned {self.fingerprint}, found {found})",
            input_path=self.input_path,
        )

    def to_dict(self) -> dict:
        return {
            "input_path": self.input_path,
            "input_relpath": self.input_relpath,
            "rg_start": self.rg_start,
            "rg_stop": self.rg_stop,
            "rows": self.rows,
            "input_bytes": self.input_bytes,
            "fingerprint": self.fingerprint,
            "input_id": self.input_id,
            **({"days": self.days.token} if self.days is not None else {}),
        }


@dataclass(frozen=True)
class Shard:
    """The unit of work: pieces of one or more files of one output folder, one output file.

    ``input_path``, ``input_relpath``, ``rg_start``, ``rg_stop``, ``fingerprint`` and
    ``row_groups`` are the first piece's: all of the shard when it has one piece.
    """

    shard_id: str
    """Stable across runs and derived from the pieces alone (``packed_shard_id``)."""
    partition: Partition
    pieces: tuple[Piece, ...]
    output_relpath: str
    """Below OUTPUT: ``layout.shard_output_relpath`` of the pieces (and ``run_id``)."""
    run_id: str = ""
    """The run whose name the shard's file carries (a table format's run: its data files are
    never rewritten); "" for plain Parquet. Shards cut from this one keep it."""

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.pieces)

    @property
    def input_bytes(self) -> int:
        return sum(p.input_bytes for p in self.pieces)

    @property
    def files(self) -> int:
        """How many input files the shard reads."""
        return len(self.pieces)

    @property
    def input_path(self) -> str:
        return self.pieces[0].input_path

    @property
    def input_relpath(self) -> str:
        return self.pieces[0].input_relpath

    @property
    def rg_start(self) -> int:
        return self.pieces[0].rg_start

    @property
    def rg_stop(self) -> int:
        return self.pieces[0].rg_stop

    @property
    def fingerprint(self) -> str:
        return self.pieces[0].fingerprint

    @property
    def row_groups(self) -> range:
        return self.pieces[0].row_groups

    def to_dict(self) -> dict:
        return {
            "shard_id": self.shard_id,
            "input_path": self.input_path,
            "input_relpath": self.input_relpath,
            "partition": dict(self.partition),
            "rg_start": self.rg_start,
            "rg_stop": self.rg_stop,
            "rows": self.rows,
            "input_bytes": self.input_bytes,
            "fingerprint": self.fingerprint,
            "output_relpath": self.output_relpath,
            "pieces": [p.to_dict() for p in self.pieces],
        }


@dataclass(frozen=True)
class Plan:
    """What a run will do: shards to score, shards a resume skips, files that cannot be read."""

    shard_rows: int
    files: tuple[InputFile, ...]
    failed: tuple[FailedInput, ...]
    shards: tuple[Shard, ...]
    skipped: tuple[Shard, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.input_bytes for s in self.shards)

    @property
    def skipped_rows(self) -> int:
        return sum(s.rows for s in self.skipped)

    @property
    def skipped_bytes(self) -> int:
        return sum(s.input_bytes for s in self.skipped)

    def to_dict(self) -> dict:
        """Machine-readable plan (``--dry-run --json``)."""
        return {
            "shard_rows": self.shard_rows,
            "totals": {
                "files": len(self.files),
                "failed_files": len(self.failed),
                "shards": len(self.shards),
                "rows": self.rows,
                "bytes": self.bytes,
                "skipped_shards": len(self.skipped),
                "skipped_rows": self.skipped_rows,
                "skipped_bytes": self.skipped_bytes,
            },
            "files": [
                {
                    "path": f.path,
                    "identity": f.identity,
                    "relpath": f.relpath,
                    "partition": dict(f.partition),
                    "size": f.size,
                    "rows": f.rows,
                    "bytes": f.bytes,
                    "row_groups": len(f.row_group_rows),
                    "fingerprint": f.fingerprint,
                }
                for f in self.files
            ],
            "failed": [
                {"path": f.path, "relpath": f.relpath, "reason": f.reason} for f in self.failed
            ],
            "shards": [s.to_dict() for s in self.shards],
            "skipped": [s.to_dict() for s in self.skipped],
        }

    def describe(self) -> str:
        """Human-readable plan (``--dry-run``): totals, then one line per file."""
        todo: dict[str, list[Shard]] = {}
        done: dict[str, list[Shard]] = {}
        for shards, by_file in ((self.shards, todo), (self.skipped, done)):
            for shard in shards:
                for relpath in dict.fromkeys(p.input_relpath for p in shard.pieces):
                    by_file.setdefault(relpath, []).append(shard)
        packed = sum(1 for s in self.shards if s.files > 1)
        lines = [
            f"{len(self.files)} input files, {sum(f.rows for f in self.files):,} rows, "
            f"{_human_bytes(sum(f.bytes for f in self.files))} compressed; "
            f"shards of at most {self.shard_rows:,} rows (or one larger row group)",
            f"to score: {len(self.shards)} shards, {self.rows:,} rows, {_human_bytes(self.bytes)}"
            + (f" ({packed} of them packing several files)" if packed else ""),
            f"to skip (already committed): {len(self.skipped)} shards, {self.skipped_rows:,} rows",
        ]
        if self.failed:
            lines.append(f"unreadable: {len(self.failed)} files (each a failed shard)")
        for f in self.files:
            lines.append(
                f"  {f.relpath}: {f.rows:,} rows in {len(f.row_group_rows)} row groups, "
                f"{len(todo.get(f.relpath, ()))} shards to score, "
                f"{len(done.get(f.relpath, ()))} to skip"
            )
        lines += [f"  {f.relpath}: FAILED {f.reason}" for f in self.failed]
        return "\n".join(lines)


def scan_inputs(
    location: Location,
    selection: PartitionFilter = PartitionFilter(),
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


def plan_shards(
    inputs: Sequence[InputFile | FailedInput],
    shard_rows: int,
    committed_ranges: Mapping[str, Sequence[CommittedRange]] | None = None,
    groups: Mapping[str, Mapping[int, DaySelection | None]] | None = None,
    *,
    day_folders: bool = False,
    run_id: str = "",
) -> Plan:
    """Pack the files' row groups into shards of at most ``shard_rows`` rows, folder by folder.

    ``committed_ranges`` maps a file's relpath to the ``(rg_start, rg_stop)`` ranges already
    committed *for its current fingerprint* (``Manifest.committed_ranges`` filters them), each
    optionally followed by the id of the shard that committed it: those keep their boundaries
    and are returned as ``skipped`` (the ranges of one shard id as one shard); only the rest is
    planned anew. Within a folder, files in relpath order, row groups are added to a shard while
    it stays within ``shard_rows``; a row group larger than that is a shard of its own.

    ``groups`` maps a file's relpath to the only row groups to read of it (`days.DayPlan`), each
    whole (None) or of some days alone, such a piece a shard of its own. ``day_folders``: each
    selected day of a row group is a piece of its own, in that day's folder, and consecutive row
    groups of one day of a file one piece (within ``shard_rows``). ``run_id``: the shards to
    score write files named for that run (a table format's, ``layout.shard_output_relpath``).
    """
    if shard_rows < 1:
        raise ConfigError(f"--shard-rows must be at least 1, got {shard_rows}")
    committed_ranges = committed_ranges or {}
    files = tuple(f for f in inputs if isinstance(f, InputFile))
    folders: dict[str, list[InputFile]] = {}
    for f in files:
        folders.setdefault(f.folder, []).append(f)
    shards: list[Shard] = []
    skipped: dict[str, list[Piece]] = {}
    for folder_files in folders.values():
        packer = _Packer(shard_rows, day_folders)
        for f in sorted(folder_files, key=lambda f: f.relpath):
            done = _checked_ranges(f, committed_ranges.get(f.relpath, ()))
            for start, stop, committed_id in done:
                skipped.setdefault(committed_id, []).append(_piece(f, start, stop))
            chosen = (groups or {}).get(f.relpath)
            for gap_start, gap_stop in _gaps(done, len(f.row_group_rows)):
                for group in range(gap_start, gap_stop):
                    if chosen is None:
                        packer.add(f, group)
                    elif group in chosen:
                        packer.add(f, group, chosen[group])
        shards += [_make_shard(pieces, partition, run_id) for pieces, partition in packer.finish()]
    shards.sort(key=lambda s: (s.input_relpath, s.rg_start))
    partitions = {f.relpath: f.partition for f in files}
    return Plan(
        shard_rows=shard_rows,
        files=files,
        failed=tuple(f for f in inputs if isinstance(f, FailedInput)),
        shards=tuple(shards),
        skipped=tuple(
            _make_shard(tuple(pieces), partitions[pieces[0].input_relpath])
            for pieces in skipped.values()
        ),
    )


def split_off(shard: Shard, input_path: str) -> tuple[Shard, Shard | None]:
    """A packed shard's pieces of one file (its poison file) as a shard of their own, and the
    rest of the pieces as another (None when nothing is left); names follow the pieces."""
    alone = tuple(p for p in shard.pieces if p.input_path == input_path)
    rest = tuple(p for p in shard.pieces if p.input_path != input_path)
    if not alone:
        raise ValueError(f"{shard.shard_id}: no piece of {input_path}")
    return (
        _make_shard(alone, shard.partition, shard.run_id),
        _make_shard(rest, shard.partition, shard.run_id) if rest else None,
    )


def with_quick_head(plan: Plan, quick: Callable[[int, int], bool]) -> Plan:
    """The plan with its first shard cut in two where that shard is not quick: a head of its
    leading row groups for which ``quick(rows, files)`` still holds (one row group at least),
    then the rest. Every other shard keeps its boundaries and name, and the cut depends on the
    plan alone, so a rerun of the same plan cuts alike. It gets a run that scores in-process a
    first commit within a second or so whatever the files' shape: a first shard of 1,000 small
    files took ~2-3 s on 2 cores."""
    if not plan.shards:
        return plan
    first = plan.shards[0]
    files = {f.relpath: f for f in plan.files}
    rows = 0
    for index, piece in enumerate(first.pieces):
        f = files[piece.input_relpath]
        for group in piece.row_groups:
            taken = index > 0 or group > piece.rg_start
            if taken and not quick(rows + f.row_group_rows[group], index + 1):
                head = first.pieces[:index]
                rest = first.pieces[index + 1 :]
                if group > piece.rg_start:  # the piece itself is cut on a row-group boundary
                    head += (_piece(f, piece.rg_start, group, piece.days, piece.day_folder),)
                rest = (_piece(f, group, piece.rg_stop, piece.days, piece.day_folder), *rest)
                cut = (
                    _make_shard(head, first.partition, first.run_id),
                    _make_shard(rest, first.partition, first.run_id),
                )
                return replace(plan, shards=(*cut, *plan.shards[1:]))
            rows += f.row_group_rows[group]
    return plan


def shard_id(relpath: str, rg_start: int, rg_stop: int) -> str:
    return f"{relpath}:{rg_start}-{rg_stop}"


def packed_shard_id(pieces: Sequence[Piece]) -> str:
    """A one-piece shard is its piece (``<relpath>:<a>-<b>``, as before shards packed files);
    a packed one is ``<first piece id>+<n-1>:<digest of every piece id>``."""
    if len(pieces) == 1:
        return pieces[0].piece_id
    return f"{pieces[0].piece_id}+{len(pieces) - 1}:{pieces_digest(pieces)}"


def pieces_digest(pieces: Sequence[Piece]) -> str:
    """12 hex digits of the sha1 of the piece ids, one a line: names a packed shard's file."""
    text = "\n".join(p.piece_id for p in pieces)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:12]


CommittedRange = tuple[int, int] | tuple[int, int, str]
"""``(rg_start, rg_stop)`` of a file committed before, optionally with the committing shard's id."""


class _Packer:
    """Fills shards of one folder row group by row group, in the order they are added."""

    def __init__(self, shard_rows: int, day_folders: bool = False) -> None:
        self.shard_rows = shard_rows
        self.day_folders = day_folders
        self.shards: list[tuple[list[Piece], Partition]] = []
        self.rows = 0
        self.groups = 0  # in the shard being filled
        self.by_day: dict[DaySelection, int] = {}  # the last shard of each day, by its index

    def add(self, f: InputFile, group: int, days: DaySelection | None = None) -> None:
        if days is not None and self.day_folders:
            for day in days.each_day():
                self._add_day(f, group, day)
            self.rows, self.groups = self.shard_rows + 1, 1
            return
        if days is not None:  # some days of a row group: a shard of its own (see `days`)
            self.shards.append(([_piece(f, group, group + 1, days)], f.partition))
            self.rows, self.groups = self.shard_rows + 1, 1
            return
        rows = f.row_group_rows[group]
        current = self.shards[-1][0] if self.shards else []
        last = current[-1] if current else None
        same_file = last is not None and last.input_relpath == f.relpath and last.days is None
        # A shard holds one piece per file: a committed range inside a file ends the shard.
        if (
            not self.shards
            or (self.groups and self.rows + rows > self.shard_rows)
            or (same_file and last is not None and last.rg_stop != group)
        ):
            current, last, same_file = [], None, False
            self.rows, self.groups = 0, 0
            self.shards.append((current, f.partition))
        if same_file and last is not None:
            current[-1] = _piece(f, last.rg_start, group + 1)
        else:
            current.append(_piece(f, group, group + 1))
        self.rows += rows
        self.groups += 1

    def _add_day(self, f: InputFile, group: int, day: DaySelection) -> None:
        """One day of a row group: onto the piece of that day ending just before it, where the
        shard stays within ``shard_rows``, else a shard of its own."""
        index = self.by_day.get(day)
        if index is not None:
            (last,) = self.shards[index][0]
            if (
                last.input_relpath == f.relpath
                and last.rg_stop == group
                and last.rows + f.row_group_rows[group] <= self.shard_rows
            ):
                self.shards[index] = ([_piece(f, last.rg_start, group + 1, day, True)], f.partition)
                return
        self.by_day[day] = len(self.shards)
        self.shards.append(([_piece(f, group, group + 1, day, True)], f.partition))

    def finish(self) -> list[tuple[tuple[Piece, ...], Partition]]:
        return [(tuple(pieces), partition) for pieces, partition in self.shards]


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
    with storage_errors(location.uri, "cannot list"):
        if location.is_local:
            parent, listed = _list_local(root, location.uri)
        else:
            parent, listed = _list_remote(location, root)
    prefix = "/".join(_hive_tail(parent))
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


def partition_of(relpath: str) -> Partition:
    """The hive partition a relpath's ``key=value`` folders name."""
    return tuple(pair for folder in relpath.split("/")[:-1] if (pair := _hive_pair(folder)))


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


def _hive_pair(folder: str) -> tuple[str, str] | None:
    key, sep, value = folder.partition("=")
    return (key, unquote(value)) if sep and key and value else None


def _hive_tail(path: str) -> list[str]:
    """INPUT's own trailing ``key=value`` folders, kept so a partition scored alone keeps them."""
    tail: list[str] = []
    for part in reversed([p for p in path.split("/") if p]):
        if not _hive_pair(part):
            break
        tail.insert(0, part)
    return tail


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
        row_group_rows=_row_group_rows(meta),
        row_group_bytes=_row_group_bytes(meta),
        schema=schema,
        footer=footer,
    )


FOOTER_TAIL_BYTES = 64 * 1024
"""Read from a file's end in one request: the whole footer of nearly every file (pyarrow's own
reader reads as much), and on object storage one round trip instead of two."""

FOOTER_DIGEST_TAG = "footer:"
"""Marks a fingerprint digest of the serialized footer; older releases digested a summary of it
(`legacy_fingerprint`), and their commit records are matched by `adopt_legacy`."""


@dataclass(frozen=True)
class Footer:
    """A file's parsed footer and the digest of its serialized bytes."""

    metadata: pq.FileMetaData
    digest: str


def read_footer(
    source: pa.NativeFile, size: int, known: Mapping[str, pq.FileMetaData] | None = None
) -> Footer:
    """The footer of an open Parquet file of ``size`` bytes, from one read of its tail (two when
    the footer is longer than `FOOTER_TAIL_BYTES`); parsed unless ``known`` (footers by digest)
    holds the parse of the same bytes.

    The digest covers the footer's bytes: schema, row groups, sizes, statistics and key-value
    metadata, so a file rewritten with another footer gets another fingerprint. Hashing the
    bytes costs microseconds where walking the parsed footer in Python cost ~0.3 ms a file
    (measured, 19 columns), which planning 4,000 small files paid twice (plan and open).
    """
    serialized, end = _footer_bytes(source, size)
    digest = _digest(serialized)
    metadata = known.get(digest) if known is not None else None
    if metadata is None:
        metadata = _parsed(serialized + end)
    return Footer(metadata, digest)


def read_footer_digest(source: pa.NativeFile, size: int) -> str:
    """`Footer.digest` of an open Parquet file of ``size`` bytes, without parsing the footer
    (as `read_footer` reads it; raises ValueError where it would)."""
    return _digest(_footer_bytes(source, size)[0])


def _footer_bytes(source: pa.NativeFile, size: int) -> tuple[bytes, bytes]:
    """A file's serialized footer and the 8 bytes after it (its length and magic)."""
    tail_bytes = min(size, FOOTER_TAIL_BYTES)
    source.seek(size - tail_bytes)
    tail = source.read(tail_bytes)
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise ValueError("not a Parquet file (no PAR1 magic at its end)")
    footer_bytes = int.from_bytes(tail[-8:-4], "little")
    if footer_bytes + 12 > size:
        raise ValueError(f"footer length {footer_bytes} exceeds the file ({size} bytes)")
    check_footer_bytes(footer_bytes)  # before a footer of any size is read
    if footer_bytes + 8 <= tail_bytes:
        return tail[-8 - footer_bytes : -8], tail[-8:]
    source.seek(size - 8 - footer_bytes)
    return source.read(footer_bytes), tail[-8:]


def _digest(serialized: bytes) -> str:
    return hashlib.sha256(serialized).hexdigest()[:16]


def _parsed(footer: bytes) -> pq.FileMetaData:
    """A serialized footer (with its length and magic) parsed by `pq.ParquetReader`, not by
    `pq.read_metadata`, which builds a whole `ParquetFile` around it: 128 µs against 207 µs a
    19-column footer (measured), for 4,000 small files 0.3 s of the scan's CPU. Bad bytes raise
    the same errors."""
    reader = pq.ParquetReader()
    reader.open(pa.BufferReader(footer))
    return reader.metadata


def file_fingerprint(size: int, mtime_ns: int | None, footer: Footer) -> str:
    """``{size}-{mtime_ns}-footer:{digest}``: what identifies a version of an input file,
    computed alike when a run plans it and when an actor opens it (``actor.ShardScorer``), where
    a mismatch is ``InputChangedError``.

    On object storage ``size`` and ``mtime_ns`` are the object's ``Content-Length`` and
    ``Last-Modified`` (seconds, alike in a listing and a HEAD, so an unchanged object keeps its
    fingerprint). An ETag (or a GCS generation) would name the version exactly, even one
    rewritten within the same second with the same footer, and would let reads be pinned to it
    (``If-Match``); pyarrow's filesystems expose neither, so it is not used: the footer digest
    is what tells such rewrites apart.
    """
    return digest_fingerprint(size, mtime_ns, footer.digest)


def digest_fingerprint(size: int, mtime_ns: int | None, digest: str) -> str:
    """`file_fingerprint` from a footer's digest alone (`read_footer_digest`)."""
    return f"{size}-{mtime_ns}-{FOOTER_DIGEST_TAG}{digest}"


def legacy_fingerprint(size: int, mtime_ns: int | None, metadata: pq.FileMetaData) -> str:
    """The fingerprint releases up to 0.1.0 recorded: a digest of the footer's schema layout,
    row counts and sizes. Kept so that their OUTPUT folders resume (`adopt_legacy`)."""
    columns = [metadata.schema.column(j) for j in range(metadata.num_columns)]
    layout = [
        (c.path, c.physical_type, str(c.logical_type), c.max_definition_level) for c in columns
    ]
    footer = (layout, _row_group_rows(metadata), _row_group_bytes(metadata))
    digest = hashlib.sha256(repr(footer).encode()).hexdigest()[:16]
    return f"{size}-{mtime_ns}-{digest}"


def footers_by_digest(files: Iterable[InputFile]) -> dict[str, pq.FileMetaData]:
    """The parsed footers a plan holds, for `read_footer`'s ``known`` in the same process."""
    return {f.footer.digest: f.footer.metadata for f in files if f.footer is not None}


def adopt_legacy(f: InputFile, recorded: str) -> bool:
    """Whether ``recorded``, a fingerprint an older release wrote, names ``f``'s current version."""
    if FOOTER_DIGEST_TAG in recorded or not recorded.startswith(f"{f.size}-{f.mtime_ns}-"):
        return False
    if f.footer is not None:
        metadata = f.footer.metadata
    else:  # read by a forked process (`_scan_forked`): parsed again, for old records alone
        try:
            metadata = pq.read_metadata(f.path)
        except (OSError, pa.ArrowException):
            return False
    return legacy_fingerprint(f.size, f.mtime_ns, metadata) == recorded


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


def _row_group_rows(metadata: pq.FileMetaData) -> tuple[int, ...]:
    return tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))


def _row_group_bytes(metadata: pq.FileMetaData) -> tuple[int, ...]:
    """Compressed bytes per row group."""
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    return tuple(
        sum(g.column(j).total_compressed_size for j in range(g.num_columns)) for g in groups
    )


def _checked_ranges(f: InputFile, ranges: Sequence[CommittedRange]) -> list[tuple[int, int, str]]:
    """Committed ranges sorted, with their shard ids; overlapping or out-of-file ranges mean a
    corrupt manifest."""
    ordered = sorted(
        (int(r[0]), int(r[1]), str(r[2]) if len(r) > 2 else shard_id(f.relpath, r[0], r[1]))
        for r in ranges
    )
    end = 0
    for start, stop, _ in ordered:
        if start < end or not 0 <= start < stop <= len(f.row_group_rows):
            raise ValueError(
                f"{f.relpath}: committed row-group ranges {[r[:2] for r in ordered]} overlap or "
                f"exceed its {len(f.row_group_rows)} row groups"
            )
        end = stop
    return ordered


def _gaps(done: Sequence[tuple[int, int, str]], n_groups: int) -> list[tuple[int, int]]:
    gaps, cursor = [], 0
    for start, stop, _ in [*done, (n_groups, n_groups, "")]:
        if start > cursor:
            gaps.append((cursor, start))
        cursor = stop
    return gaps


def _piece(
    f: InputFile,
    start: int,
    stop: int,
    days: DaySelection | None = None,
    day_folder: bool = False,
) -> Piece:
    return Piece(
        input_path=f.path,
        input_relpath=f.relpath,
        rg_start=start,
        rg_stop=stop,
        rows=sum(f.row_group_rows[start:stop]),
        input_bytes=sum(f.row_group_bytes[start:stop]),
        fingerprint=f.fingerprint,
        input_id=f.identity,
        whole_file=start == 0 and stop == len(f.row_group_rows),
        schema_token=id(f.schema),
        days=days,
        day_folder=day_folder,
    )


def _make_shard(pieces: tuple[Piece, ...], partition: Partition, run_id: str = "") -> Shard:
    first = pieces[0]
    more = len(pieces) - 1
    return Shard(
        shard_id=packed_shard_id(pieces),
        partition=partition,
        pieces=pieces,
        output_relpath=shard_output_relpath(
            first.input_relpath,
            first.rg_start,
            first.rg_stop,
            more=more,
            digest=pieces_digest(pieces) if more else "",
            days=first.days.token if first.days is not None and not first.day_folder else "",
            day_folder=first.days.folder if first.days is not None and first.day_folder else "",
            run_id=run_id,
        ),
        run_id=run_id,
    )


def _as_date(value: str | date | None, option: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--{option} {value!r}: expected an ISO date such as 2026-11-27"
        ) from None


def _human_bytes(n: int) -> str:
    size, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f"{n} B" if units[0] == "B" else f"{size:.1f} {units[0]}"
