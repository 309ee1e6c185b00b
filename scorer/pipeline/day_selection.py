"""Which rows of a row group, by day: the `DaySelection` a piece of a shard carries.

A day filter (``--since``/``--until``/``--partition dt=...``) over files whose days are a column
selects row groups, or some days of a row group (docs/nights-in-a-column.md). Such a selection
is part of a planned piece (`plan.Piece.days`), of its id (``...:3-4@dt=2026-11-23``) and of its
score file's name, so it is a value of its own here, below the plan; `days` decides which files
and row groups a run selects, and `ShardDays` filters their rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scorer.errors import ConfigError
from scorer.partitions import DATE_KEY, HIVE_NULL, PartitionFilter

_EPOCH = dt.date(1970, 1, 1)
_LOW, _HIGH = -(2**31), 2**31 - 1  # unbounded ends of a span, as date32 values
Span = tuple[int, int]
"""Days ``[first, last]`` as date32 values (days since 1970-01-01), both inclusive."""
UNBOUNDED: Span = (_LOW, _HIGH)
"""Every day: a span without bounds (what statistics that bound no day give)."""
DAY_MARK = "@" + DATE_KEY + "="
"""Between a piece's row-group range and the days it selected, in its id."""


def iso_day(value: int) -> str:
    """A date32 value as ``YYYY-MM-DD``."""
    return (_EPOCH + dt.timedelta(days=value)).isoformat()


def date32(day: dt.date) -> int:
    """A date as its date32 value (days since 1970-01-01)."""
    return (day - _EPOCH).days


@dataclass(frozen=True)
class DaySelection:
    """Which rows of a row group, by day: day spans, and whether the rows without a day."""

    spans: tuple[Span, ...]
    """Sorted, disjoint and not adjacent."""
    nulls: bool = False

    @classmethod
    def every(cls) -> DaySelection:
        return cls((UNBOUNDED,), True)

    @classmethod
    def of(cls, spans: Iterable[Span], nulls: bool = False) -> DaySelection:
        merged: list[list[int]] = []
        for first, last in sorted(s for s in spans if s[0] <= s[1]):
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        return cls(tuple((a, b) for a, b in merged), nulls)

    def __bool__(self) -> bool:
        return bool(self.spans) or self.nulls

    def __and__(self, other: DaySelection) -> DaySelection:
        spans = [
            (max(a, c), min(b, d))
            for a, b in self.spans
            for c, d in other.spans
            if a <= d and c <= b
        ]
        return DaySelection.of(spans, self.nulls and other.nulls)

    def minus(self, other: DaySelection) -> DaySelection:
        """The rows of this selection that ``other`` does not hold."""
        spans = list(self.spans)
        for c, d in other.spans:
            cut: list[Span] = []
            for a, b in spans:
                if b < c or d < a:
                    cut.append((a, b))
                    continue
                if a < c:
                    cut.append((a, c - 1))
                if d < b:
                    cut.append((d + 1, b))
            spans = cut
        return DaySelection.of(spans, self.nulls and not other.nulls)

    def covers(self, other: DaySelection) -> bool:
        return not other.minus(self)

    def each_day(self) -> Iterator[DaySelection]:
        """Each day of this selection alone, then its rows without a day: the pieces whose
        scores go to one folder each (`DaySource.day_folders`). The spans must be bounded."""
        for first, last in self.spans:
            if first == _LOW or last == _HIGH:
                raise ValueError(f"{self.token}: an unbounded selection has no days to list")
            for value in range(first, last + 1):
                yield DaySelection(((value, value),))
        if self.nulls:
            yield DaySelection((), True)

    @property
    def one_day(self) -> bool:
        """One day's rows, no others (not those without a day)."""
        return not self.nulls and len(self.spans) == 1 and self.spans[0][0] == self.spans[0][1]

    @property
    def folder(self) -> str:
        """``dt=<day>`` of a selection of one day, ``dt=`` `partitions.HIVE_NULL` of the rows
        without a day alone: the table partition of such a piece's scores."""
        if self.spans == () and self.nulls:
            return f"{DATE_KEY}={HIVE_NULL}"
        if not self.one_day:
            raise ValueError(f"{self.token}: not a single day")
        return f"{DATE_KEY}={iso_day(self.spans[0][0])}"

    @property
    def token(self) -> str:
        """``2026-11-22..2026-11-23,2026-11-25,null``: how a piece id names it (`parse`)."""
        parts = []
        for first, last in self.spans:
            low = "" if first == _LOW else iso_day(first)
            high = "" if last == _HIGH else iso_day(last)
            parts.append(low if first == last else f"{low}..{high}")
        return ",".join(parts + (["null"] if self.nulls else []))

    @classmethod
    def parse(cls, token: str) -> DaySelection:
        spans, nulls = [], False
        for part in token.split(","):
            if part == "null":
                nulls = True
                continue
            low, sep, high = part.partition("..")
            first = date32(dt.date.fromisoformat(low)) if low else _LOW
            last = (date32(dt.date.fromisoformat(high)) if high else _HIGH) if sep else first
            spans.append((first, last))
        return cls.of(spans, nulls)

    def mask(self, days: pa.Array) -> pa.Array:
        """Which of ``days`` (date32) are selected, as a boolean array without nulls."""
        values = days.cast(pa.int32())
        keep = pa.array(np.zeros(len(days), bool))
        for first, last in self.spans:
            inside = pc.and_(pc.greater_equal(values, first), pc.less_equal(values, last))
            keep = pc.or_(keep, inside.fill_null(False))
        if self.nulls:
            keep = pc.or_(keep, pc.is_null(values))
        return keep


def selected_days(selection: PartitionFilter) -> DaySelection:
    """The days ``--since``/``--until``/``--partition dt=...`` select; every day and the rows
    without one when they select no day."""
    values = [v for k, v in selection.partitions if k == DATE_KEY]
    if not values and selection.since is None and selection.until is None:
        return DaySelection.every()
    wanted = DaySelection.of((UNBOUNDED,))
    if values:
        try:
            wanted = DaySelection.of(
                (d, d) for d in (date32(dt.date.fromisoformat(v)) for v in values)
            )
        except ValueError:
            raise ConfigError(
                f"--partition {DATE_KEY}={values[0]!r}: a day column is selected by ISO dates"
            ) from None
    low = date32(selection.since) if selection.since else _LOW
    high = date32(selection.until) if selection.until else _HIGH
    return wanted & DaySelection.of(((low, high),))


def piece_days(piece_id: str) -> DaySelection | None:
    """The days a piece (or a shard of it alone) selected, from its id; None: all its rows."""
    _, mark, token = piece_id.rpartition(DAY_MARK)
    return DaySelection.parse(token) if mark else None
