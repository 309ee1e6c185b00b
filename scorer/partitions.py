"""Hive partitions: the ``KEY=VALUE`` grammar, the day key, and which partitions a run selects.

Every place that reads or writes a partition asks this module: the ``--partition`` option and the
config file's ``[partition]`` table, the ``key=value`` folders of an input's path, the ``dt`` key
that names a day (`DATE_KEY`, also the day column of the drift and calibration tables), the folder
value of a null (`HIVE_NULL`), and the rule that ``--since`` is not after ``--until``. It sits on
the lowest floor, beside ``errors``, so that config, the model's tables and the pipeline share one
spelling of each (docs/input.md, docs/nights-in-a-column.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from urllib.parse import unquote

from scorer.errors import ConfigError, PreflightError

Partition = tuple[tuple[str, str], ...]
"""Hive partition of a file: ``(key, value)`` pairs in folder order (``dict(p)`` for lookups)."""

DATE_KEY = "dt"
"""The partition key of a day (``dt=2026-11-27``), and the day column of the per-day tables."""

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
"""The folder value of a null partition value (``dt=__HIVE_DEFAULT_PARTITION__``), as Hive,
Spark, delta-rs and DuckDB write and read it."""


def split_pair(text: str) -> tuple[str, str] | None:
    """``KEY=VALUE`` as ``(key, value)``, split at the first ``=``; None where ``text`` is not
    one (no ``=``, an empty key or an empty value). The one grammar of options and folders."""
    key, sep, value = text.partition("=")
    return (key, value) if sep and key and value else None


def parse_partitions(pairs: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """`("dt=2026-11-27", "dt=2026-11-28", "region=3")` → `{"dt": ("2026-11-27", "2026-11-28"),
    "region": ("3",)}`: values of one key are alternatives, in the order given."""
    parsed: dict[str, tuple[str, ...]] = {}
    for text in pairs:
        pair = split_pair(text)
        if pair is None:
            raise ConfigError(f"partition: expected KEY=VALUE, got {text!r}")
        key, value = pair
        if value not in parsed.get(key, ()):
            parsed[key] = (*parsed.get(key, ()), value)
    return parsed


def check_day_range(since: date | None, until: date | None, *, flags: bool) -> None:
    """Refuse ``since`` after ``until`` (both bound the days inclusively, so such a range selects
    nothing); ``flags`` names them as options (``--since``), else as config keys."""
    if since and until and since > until:
        if flags:
            raise ConfigError(f"--since {since} is after --until {until}")
        raise ConfigError(f"since ({since}) is after until ({until})")


def folder_pair(folder: str) -> tuple[str, str] | None:
    """A hive folder's ``(key, value)``, the value unquoted (``region=eu%2Fwest``); None for a
    folder that is not ``key=value``."""
    pair = split_pair(folder)
    return (pair[0], unquote(pair[1])) if pair else None


def partition_of(relpath: str) -> Partition:
    """The hive partition a relpath's ``key=value`` folders name."""
    return tuple(pair for folder in relpath.split("/")[:-1] if (pair := folder_pair(folder)))


def hive_tail(path: str) -> list[str]:
    """A path's own trailing ``key=value`` folders, kept so a partition scored alone keeps them."""
    tail: list[str] = []
    for part in reversed([p for p in path.split("/") if p]):
        if not folder_pair(part):
            break
        tail.insert(0, part)
    return tail


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
            pair = split_pair(text)
            if pair is None:
                raise ConfigError(f"--partition {text!r}: expected KEY=VALUE, e.g. dt=2026-11-27")
            pairs.append(pair)
        first, last = _as_date(since, "since"), _as_date(until, "until")
        check_day_range(first, last, flags=True)
        return cls(tuple(pairs), first, last)

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
        row groups `pipeline.days.resolve_days` then selects."""
        return PartitionFilter(tuple((k, v) for k, v in self.partitions if k != DATE_KEY))

    def describe(self) -> str:
        parts = [f"--partition {k}={v}" for k, v in self.partitions]
        bounds = (("since", self.since), ("until", self.until))
        parts += [f"--{name} {value}" for name, value in bounds if value]
        return " ".join(parts)


SELECT_ALL = PartitionFilter()
"""The filter of a run without ``--partition``, ``--since`` or ``--until``: every file."""


def _as_date(value: str | date | None, option: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--{option} {value!r}: expected an ISO date such as 2026-11-27"
        ) from None
