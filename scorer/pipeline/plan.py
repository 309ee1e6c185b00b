"""The plan's data model: the input files a run found, the shards it cuts them into, the plan.

A run plans from the Parquet footers alone (no row data is read): `scan.scan_inputs` finds the
input files (`InputFile`, or `FailedInput` for a file whose footer cannot be read, which the
driver reports as a failed shard naming the file and the reason), and `packing.plan_shards` cuts
their row groups into shards (`Shard`) of pieces (`Piece`): a `Plan`. This module holds those values and the
ids that name them; it reads nothing, so everything that moves a shard (workers, the manifest,
the output layout) can name them without importing how they were found.

A file is identified by where it is (``InputFile.identity``: ``file://`` and its resolved
absolute path, or the scheme, endpoint, bucket and key of an object), never by its path below
INPUT: two nightly folders holding a ``part-0.parquet`` each are two files, and one file reached
through another root or a symlink is one file (listed once: ``scan_inputs`` keeps its first
relpath). Its *relpath*, its path below INPUT led by INPUT's own trailing ``key=value`` folders
(so that scoring ``sessions/dt=2026-11-27`` and scoring ``sessions`` partition that day's files
alike), is only the name its scores go by: ``scan.with_output_names`` keeps the name a file was
committed under before, and gives a file whose natural name another file's scores hold a name of
its own (docs/input.md, "What identifies a file").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from scorer.errors import InputChangedError
from scorer.partitions import Partition
from scorer.pipeline.day_selection import DAY_MARK, DaySelection


@dataclass(frozen=True)
class Footer:
    """A file's parsed footer and the digest of its serialized bytes."""

    metadata: pq.FileMetaData
    digest: str


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
        return piece if self.days is None else f"{piece}{DAY_MARK}{self.days.token}"

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


def _human_bytes(n: int) -> str:
    size, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f"{n} B" if units[0] == "B" else f"{size:.1f} {units[0]}"
