"""Days in a column: which column gives a file's rows their day, which row groups a day filter
reads, and each row's day in a batch (docs/nights-in-a-column.md).

A warehouse unload or a Spark job without ``partitionBy`` writes the day as a column, not as a
``dt=`` folder. `resolve_days` decides per file where its days come from: its ``dt`` folder
(which wins where the file has the column too, and must then agree with it), else the day column
(``--date-column``, by default a column named like the date key, ``dt``), else none (its rows
have no day). The column may be a date (date32, date64), a timestamp (its day in UTC, or in
``--date-timezone``) or ``YYYY-MM-DD`` strings.

``--since``/``--until``/``--partition dt=...`` select days. For a file whose days are a column,
each row group's day range comes from its footer's min/max statistics: a row group outside the
selection is never read, one inside it wholly is read as a folder's file is, and one straddling
a bound is read and filtered row by row (`ShardDays`). Such a straddling row group is a shard of
its own whose id and score file name carry the days it selected (``...:3-4@dt=2026-11-23``): a
later run selecting other days of the same row group scores only the days no commit record
holds yet (`DaySelection.minus`), so every row is committed once whatever the filters of the
runs. Its rows out are the rows selected, known once the row group is read: the commit checks
that every row of its row groups was read (`ShardOutcome.rows_read`), and its stats row says how
many of them were selected.

Per day, as with folders: each score row gets its day as a ``dt`` date column (what a ``dt=``
folder gives a reader), and the calibration and drift states of a batch are built day by day
(`ShardDays.score`), merged per day by the ledger.

Under a table format (``config.OutputFormat.is_table``: ``--format delta``), whose partitions need one
value per data file, a day column's scores go to one ``dt=<day>`` folder per day instead
(`DaySource.day_folders`): every row group is planned as pieces of one day each (and one of its
rows without a day, ``dt=__HIVE_DEFAULT_PARTITION__``), the same pieces a day filter makes, so
resuming and successive filters stay exactly-once by the same records. A row group's days come
from its statistics where they say one day; a row group that may hold several has its day column
read at planning (`_exact_days`), so no piece is empty. Each piece reads its row group again:
a file sorted by day pays about one row group more per day, one whose row groups each hold many
days reads each once per day. Consecutive row groups of one day are one piece, and the files
leave the ``dt`` column out (a partition column is not in a table's data files).
"""

from __future__ import annotations

import datetime as dt
import itertools
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scorer.errors import ConfigError, PreflightError, ShardReadError
from scorer.partitions import DATE_KEY, PartitionFilter
from scorer.pipeline.day_selection import (
    UNBOUNDED,
    DaySelection,
    date32,
    iso_day,
    piece_days,
    selected_days,
)
from scorer.pipeline.plan import FailedInput, InputFile
from scorer.storage import foreign_errors

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from scorer.model.runtime import ScoredBatch


# -- where a file's days come from -------------------------------------------------------------


@dataclass(frozen=True)
class DaySource:
    """How the run finds days: the column of files outside ``dt=`` folders, its timezone."""

    column: str | None
    """None: no file outside a folder has a day column (their rows have no day)."""
    timezone: str = "UTC"
    day_folders: bool = False
    """Each day's scores in a ``dt=`` folder of its own, without a ``dt`` column (a table
    format's partitions); else every score row gets its day as a ``dt`` column."""


@dataclass(frozen=True)
class DayPlan:
    """Which row groups of day-column files a run reads, and which of their rows."""

    source: DaySource
    groups: Mapping[str, Mapping[int, DaySelection | None]]
    """By `InputFile.identity` (`by_relpath` for the plan), the row groups to read of each file whose days are a column (a file not here
    is read whole); None: the whole group, a selection: its rows of those days alone."""
    dropped: frozenset[str] = frozenset()
    """Files left out: a day filter is set and they have no day."""
    row_groups_pruned: int = 0

    def by_relpath(self, files: Iterable[InputFile]) -> DayPlan:
        """This plan with its files by the names their scores go by (`scan.with_output_names`
        may rename a file after the days were resolved)."""
        groups = {f.relpath: self.groups[f.identity] for f in files if f.identity in self.groups}
        return replace(self, groups=groups)


def resolve_days(
    items: Sequence[InputFile | FailedInput],
    selection: PartitionFilter,
    *,
    column: str | None,
    timezone: str | None,
    day_folders: bool = False,
    filesystem: pafs.FileSystem | None = None,
) -> DayPlan:
    """Where each file's days come from and, under a day filter, which of its row groups hold
    selected days, from the footers alone. ``column``: ``--date-column`` (None: ``dt`` where
    the files have it). ``day_folders``: every row group of a day-column file by its days, for
    pieces of one day each (the day column of a row group that may hold several read from
    ``filesystem``).

    Raises `PreflightError` naming the file and the column for a day column of another type,
    a file outside a folder without the asked-for column, and a folder and a column that
    disagree (by the statistics); `NoInputFilesError` semantics are the caller's.
    """
    zone = _zone(timezone)
    files = [f for f in items if isinstance(f, InputFile)]
    name = column or DATE_KEY
    loose = [f for f in files if DATE_KEY not in dict(f.partition)]
    with_column = [f for f in loose if name in f.schema.names]
    if column is not None:
        lacking = [f for f in loose if name not in f.schema.names]
        if lacking:
            raise PreflightError(
                f"{lacking[0].path}: no day column '{name}' (--date-column) and no "
                f"{DATE_KEY}= folder; {len(lacking)} such file(s)"
            )
    elif with_column and len(with_column) < len(loose):
        without = next(f for f in loose if name not in f.schema.names)
        raise PreflightError(
            f"{without.path}: no '{name}' column, while {len(with_column)} other file(s) outside "
            f"{DATE_KEY}= folders have one: name the day column with --date-column, or give "
            "each file its day"
        )
    source = DaySource(name if with_column else None, timezone or "UTC", day_folders)
    uses_column = {f.relpath for f in with_column}
    for f in files:
        if name in f.schema.names and (f.relpath in uses_column or column is not None):
            _check_type(f, name)
    # Days as a column's values are ISO dates: parsed only where a file has such a column, so
    # that `--partition dt=latest` still selects a `dt=latest` folder.
    wanted = selected_days(selection) if source.column is not None else DaySelection.every()
    day_filter = bool(selection.since or selection.until) or any(
        k == DATE_KEY for k, _ in selection.partitions
    )
    groups: dict[str, dict[int, DaySelection | None]] = {}
    dropped: set[str] = set()
    pruned = 0
    for f in files:
        folder = dict(f.partition).get(DATE_KEY)
        if folder is not None:
            if name in f.schema.names and f.footer is not None:
                _check_folder(f, name, folder, zone)
            continue
        if source.column is None:
            if day_filter:
                dropped.add(f.relpath)
            continue
        if not day_filter and not day_folders:  # every row group whole: no statistics to read
            continue
        ranges = _group_days(f, source.column, zone)
        chosen: dict[int, DaySelection | None] = {}
        for group, possible in enumerate(ranges):
            picked = wanted & possible
            if not picked:
                pruned += 1
            elif picked.covers(possible) and not day_folders:
                chosen[group] = None
            else:
                chosen[group] = picked
        if day_folders:
            chosen = _exact_days(f, chosen, source, filesystem)
        if day_folders or len(chosen) < len(ranges) or any(v is not None for v in chosen.values()):
            groups[f.identity] = chosen
    return DayPlan(source, groups, frozenset(dropped), pruned)


def apply_commits(
    plan: DayPlan,
    committed: Mapping[str, Sequence[tuple[int, int, str]]],
    row_groups: Mapping[str, int],
) -> tuple[dict[str, list[tuple[int, int, str]]], dict[str, dict[int, DaySelection | None]]]:
    """Commit records of a day column's files: those of whole row groups stay ranges that
    `packing.plan_shards` keeps as they are; those of some days of a row group (their shard id
    says which) take those days off what this run reads of it. ``row_groups``: each file's count
    of them. Returns both parts."""
    whole: dict[str, list[tuple[int, int, str]]] = {}
    partial: dict[str, dict[int, DaySelection]] = {}
    for relpath, ranges in committed.items():
        for start, stop, shard in ranges:
            days = piece_days(shard)
            if days is None:
                whole.setdefault(relpath, []).append((start, stop, shard))
                continue
            held = partial.setdefault(relpath, {})
            for group in range(start, stop):  # a day's piece may span row groups of that day
                before = held.get(group, DaySelection(()))
                held[group] = DaySelection.of(
                    [*before.spans, *days.spans], days.nulls or before.nulls
                )
    groups = {relpath: dict(chosen) for relpath, chosen in plan.groups.items()}
    for relpath, done_groups in partial.items():
        chosen_groups = groups.get(relpath)
        for group, done in done_groups.items():
            if chosen_groups is None:  # read whole before this run's plan: every day of it
                chosen_groups = groups.setdefault(relpath, {})
                chosen_groups.update({g: None for g in range(row_groups[relpath])})
            if group not in chosen_groups:
                continue
            left = (chosen_groups[group] or DaySelection.every()).minus(done)
            if left:
                chosen_groups[group] = left
            else:
                del chosen_groups[group]
    # A day filter's run skips the commits of the row groups it selects, not of the others: as
    # with folders, where the unselected ones are not even listed.
    for relpath, chosen in groups.items():
        if relpath in whole and relpath in plan.groups:
            whole[relpath] = [r for r in whole[relpath] if any(g in chosen for g in range(*r[:2]))]
    return whole, groups


def _zone(timezone: str | None) -> zoneinfo.ZoneInfo | None:
    if timezone is None or timezone == "UTC":
        return None
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"--date-timezone {timezone!r}: not a timezone name such as Europe/Paris"
        ) from None


def is_day_type(kind: pa.DataType) -> bool:
    """A date, a timestamp, or strings (``YYYY-MM-DD``), dictionary-encoded or not."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (
        pa.types.is_date(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
    )


def _check_type(f: InputFile, name: str) -> None:
    kind = f.schema.field(name).type
    if not is_day_type(kind):
        raise PreflightError(
            f"{f.path}: day column '{name}' has type {kind}; expected a date (date32, date64), "
            "a timestamp or YYYY-MM-DD strings"
        )


def _check_folder(f: InputFile, name: str, folder: str, zone: zoneinfo.ZoneInfo | None) -> None:
    """A file in a ``dt=`` folder whose day column says another day (by its statistics)."""
    try:
        day = date32(dt.date.fromisoformat(folder))
    except ValueError:
        return  # not an ISO day: the folder names it, nothing to compare with
    for possible in _group_days(f, name, zone):
        found = [s for s in possible.spans if s != (day, day)]
        if found and found[0] != UNBOUNDED:
            first, last = found[0]
            raise PreflightError(
                f"{f.path}: its folder says {DATE_KEY}={folder} but its column '{name}' holds "
                f"{iso_day(first)}..{iso_day(last)}; move the file or fix the column"
            )


def _group_days(f: InputFile, name: str, zone: zoneinfo.ZoneInfo | None) -> list[DaySelection]:
    """Per row group, the days its rows may have, from the footer's statistics (every day where
    a group has none)."""
    metadata = f.footer.metadata if f.footer is not None else _read_metadata(f)
    index = metadata.schema.names.index(name) if name in metadata.schema.names else None
    kind = f.schema.field(name).type
    out = []
    for group in range(metadata.num_row_groups):
        stats = None if index is None else metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            out.append(DaySelection.every())
            continue
        first, last = _stat_day(stats.min, kind, zone), _stat_day(stats.max, kind, zone)
        if first is None or last is None:
            out.append(DaySelection.every())
            continue
        nulls = stats.null_count is None or stats.null_count > 0
        out.append(DaySelection.of(((first, last),), nulls))
    return out


def _exact_days(
    f: InputFile,
    chosen: Mapping[int, DaySelection | None],
    source: DaySource,
    filesystem: pafs.FileSystem | None,
) -> dict[int, DaySelection | None]:
    """``chosen`` with the days of each row group that its statistics do not pin to one day
    (several days, no statistics, or maybe rows without a day) as its day column says: one
    column of those row groups read, so that no piece of one day is planned empty. A row group
    left with no selected row is dropped."""
    import pyarrow.parquet as pq

    assert source.column is not None
    exact: dict[int, DaySelection | None] = dict(chosen)
    unsure = [g for g, picked in chosen.items() if picked is None or not picked.one_day]
    if not unsure:
        return exact
    with foreign_errors(f.path, "cannot read"):
        parquet = pq.ParquetFile(f.path, filesystem=filesystem)
        for group in unsure:
            data = parquet.read_row_group(group, columns=[source.column])
            try:
                days = row_days(data, source, f.path)
            except ShardReadError as exc:
                raise PreflightError(str(exc)) from None
            values = pc.unique(days).cast(pa.int32()).to_pylist()
            found = DaySelection.of(((v, v) for v in values if v is not None), None in values)
            picked = (chosen[group] or DaySelection.every()) & found
            if picked:
                exact[group] = picked
            else:
                del exact[group]
    return exact


def _read_metadata(f: InputFile) -> pq.FileMetaData:
    import pyarrow.parquet as pq

    return pq.read_metadata(f.path)


def _stat_day(value: object, kind: pa.DataType, zone: zoneinfo.ZoneInfo | None) -> int | None:
    """A statistic's day; None where it cannot say one (the group is then read whole)."""
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return date32(moment.astimezone(zone or dt.UTC).date())
    if isinstance(value, dt.date):
        return date32(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return date32(dt.date.fromisoformat(value[:10]))
        except ValueError:
            return None
    return None


# -- the day of each row ---------------------------------------------------------------------


def row_days(data: pa.Table | pa.RecordBatch, source: DaySource, where: str) -> pa.Array:
    """Each row's day (date32; null for a row without one) from the day column of ``data``.
    A string that is not ``YYYY-MM-DD`` is a `ShardReadError` naming ``where`` and the column."""
    assert source.column is not None
    column = data.column(source.column)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    if pa.types.is_date32(kind):
        return column
    if pa.types.is_date64(kind):
        return column.cast(pa.date32())
    if pa.types.is_timestamp(kind):
        instants = column.cast(pa.timestamp(kind.unit, tz=source.timezone))
        return pc.local_timestamp(instants).cast(pa.date32())
    try:
        if pa.types.is_string_view(column.type):
            column = column.cast(pa.string())
        return column.cast(pa.date32())
    except pa.ArrowInvalid as exc:
        raise ShardReadError(
            f"{where}: day column '{source.column}' holds a value that is not a YYYY-MM-DD day: "
            f"{exc}",
            input_path=where,
        ) from exc


@dataclass
class DayScores:
    """A batch scored day by day: its scores in input order and each day's rows and scores."""

    table: pa.Table
    rows_invalid: int
    rows_unseen: int
    days: list[tuple[str | None, pa.Table | pa.RecordBatch, ScoredBatch]]


class ShardDays:
    """The rows of one shard whose days are a column: selected, then scored day by day."""

    def __init__(self, source: DaySource, selection: DaySelection | None) -> None:
        self.source = source
        self.selection = selection
        self.rows_read = 0
        self.rows_without_day = 0

    def select(
        self, batches: Iterator[tuple[pa.RecordBatch | pa.Table, str]]
    ) -> Iterator[tuple[pa.RecordBatch | pa.Table, str]]:
        """The batches' rows of the selected days (every row without a selection); batches
        left empty are dropped."""
        for data, where in batches:
            self.rows_read += data.num_rows
            if self.selection is None:
                yield data, where
                continue
            kept = data.filter(self.selection.mask(row_days(data, self.source, where)))
            if kept.num_rows:
                yield kept, where

    def score(
        self,
        data: pa.Table | pa.RecordBatch,
        where: str,
        score: Callable[[pa.Table | pa.RecordBatch], ScoredBatch],
    ) -> DayScores:
        """``data`` scored day by day (`score` per day's rows), the scores put back in input
        order: each day's drift and calibration are its own, as they are for a folder's file."""
        days = row_days(data, self.source, where)
        self.rows_without_day += days.null_count
        unique = pc.unique(days)
        if len(unique) <= 1:
            scored = score(data)
            day = unique[0].as_py() if len(unique) else None
            key = day.isoformat() if day is not None else None
            return DayScores(
                _dated(scored.table, days, self.source.day_folders),
                scored.rows_invalid,
                scored.rows_unseen,
                [(key, data, scored)],
            )
        # Stable: within a day rows keep their order, and the inverse puts every row back.
        order = pc.array_sort_indices(days, null_placement="at_end")
        ordered = data.take(order)
        values = days.take(order).cast(pa.int32())
        dated = values.slice(0, len(values) - values.null_count).to_numpy()
        cuts = [0, *(np.flatnonzero(np.diff(dated)) + 1).tolist(), len(dated)]
        spans: list[tuple[str | None, int, int]] = [
            (iso_day(int(dated[a])), a, b) for a, b in itertools.pairwise(cuts) if b > a
        ]
        if values.null_count:
            spans.append((None, len(dated), len(values)))
        parts: list[tuple[str | None, pa.Table | pa.RecordBatch, ScoredBatch]] = []
        for key, a, b in spans:
            part = ordered.slice(a, b - a)
            parts.append((key, part, score(part)))
        joined = pa.concat_tables([scored.table for _, _, scored in parts])
        inverse = np.empty(len(order), np.int64)
        inverse[order.to_numpy()] = np.arange(len(order), dtype=np.int64)
        return DayScores(
            _dated(joined.take(pa.array(inverse)), days, self.source.day_folders),
            sum(s.rows_invalid for _, _, s in parts),
            sum(s.rows_unseen for _, _, s in parts),
            parts,
        )


def _dated(scores: pa.Table, days: pa.Array, day_folders: bool) -> pa.Table:
    """The scores with each row's day as ``dt`` (date32) at the end: what a reader filters and
    `scorer evaluate` groups on, as it does a ``dt=`` folder. With ``day_folders`` the folder
    says the day, and the column is left out (a table's partition column is not in its files)."""
    if DATE_KEY in scores.column_names:  # the input's own dt column, kept (--keep dt)
        scores = scores.drop_columns([DATE_KEY])
    if day_folders:
        return scores
    return scores.append_column(pa.field(DATE_KEY, pa.date32()), days)
