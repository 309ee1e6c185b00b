"""Planning: input files to shards, from the Parquet footers alone (no row data is read).

``scan_inputs`` finds the input files (a single file, or every ``*.parquet`` below a directory,
skipping names that start with ``_`` or ``.`` such as ``_scorer``), parses hive ``key=value``
folders into a partition, applies ``--partition`` / ``--since`` / ``--until``, and reads each
footer in a thread pool (on object storage each footer costs round trips, so latency dominates).
A file whose footer cannot be read does not stop the plan: it becomes a ``FailedInput``, which
the driver reports as a failed shard naming the file and the reason.

``plan_shards`` splits each file on row-group boundaries into shards of about ``shard_rows``
rows. Row groups a previous run committed for the same file fingerprint keep their boundaries
(they are the ``skipped`` shards); only the row groups they leave uncovered are split with the
current ``shard_rows``. So changing ``--shard-rows`` on a rerun never plans a row twice.

A file's identity in the plan and in the output is its *relpath*: its path below INPUT, led by
INPUT's own trailing ``key=value`` folders, so that scoring ``sessions/dt=2026-11-27`` and
scoring ``sessions`` name (and partition) that day's files alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.errors import ConfigError, NoInputFilesError, PreflightError
from scorer.pipeline.layout import shard_output_relpath
from scorer.storage import Location, storage_errors

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
    relpath: str
    partition: Partition
    size: int
    mtime_ns: int | None
    fingerprint: str
    """Changes with the file: size, mtime and a digest of the footer's schema and row groups."""
    row_group_rows: tuple[int, ...]
    row_group_bytes: tuple[int, ...]
    """Compressed bytes per row group."""
    schema: pa.Schema = field(compare=False, repr=False)

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
class Shard:
    """A run of whole row groups ``[rg_start, rg_stop)`` of one input file: the unit of work."""

    shard_id: str
    """Stable across runs: ``<relpath>:<rg_start>-<rg_stop>``."""
    input_path: str
    input_relpath: str
    partition: Partition
    rg_start: int
    rg_stop: int
    rows: int
    input_bytes: int
    fingerprint: str
    output_relpath: str
    """Below OUTPUT: ``layout.shard_output_relpath`` of the file and the row-group range."""

    @property
    def row_groups(self) -> range:
        return range(self.rg_start, self.rg_stop)

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
        for shard in self.shards:
            todo.setdefault(shard.input_relpath, []).append(shard)
        for shard in self.skipped:
            done.setdefault(shard.input_relpath, []).append(shard)
        lines = [
            f"{len(self.files)} input files, {sum(f.rows for f in self.files):,} rows, "
            f"{_human_bytes(sum(f.bytes for f in self.files))} compressed; "
            f"shards of at most {self.shard_rows:,} rows (or one larger row group)",
            f"to score: {len(self.shards)} shards, {self.rows:,} rows, {_human_bytes(self.bytes)}",
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
) -> list[InputFile | FailedInput]:
    """The selected input files under ``location`` with their footers, sorted by relpath.

    Raises ``NoInputFilesError`` when nothing is selected and ``StorageError`` when INPUT
    cannot be listed. Unreadable footers are ``FailedInput`` items, not errors.
    """
    candidates = [c for c in _discover(location) if selection.matches(c.partition, c.path)]
    if not candidates:
        why = f" selected by {selection.describe()}" if selection else ""
        raise NoInputFilesError(f"{location.uri}: no Parquet file{why}")
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(candidates)))) as pool:
        return list(pool.map(lambda c: _read_footer(location.filesystem, c), candidates))


def plan_shards(
    inputs: Sequence[InputFile | FailedInput],
    shard_rows: int,
    committed_ranges: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> Plan:
    """Split the files into shards of at most ``shard_rows`` rows on row-group boundaries.

    ``committed_ranges`` maps a file's relpath to the ``(rg_start, rg_stop)`` ranges already
    committed *for its current fingerprint* (``Manifest.committed_ranges`` filters them): those
    keep their boundaries and are returned as ``skipped``; only the rest is split anew. Row
    groups are added to a shard while it stays within ``shard_rows``; a row group larger than
    that is a shard of its own.
    """
    if shard_rows < 1:
        raise ConfigError(f"--shard-rows must be at least 1, got {shard_rows}")
    committed_ranges = committed_ranges or {}
    files = tuple(f for f in inputs if isinstance(f, InputFile))
    shards: list[Shard] = []
    skipped: list[Shard] = []
    for f in files:
        done = _checked_ranges(f, committed_ranges.get(f.relpath, ()))
        skipped += [_make_shard(f, start, stop) for start, stop in done]
        for gap_start, gap_stop in _gaps(done, len(f.row_group_rows)):
            bounds = _split(f.row_group_rows, gap_start, gap_stop, shard_rows)
            shards += [_make_shard(f, start, stop) for start, stop in bounds]
    shards.sort(key=lambda s: (s.input_relpath, s.rg_start))
    return Plan(
        shard_rows=shard_rows,
        files=files,
        failed=tuple(f for f in inputs if isinstance(f, FailedInput)),
        shards=tuple(shards),
        skipped=tuple(skipped),
    )


def shard_id(relpath: str, rg_start: int, rg_stop: int) -> str:
    return f"{relpath}:{rg_start}-{rg_stop}"


@dataclass(frozen=True)
class _Candidate:
    path: str
    relpath: str
    partition: Partition
    size: int
    mtime_ns: int | None


def _discover(location: Location) -> list[_Candidate]:
    fs = location.filesystem
    root = location.path.rstrip("/")
    with storage_errors(location.uri, "cannot list"):
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise NoInputFilesError(f"{location.uri}: no such file or directory")
        if info.type == pafs.FileType.File:
            parent, _, name = root.rpartition("/")
            listed = [(info, name)]
        else:
            parent = root
            selector = pafs.FileSelector(root, recursive=True)
            listed = [
                (i, i.path[len(root) + 1 :])
                for i in fs.get_file_info(selector)
                if i.type == pafs.FileType.File and i.path.endswith(".parquet")
            ]
    prefix = _hive_tail(parent)
    candidates = []
    for info, below in listed:
        parts = below.split("/")
        if any(p.startswith(("_", ".")) for p in parts):
            continue
        folders = prefix + parts[:-1]
        candidates.append(
            _Candidate(
                path=info.path,
                relpath="/".join(folders + parts[-1:]),
                partition=tuple(pair for p in folders if (pair := _hive_pair(p))),
                size=info.size,
                mtime_ns=info.mtime_ns,
            )
        )
    return sorted(candidates, key=lambda c: c.relpath)


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


def _read_footer(fs: pafs.FileSystem, c: _Candidate) -> InputFile | FailedInput:
    try:
        with fs.open_input_file(c.path) as source:
            meta = pq.read_metadata(source)
        schema = meta.schema.to_arrow_schema()
    except (OSError, ValueError, pa.ArrowException) as exc:
        reason = f"unreadable Parquet footer: {exc}"
        return FailedInput(c.path, c.relpath, c.partition, c.size, reason)
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    rows = tuple(g.num_rows for g in groups)
    sizes = tuple(
        sum(g.column(j).total_compressed_size for j in range(g.num_columns)) for g in groups
    )
    columns = [meta.schema.column(j) for j in range(meta.num_columns)]
    layout = [
        (c.path, c.physical_type, str(c.logical_type), c.max_definition_level) for c in columns
    ]
    digest = hashlib.sha256(repr((layout, rows, sizes)).encode()).hexdigest()[:16]
    return InputFile(
        path=c.path,
        relpath=c.relpath,
        partition=c.partition,
        size=c.size,
        mtime_ns=c.mtime_ns,
        fingerprint=f"{c.size}-{c.mtime_ns}-{digest}",
        row_group_rows=rows,
        row_group_bytes=sizes,
        schema=schema,
    )


def _checked_ranges(f: InputFile, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Committed ranges sorted; overlapping or out-of-file ranges mean a corrupt manifest."""
    ordered = sorted((int(a), int(b)) for a, b in ranges)
    end = 0
    for start, stop in ordered:
        if start < end or not 0 <= start < stop <= len(f.row_group_rows):
            raise ValueError(
                f"{f.relpath}: committed row-group ranges {ordered} overlap or exceed its "
                f"{len(f.row_group_rows)} row groups"
            )
        end = stop
    return ordered


def _gaps(done: Sequence[tuple[int, int]], n_groups: int) -> list[tuple[int, int]]:
    gaps, cursor = [], 0
    for start, stop in [*done, (n_groups, n_groups)]:
        if start > cursor:
            gaps.append((cursor, start))
        cursor = stop
    return gaps


def _split(rows: Sequence[int], start: int, stop: int, target: int) -> list[tuple[int, int]]:
    bounds, first, total = [], start, 0
    for i in range(start, stop):
        if i > first and total + rows[i] > target:
            bounds.append((first, i))
            first, total = i, 0
        total += rows[i]
    if first < stop:
        bounds.append((first, stop))
    return bounds


def _make_shard(f: InputFile, start: int, stop: int) -> Shard:
    return Shard(
        shard_id=shard_id(f.relpath, start, stop),
        input_path=f.path,
        input_relpath=f.relpath,
        partition=f.partition,
        rg_start=start,
        rg_stop=stop,
        rows=sum(f.row_group_rows[start:stop]),
        input_bytes=sum(f.row_group_bytes[start:stop]),
        fingerprint=f.fingerprint,
        output_relpath=shard_output_relpath(f.relpath, start, stop),
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
