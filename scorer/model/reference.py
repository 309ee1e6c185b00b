"""The model card's reference: the training distribution on fixed bins, against which runs drift.

Written into `model.json` by `train` (from every row of the training table, scored by the model
just built) and refreshed by `calibrate` (its score histogram and base rate from the new data;
its input bins kept, or built from the new data when the old card has none). A card without a
reference still loads and scores; drift is then skipped.

Bins, all over float32 values exactly as the graph is fed them (`scorer.model.encode`), so a
reference built from a table and the drift of the same table agree to the row:

- numeric: edges at the training deciles, deduplicated. A zero-inflated column (at least
  `ZERO_INFLATED_SHARE` exact zeros) gets a bin of its own for zero, and its other edges are the
  deciles of the non-zero values, so that the zeros do not use up the resolution.
- categorical: one bin per vocabulary entry, in vocabulary order, then one for unseen values.
- boolean: false, true.
- score (`intent_calibrated`): edges at the deciles of the calibrated training scores.

Bin ``j`` holds ``edges[j-1] <= x < edges[j]``; the first bin everything below ``edges[0]``, the
last everything from ``edges[-1]`` on. A column's counts are exact integers.

Season. Two inputs of the sessions are calendar features: a November night holds one `month` and
no `special_day`, a Saturday only `weekend` rows. Compared with the whole year they alarm every
day (on the bundled sessions the PSI of `special_day` for November against the year is 0.71, of
`product_pages` for March 0.14). So the reference keeps, besides the year, the counts of every
column per value of the season column (`month`) on the same edges, and a partition is compared
with the months it holds, weighted by its rows per month (`scorer.model.drift`). The calendar
columns themselves (`month`, `special_day`, `weekend`) are listed in `calendar` and not compared.

Card JSON (key ``reference``)::

    {"data": "...", "score_data": "...", "rows": 12330, "positives": 1908,
     "season": "month", "calendar": ["month", "special_day", "weekend"],
     "seasons": {"Feb": {"rows": 184, "positives": 3}, ...},
     "columns": [{"name": "admin_pages", "kind": "numeric", "edges": [1.0, 2.0, ...],
                  "counts": [...], "mean": 2.3,
                  "by_season": {"Feb": {"counts": [...], "mean": 1.1}, ...}},
                 ...,
                 {"name": "intent_calibrated", "kind": "score", ...}]}

`edges` are written for numeric and score columns only; the others' follow from the card's input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scorer.errors import ModelError

SCORE_COLUMN = "intent_calibrated"
KINDS = ("numeric", "categorical", "boolean", "score")
BINS = 10  # deciles, as PSI is usually read
# A numeric column with at least this share of exact zeros gets a bin for zero alone.
ZERO_INFLATED_SHARE = 0.1


@dataclass(frozen=True)
class SeasonCounts:
    """A column's counts (and mean) over the reference rows of one season value."""

    counts: tuple[int, ...]  # one per bin
    mean: float | None

    @property
    def shares(self) -> np.ndarray:
        return _shares(self.counts)


@dataclass(frozen=True)
class ColumnReference:
    """One column's reference: its bins, year counts and mean, and the same per season value."""

    name: str
    kind: str  # KINDS
    # float32 values as Python floats (exact): compared per batch without NumPy scalars.
    edges: tuple[float, ...]  # bins = len(edges) + 1
    counts: tuple[int, ...]
    mean: float | None  # None for categoricals
    by_season: Mapping[str, SeasonCounts] = field(default_factory=dict)
    labels: tuple[str, ...] = ()  # categoricals: the vocabulary as text, then "unseen"

    @property
    def bins(self) -> int:
        return len(self.edges) + 1

    @property
    def shares(self) -> np.ndarray:
        return _shares(self.counts)


@dataclass(frozen=True)
class Reference:
    """The training distribution of a model's inputs and calibrated score, and the base rate."""

    data: str  # where the input counts came from
    score_data: str  # where the score counts, rows and positives came from
    rows: int
    positives: int
    season: str | None  # the categorical input whose values key `by_season`; None: year only
    calendar: tuple[str, ...]  # inputs reported but not compared (PSI null)
    seasons: Mapping[str, tuple[int, int]]  # season value -> (rows, positives) of `score_data`
    columns: tuple[ColumnReference, ...]  # the card's inputs in order, then the score

    @property
    def base_rate(self) -> float:
        return self.positives / self.rows if self.rows else float("nan")

    def column(self, name: str) -> ColumnReference:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


# --------------------------------------------------------------------------------------------
# Bins and counts: the one counting kernel the reference and every run's drift share
# --------------------------------------------------------------------------------------------


def rows_below(
    values: np.ndarray,
    thresholds: Sequence[float],
    scratch: np.ndarray | None = None,
    bounds: tuple[float, float] | None = None,
) -> list[int]:
    """For each threshold, how many of the float32 `values` are below it (a cumulative count).

    One comparison and one count per threshold inside the values' range (measured: 0.2 ms per
    threshold per million rows, against 2 ms for `np.searchsorted` of ten edges and 2.4 ms for a
    `np.bincount`); one outside it costs nothing, so a column constant within a batch (the
    month of a day's rows) costs its min and max. `scratch`: a bool buffer of at least
    ``len(values)`` to reuse; `bounds`: the values' min and max, when known.
    """
    rows = len(values)
    if not rows:
        return [0] * len(thresholds)
    low, high = bounds if bounds is not None else (float(values.min()), float(values.max()))
    buffer = scratch[:rows] if scratch is not None else np.empty(rows, bool)
    below = []
    for threshold in thresholds:
        if threshold > high:
            below.append(rows)
        elif threshold <= low:
            below.append(0)
        else:
            below.append(int(np.count_nonzero(np.less(values, threshold, out=buffer))))
    return below


def bins_from_below(below: Sequence[int], rows: int) -> np.ndarray:
    """Counts per bin (int64) from `rows_below` of the edges and the rows in all."""
    return np.diff(np.asarray([0, *below, rows], np.int64))


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> tuple[int, ...]:
    """Counts of float32 `values` in the bins of `edges` (``len(edges) + 1``)."""
    return tuple(bins_from_below(rows_below(values, edges), len(values)).tolist())


def numeric_edges(values: np.ndarray, bins: int = BINS) -> tuple[float, ...]:
    """Decile edges of float32 `values` (all valid), with a bin for zero when zero-inflated."""
    values = np.asarray(values, np.float32)
    if not values.size:
        return ()
    zero = values == 0
    if np.count_nonzero(zero) >= ZERO_INFLATED_SHARE * values.size and not zero.all():
        rest = values[~zero]
        cuts = np.quantile(rest, np.arange(1, bins - 1) / (bins - 1), method="higher")
        # Zero alone in its bin: an edge at zero (for values below it) and at the smallest
        # positive value.
        positive = rest[rest > 0]
        smallest = [positive.min()] if positive.size else []
        cuts = np.concatenate([cuts, [0.0], smallest])
    else:
        cuts = np.quantile(values, np.arange(1, bins) / bins, method="higher")
    return _edges_above(cuts, values.min())


def score_edges(scores: np.ndarray, bins: int = BINS) -> tuple[float, ...]:
    """Decile edges of the calibrated training scores (isotonic ties merge bins)."""
    scores = np.asarray(scores, np.float32)
    if not scores.size:
        return ()
    cuts = np.quantile(scores, np.arange(1, bins) / bins, method="higher")
    return _edges_above(cuts, scores.min())


def _edges_above(cuts: np.ndarray, low: float) -> tuple[float, ...]:
    # An edge at or below the smallest value would only make a bin that is always empty.
    edges = np.unique(np.asarray(cuts, np.float32))
    return tuple(edges[edges > np.float32(low)].tolist())


def _category_edges(size: int) -> tuple[float, ...]:
    # Vocabulary indices are whole numbers in the feed; `size` is the unseen index.
    return tuple(float(i) for i in range(1, size + 1))


_BOOLEAN_EDGES = (1.0,)


def _shares(counts: Sequence[int]) -> np.ndarray:
    array = np.asarray(counts, np.float64)
    total = array.sum()
    return array / total if total else np.zeros(len(array))


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def build_reference(
    inputs: Sequence[InputColumn],
    feed: Mapping[str, np.ndarray],
    calibrated: np.ndarray,
    labels: np.ndarray,
    *,
    data: str,
    season: str | None,
    calendar: Sequence[str] = (),
) -> Reference:
    """The reference of a training table, given as the graph's feed of its (all valid) rows, the
    calibrated scores the model gives them and their 0/1 labels. `season`: the categorical input
    whose values key the per-season counts (None: the year only); `calendar`: inputs not
    compared."""
    columns = [
        _column_of(spec, values) for spec, values in zip(inputs, _rows_by_input(inputs, feed))
    ]
    columns.append(_column_reference(SCORE_COLUMN, "score", score_edges(calibrated), calibrated))
    reference = Reference(
        data=data,
        score_data=data,
        rows=len(labels),
        positives=int(np.count_nonzero(labels)),
        season=None,
        calendar=tuple(calendar),
        seasons={},
        columns=tuple(columns),
    )
    if season is None:
        return reference
    season_of_row = _season_of_rows(inputs, feed, season)
    return with_seasons(reference, season, season_of_row, inputs, feed, calibrated, labels)


def with_scores(
    reference: Reference,
    inputs: Sequence[InputColumn],
    feed: Mapping[str, np.ndarray],
    calibrated: np.ndarray,
    labels: np.ndarray,
    *,
    data: str,
) -> Reference:
    """`reference` with its score column, rows, positives and seasons' base rates from new data
    (`calibrate`): the input counts stay those of the training data."""
    score = _column_reference(SCORE_COLUMN, "score", score_edges(calibrated), calibrated)
    refreshed = Reference(
        data=reference.data,
        score_data=data,
        rows=len(labels),
        positives=int(np.count_nonzero(labels)),
        season=None,
        calendar=reference.calendar,
        seasons={},
        columns=(*reference.columns[:-1], score),
    )
    if reference.season is None:
        return refreshed
    season_of_row = _season_of_rows(inputs, feed, reference.season)
    return with_seasons(
        refreshed,
        reference.season,
        season_of_row,
        inputs,
        feed,
        calibrated,
        labels,
        scores_only=True,
    )


def with_seasons(
    reference: Reference,
    season: str,
    season_of_row: np.ndarray,
    inputs: Sequence[InputColumn],
    feed: Mapping[str, np.ndarray],
    calibrated: np.ndarray,
    labels: np.ndarray,
    *,
    scores_only: bool = False,
) -> Reference:
    """`reference` with per-season counts: `season_of_row` is each row's index in the season
    column's vocabulary. `scores_only`: only the score column's (and rows, positives)."""
    spec = next(s for s in inputs if s.name == season)
    names = [str(v) for v in spec.vocabulary or ()]
    values = [*_rows_by_input(inputs, feed), np.asarray(calibrated, np.float32)]
    present = np.unique(season_of_row[season_of_row < len(names)]).astype(int)
    masks = {names[i]: season_of_row == i for i in present}
    columns = []
    for position, column in enumerate(reference.columns):
        if scores_only and column.kind != "score":
            columns.append(column)
            continue
        by_season = {
            name: SeasonCounts(
                bin_counts(values[position][mask], column.edges),
                _mean(column.kind, values[position][mask]),
            )
            for name, mask in masks.items()
        }
        columns.append(_replace_seasons(column, by_season))
    return Reference(
        data=reference.data,
        score_data=reference.score_data,
        rows=reference.rows,
        positives=reference.positives,
        season=season,
        calendar=reference.calendar,
        seasons={
            name: (int(np.count_nonzero(mask)), int(np.count_nonzero(labels[mask])))
            for name, mask in masks.items()
        },
        columns=tuple(columns),
    )


def _replace_seasons(
    column: ColumnReference, by_season: Mapping[str, SeasonCounts]
) -> ColumnReference:
    return ColumnReference(
        column.name, column.kind, column.edges, column.counts, column.mean, by_season, column.labels
    )


def _rows_by_input(
    inputs: Sequence[InputColumn], feed: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """Each input's row of the feed, in card order (the feed holds a kind's inputs in order)."""
    slots = dict.fromkeys(feed, 0)
    rows = []
    for spec in inputs:
        rows.append(np.asarray(feed[spec.kind][slots[spec.kind]], np.float32))
        slots[spec.kind] += 1
    return rows


def feed_slots(reference: Reference) -> list[tuple[str, int]]:
    """(feed kind, row) of each input column of `reference`, in its order."""
    slots: dict[str, int] = {}
    placed = []
    for column in reference.columns[:-1]:
        slot = slots.get(column.kind, 0)
        placed.append((column.kind, slot))
        slots[column.kind] = slot + 1
    return placed


def _season_of_rows(
    inputs: Sequence[InputColumn], feed: Mapping[str, np.ndarray], season: str
) -> np.ndarray:
    position = [s.name for s in inputs].index(season)
    if inputs[position].kind != "categorical":
        raise ValueError(f"the season column {season!r} must be categorical")
    return _rows_by_input(inputs, feed)[position].astype(np.int64)


def _column_of(spec: InputColumn, values: np.ndarray) -> ColumnReference:
    if spec.kind == "numeric":
        return _column_reference(spec.name, "numeric", numeric_edges(values), values)
    if spec.kind == "boolean":
        return _column_reference(spec.name, "boolean", _BOOLEAN_EDGES, values)
    vocabulary = spec.vocabulary or ()
    return _column_reference(
        spec.name,
        "categorical",
        _category_edges(len(vocabulary)),
        values,
        labels=(*(str(v) for v in vocabulary), "unseen"),
    )


def _column_reference(
    name: str,
    kind: str,
    edges: tuple[float, ...],
    values: np.ndarray,
    labels: tuple[str, ...] = (),
) -> ColumnReference:
    values = np.asarray(values, np.float32)
    return ColumnReference(
        name, kind, edges, bin_counts(values, edges), _mean(kind, values), {}, labels
    )


def _mean(kind: str, values: np.ndarray) -> float | None:
    if kind == "categorical" or not len(values):
        return None
    return float(np.sum(values, dtype=np.float64) / len(values))


# --------------------------------------------------------------------------------------------
# Card JSON
# --------------------------------------------------------------------------------------------


class InputColumn(Protocol):
    """What a reference needs of one of the card's inputs (`scorer.model.card.InputSpec`), named
    here so that the card, which carries a reference, and the reference need not import each other."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def vocabulary(self) -> tuple[str, ...] | tuple[int, ...] | None: ...


class CardReader(Protocol):
    """What `scorer.model.card` hands over to read a part of the card: a JSON object that names
    its file and key in every error."""

    path: Path
    prefix: str
    doc: dict[str, Any]

    def get(self, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any: ...

    def child(self, key: str) -> CardReader: ...

    def items(self, key: str) -> Sequence[CardReader]: ...


def reference_to_json(reference: Reference) -> dict[str, Any]:
    return {
        "data": reference.data,
        "score_data": reference.score_data,
        "rows": reference.rows,
        "positives": reference.positives,
        "season": reference.season,
        "calendar": list(reference.calendar),
        "seasons": {
            name: {"rows": rows, "positives": positives}
            for name, (rows, positives) in reference.seasons.items()
        },
        "columns": [_column_to_json(column) for column in reference.columns],
    }


def _column_to_json(column: ColumnReference) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": column.name, "kind": column.kind}
    if column.kind in ("numeric", "score"):
        doc["edges"] = list(column.edges)
    doc["counts"] = list(column.counts)
    doc["mean"] = column.mean
    doc["by_season"] = {
        name: {"counts": list(part.counts), "mean": part.mean}
        for name, part in column.by_season.items()
    }
    return doc


def reference_from_json(r: CardReader, inputs: Sequence[InputColumn]) -> Reference:
    """The card's ``reference``, checked against the card's inputs; a malformed key is a
    `ModelError` naming it."""
    season = r.get("season", str, optional=True)
    calendar = tuple(r.get("calendar", list))
    known = [spec.name for spec in inputs]
    for name in (*calendar, *([season] if season is not None else [])):
        if name not in known:
            raise _bad(r, "calendar" if name in calendar else "season", f"names no input: {name!r}")
    items = r.items("columns")
    expected = [(spec.name, spec.kind) for spec in inputs] + [(SCORE_COLUMN, "score")]
    if [(i.get("name", str), i.get("kind", str)) for i in items] != expected:
        raise _bad(
            r,
            "columns",
            "must describe the card's inputs in order, then intent_calibrated: "
            + ", ".join(f"{n} ({k})" for n, k in expected),
        )
    specs: list[InputColumn | None] = [*inputs, None]
    columns = tuple(_column_from_json(item, spec) for item, spec in zip(items, specs))
    seasons_doc = r.child("seasons")
    seasons = {}
    for name in seasons_doc.doc:
        part = seasons_doc.child(name)
        seasons[name] = (_count(part, "rows"), _count(part, "positives"))
    if season is not None:
        vocabulary = [str(v) for v in next(s for s in inputs if s.name == season).vocabulary or ()]
        for name in seasons:
            if name not in vocabulary:
                raise _bad(seasons_doc, name, f"is not a value of the season column {season!r}")
    rows, positives = _count(r, "rows"), _count(r, "positives")
    if positives > rows:
        raise _bad(r, "positives", f"({positives}) exceeds rows ({rows})")
    return Reference(
        data=r.get("data", str),
        score_data=r.get("score_data", str),
        rows=rows,
        positives=positives,
        season=season,
        calendar=calendar,
        seasons=seasons,
        columns=columns,
    )


def _column_from_json(r: CardReader, spec: InputColumn | None) -> ColumnReference:
    kind = r.get("kind", str)
    labels: tuple[str, ...] = ()
    if kind in ("numeric", "score"):
        raw = r.get("edges", list)
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in raw):
            raise _bad(r, "edges", "must hold numbers")
        as_float32 = np.asarray(raw, np.float32)
        if np.any(~np.isfinite(as_float32)) or np.any(np.diff(as_float32) <= 0):
            raise _bad(r, "edges", "must be finite and strictly increasing in float32")
        edges = tuple(as_float32.tolist())
    elif kind == "boolean":
        edges = _BOOLEAN_EDGES
    else:
        assert spec is not None  # the score column is not categorical (checked above)
        vocabulary = spec.vocabulary or ()
        edges = _category_edges(len(vocabulary))
        labels = (*(str(v) for v in vocabulary), "unseen")
    bins = len(edges) + 1
    counts = _counts(r, "counts", bins)
    mean = _mean_from(r, kind)
    by_season_doc = r.child("by_season")
    by_season = {}
    for name in by_season_doc.doc:
        part = by_season_doc.child(name)
        by_season[name] = SeasonCounts(_counts(part, "counts", bins), _mean_from(part, kind))
    return ColumnReference(r.get("name", str), kind, edges, counts, mean, by_season, labels)


def _mean_from(r: CardReader, kind: str) -> float | None:
    mean = r.get("mean", (int, float), optional=True)
    if kind == "categorical" and mean is not None:
        raise _bad(r, "mean", "must be null for a categorical column")
    return None if mean is None else float(mean)


def _counts(r: CardReader, key: str, bins: int) -> tuple[int, ...]:
    counts = r.get(key, list)
    if len(counts) != bins or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
    ):
        raise _bad(r, key, f"must hold {bins} non-negative integers (one per bin)")
    return tuple(counts)


def _count(r: CardReader, key: str) -> int:
    value: int = r.get(key, int)
    if value < 0:
        raise _bad(r, key, "must not be negative")
    return value


def _bad(r: CardReader, key: str, problem: str) -> ModelError:
    return ModelError(f"{r.path}: key {r.prefix}{key!r} {problem}")
