"""Packing row groups into shards: `plan_shards` cuts the files a scan found into a `plan.Plan`.

``plan_shards`` cuts the row groups of each output folder (a file's hive folder) into shards of
about ``shard_rows`` rows. A shard is a tuple of *pieces*, each a run of consecutive row groups
of one file: a big file splits on row-group boundaries into shards of one piece, and the small
files that streaming ingestion writes by the thousand are packed, in relpath order, several to
a shard (per-shard costs, ~2 ms a stage, would otherwise outweigh their rows). Files of
different folders never share a shard, so every score file stays in its input's partition.
Row groups a previous run committed for the same file fingerprint keep their boundaries, per
piece (they are the ``skipped`` shards); only the row groups they leave uncovered are packed
with the current ``shard_rows``. So changing ``--shard-rows`` on a rerun never plans a row twice.

Every shard built here is named by `layout.shard_output_relpath` (its score file) and
`plan.packed_shard_id` (its id); `split_off` and `with_quick_head` recut a planned shard alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from scorer.errors import ConfigError
from scorer.partitions import Partition
from scorer.pipeline.day_selection import DaySelection
from scorer.pipeline.layout import shard_output_relpath
from scorer.pipeline.plan import (
    FailedInput,
    InputFile,
    Piece,
    Plan,
    Shard,
    packed_shard_id,
    pieces_digest,
    shard_id,
)

CommittedRange = tuple[int, int] | tuple[int, int, str]
"""``(rg_start, rg_stop)`` of a file committed before, optionally with the committing shard's id."""


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
