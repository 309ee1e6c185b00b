"""Drift of a run against the card's reference: a mergeable per-batch state and the drift table.

Every scored batch yields a `DriftState` (built in `IntentModel.score_batch` from the graph's feed
while it is still in memory, on the scoring thread): integer counts of each model input and of
`intent_calibrated` on the reference's bins (`scorer.model.reference`), sums for the means, and
exact counts of the rows each column made invalid or unseen. States of a shard are merged in the
actor, those of a `dt` partition and of the run in the driver (`merge`: associative and
commutative, counts exactly), and `drift_table` turns them into
``OUTPUT/drift/run_id=<RUN_ID>/part-0.parquet``.

Cost: binning every row cost 33 ms per million rows (a comparison pass per bin edge, ~140), a
tenth of the in-process work window. A batch of more than 2 × `SAMPLE_ROWS` rows bins a
systematic sample instead (`sample_rows`: the first `SAMPLE_BLOCK` rows of every stride ×
`SAMPLE_BLOCK`, each counted stride times), 6.5-8.8 ms per million rows; on 30 clean generated
days the largest PSI of any column was 0.017, of 100,000 rows a day or 10,000.

Definitions, per scope (a `dt` partition, or the run overall) and column:

- ``rows``: every row of the scope; ``share_missing`` and ``share_invalid``: rows whose status
  (`scorer.model.encode`) is ``missing:<column>``, resp. ``not_finite:`` or ``out_of_range:``
  ``<column>``, over ``rows``. A row has one status, its first failing column in card order, so
  the shares of all columns add up to the share of invalid rows in the scores. For
  ``intent_calibrated``, ``share_missing`` is the share of rows without a score (every invalid
  row) and ``share_invalid`` 0.
- ``share_unseen`` (categoricals): ok rows with a value outside the vocabulary, over ``rows``.
- The binned shares p (over ``rows_ok``, the rows with status ``ok``; the invalid rows have their
  shares above) and ``mean`` (numeric: of the values, boolean: share true, score: mean
  calibrated score) over the ok rows too.
- ``psi`` = Σ over bins (p_i − q_i) · ln(p_i / q_i), both shares floored at `PSI_EPSILON`, q the
  reference's shares. Null with no ok rows, and for the reference's calendar columns.

Season: q is not the year's distribution but that of the months the scope holds, weighted by its
ok rows per month (the season column's counts): q = Σ_m (n_m / n) q_m, likewise
``reference_mean``. A month the reference has no rows of (and a month value outside the
vocabulary) weighs in with the year's shares. The ``reference`` column says which was used:
``month=Nov``, ``months=Oct,Nov``, ``month=Jan:year`` (no January in the reference: the year),
``year`` (a reference without seasons), or ``calendar`` for a calendar column (`month`,
`special_day`, `weekend` in the bundled card: a night holds one month, a Saturday only weekend
rows; they are reported, not compared; their ``reference_mean`` is the months' mixture).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from scorer.arrow import RUN_ID_TYPE, table_from_rows
from scorer.model.reference import (
    ColumnReference,
    Reference,
    bins_from_below,
    feed_slots,
    rows_below,
)
from scorer.partitions import DATE_KEY

PSI_EPSILON = 1e-4  # shares below it count as it: an empty bin is rare, not impossible
# Rows of a batch binned (`sample_rows`): a larger batch bins a systematic sample of about this
# many, each weighted by the stride. Binning every row cost 33 ms per million rows here (one
# comparison pass per bin edge, ~140 of them), a tenth of the in-process work window.
SAMPLE_ROWS = 8_192
SAMPLE_BLOCK = 512


@dataclass(frozen=True)
class DriftState:
    """Counts of one set of scored rows on a reference's bins; ``DriftState()`` is no rows.

    `below` holds, for every column of the reference (inputs in card order, then the score) and
    each of its edges in turn, the binned rows below the edge (`reference.rows_below`, flat,
    int64); `binned` the binned rows in all (the ok rows, as the sample weighs them); `sums` the
    sum of each numeric and score column over them (0 for the others). `missing`, `invalid` and
    `unseen` count, per input, the rows whose status names it and the ok rows with a value
    outside its vocabulary, exactly.
    """

    rows: int = 0
    rows_ok: int = 0
    binned: int = 0
    below: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sums: np.ndarray = field(default_factory=lambda: np.zeros(0))
    missing: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    invalid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    unseen: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def from_feed(
        cls,
        reference: Reference,
        feed: Mapping[str, np.ndarray],
        invalid_mask: np.ndarray | None,
        invalid_counts: Mapping[str, int],
        unseen: Mapping[str, int],
        calibrated: np.ndarray,
    ) -> DriftState:
        """The state of one encoded and scored batch: the graph's `feed` (`EncodedBatch.feed`,
        invalid rows zeroed), which rows are invalid and their status counts, the ok rows with
        an unseen value per categorical, and the calibrated scores (float32, one per row).

        Bins and sums are of the sample `sample_rows` picks, each row weighted by its stride;
        rows, missing, invalid and unseen rows are counted exactly.
        """
        rows = len(calibrated)
        picked, stride = sample_rows(rows)
        sample = {kind: picked(values) for kind, values in feed.items()}
        scores = picked(calibrated[None, :])
        if invalid_mask is not None:
            # Invalid rows are fed zeros: binned, they would be zeros of every column.
            valid = picked(invalid_mask[None, :])[0] == 0
            sample = {kind: values[:, valid] for kind, values in sample.items()}
            scores = scores[:, valid]
        sample[SCORE_KIND] = scores
        binned = scores.shape[1]
        scratch = np.empty(binned, bool)
        sums = {kind: values.sum(axis=1, dtype=np.float64) for kind, values in sample.items()}
        # One reduction per kind, not per column: a batch's calls cost as much as its data.
        lows = {kind: values.min(axis=1).tolist() for kind, values in sample.items() if binned}
        highs = {kind: values.max(axis=1).tolist() for kind, values in sample.items() if binned}
        below: list[int] = []
        column_sums = np.zeros(len(reference.columns))
        for i, ((kind, slot), column) in enumerate(zip(_slots(reference), reference.columns)):
            bounds = (lows[kind][slot], highs[kind][slot]) if binned else None
            below += rows_below(sample[kind][slot], column.edges, scratch, bounds)
            if column.kind in ("numeric", "score"):
                column_sums[i] = sums[kind][slot]
        missing = np.zeros(len(reference.columns) - 1, np.int64)
        invalid = np.zeros(len(reference.columns) - 1, np.int64)
        inputs = [column.name for column in reference.columns[:-1]]
        for code, count in invalid_counts.items():
            reason, _, name = code.partition(":")
            if name not in inputs:  # a null key (`missing:<key>`): no input's share, not ok
                continue
            (missing if reason == "missing" else invalid)[inputs.index(name)] += count
        unseen_rows = np.zeros(len(reference.columns) - 1, np.int64)
        for name, count in unseen.items():
            unseen_rows[_input_index(reference, name)] = count
        return cls(
            rows=rows,
            rows_ok=rows - sum(invalid_counts.values()),
            binned=binned * stride,
            below=np.asarray(below, np.int64) * stride,
            sums=column_sums * stride,
            missing=missing,
            invalid=invalid,
            unseen=unseen_rows,
        )

    def merge(self, other: DriftState) -> DriftState:
        """The state of both sets of rows (of the same reference); associative and
        commutative, the counts exactly."""
        if not other.below.size and not other.rows:
            return self
        if not self.below.size and not self.rows:
            return other
        return DriftState(
            self.rows + other.rows,
            self.rows_ok + other.rows_ok,
            self.binned + other.binned,
            self.below + other.below,
            self.sums + other.sums,
            self.missing + other.missing,
            self.invalid + other.invalid,
            self.unseen + other.unseen,
        )

    def counts(self, reference: Reference) -> list[np.ndarray]:
        """Binned rows per bin of each column of `reference`."""
        counts, start = [], 0
        for column in reference.columns:
            stop = start + len(column.edges)
            below = self.below[start:stop].tolist() if self.below.size else [0] * (stop - start)
            counts.append(bins_from_below(below, self.binned))
            start = stop
        return counts


SCORE_KIND = "score"  # the sample's key for the calibrated scores, beside the feed's kinds


def sample_rows(rows: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """How a batch of `rows` is binned: a function giving the sampled columns of a [k, rows]
    array, and the weight (stride) of each sampled row.

    Below 2 * `SAMPLE_ROWS` rows, every row (stride 1, views: no copy). Beyond, with stride
    s = rows // SAMPLE_ROWS, the first `SAMPLE_BLOCK` rows of every s * `SAMPLE_BLOCK`: a
    systematic sample of contiguous blocks, copied at the cost of reading the sampled rows only
    (a stride of single rows would read every cache line of the feed).
    """
    if rows < 2 * SAMPLE_ROWS:
        return (lambda values: values), 1
    stride = rows // SAMPLE_ROWS
    period = stride * SAMPLE_BLOCK
    blocks = rows // period

    def picked(values: np.ndarray) -> np.ndarray:
        kept = values[:, : blocks * period].reshape(len(values), blocks, period)
        return kept[:, :, :SAMPLE_BLOCK].reshape(len(values), blocks * SAMPLE_BLOCK)

    return picked, stride


def _slots(reference: Reference) -> list[tuple[str, int]]:
    return [*feed_slots(reference), (SCORE_KIND, 0)]


def _input_index(reference: Reference, name: str) -> int:
    return [column.name for column in reference.columns[:-1]].index(name)


def psi(observed: np.ndarray, expected: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two share vectors over the same bins (see the module)."""
    p = np.maximum(np.asarray(observed, np.float64), epsilon)
    q = np.maximum(np.asarray(expected, np.float64), epsilon)
    return float(np.sum((p - q) * np.log(p / q)))


def drift_schema(partition_key: str = DATE_KEY) -> pa.Schema:
    """Schema of OUTPUT/drift/run_id=<RUN_ID>/part-0.parquet (one row per scope and column).

    ``scope`` is ``'partition'`` (``partition_key`` set; null for files outside any partition
    folder) or ``'overall'`` (``partition_key`` null), as in the calibration table.
    """
    return pa.schema(
        [
            ("run_id", RUN_ID_TYPE),
            ("scope", pa.string()),
            (partition_key, pa.string()),
            ("column", pa.string()),
            ("kind", pa.string()),
            ("reference", pa.string()),
            ("rows", pa.int64()),
            ("psi", pa.float64()),
            ("share_missing", pa.float64()),
            ("share_invalid", pa.float64()),
            ("share_unseen", pa.float64()),
            ("mean", pa.float64()),
            ("reference_mean", pa.float64()),
            ("rows_ok", pa.int64()),
        ]
    )


def drift_table(
    run_id: str,
    states: Mapping[str | None, DriftState],
    reference: Reference,
    partition_key: str = DATE_KEY,
) -> pa.Table:
    """Rows per partition (sorted, the None partition last), then overall; columns in the
    reference's order within each."""
    keys = sorted(states, key=lambda k: (k is None, "" if k is None else str(k)))
    overall = functools.reduce(DriftState.merge, states.values(), DriftState())
    records = [
        record
        for key in keys
        for record in _records(run_id, "partition", key, states[key], reference, partition_key)
    ]
    records += _records(run_id, "overall", None, overall, reference, partition_key)
    return table_from_rows(records, drift_schema(partition_key))


def _records(
    run_id: str,
    scope: str,
    key: str | None,
    state: DriftState,
    reference: Reference,
    partition_key: str,
) -> list[dict[str, object]]:
    all_counts = state.counts(reference)
    weights = _season_weights(all_counts, reference)
    records: list[dict[str, object]] = []
    inputs = len(reference.columns) - 1
    for i, (column, counts) in enumerate(zip(reference.columns, all_counts)):
        if i < inputs and state.missing.size:
            missing, invalid = int(state.missing[i]), int(state.invalid[i])
        else:
            missing, invalid = state.rows - state.rows_ok, 0
        compared = column.name not in reference.calendar
        expected, label = _expected(column, weights, reference.season)
        ok, binned = state.rows_ok, state.binned
        if column.kind == "boolean":
            total = float(counts[1])
        else:
            total = float(state.sums[i]) if state.sums.size else 0.0
        records.append(
            {
                "run_id": run_id,
                "scope": scope,
                partition_key: key,
                "column": column.name,
                "kind": column.kind,
                "reference": label if compared else "calendar",
                "rows": state.rows,
                "psi": psi(counts / binned, expected) if compared and binned else None,
                "share_missing": _share(missing, state.rows),
                "share_invalid": _share(invalid, state.rows),
                "share_unseen": (
                    _share(int(state.unseen[i]) if state.unseen.size else 0, state.rows)
                    if column.kind == "categorical"
                    else None
                ),
                "mean": None if column.kind == "categorical" or not binned else total / binned,
                "reference_mean": _expected_mean(column, weights),
                "rows_ok": ok,
            }
        )
    return records


def _share(count: int, rows: int) -> float | None:
    return count / rows if rows else None


def _season_weights(counts: list[np.ndarray], reference: Reference) -> dict[str | None, int]:
    """Binned rows per season value (None: a value outside the vocabulary)."""
    if reference.season is None:
        return {}
    position = _input_index(reference, reference.season)
    vocabulary = reference.columns[position].labels[:-1]  # the last bin is the unseen values'
    return {
        vocabulary[i] if i < len(vocabulary) else None: count
        for i, count in enumerate(counts[position].tolist())
        if count
    }


def _expected(
    column: ColumnReference, weights: Mapping[str | None, int], season: str | None
) -> tuple[np.ndarray, str]:
    """The reference shares for a scope of these season weights, and which reference it is."""
    total = sum(weights.values())
    if not total or season is None:
        return column.shares, "year"
    expected = np.zeros(column.bins)
    parts = []
    for name, count in weights.items():
        own = column.by_season.get(name) if name is not None else None
        expected += count / total * (own.shares if own is not None else column.shares)
        parts.append(f"{name or 'unseen'}" + ("" if own is not None else ":year"))
    return expected, (f"{season}=" if len(parts) == 1 else f"{season}s=") + ",".join(parts)


def _expected_mean(column: ColumnReference, weights: Mapping[str | None, int]) -> float | None:
    if column.mean is None:
        return None
    total = sum(weights.values())
    if not total:
        return column.mean
    mean = 0.0
    for name, count in weights.items():
        own = column.by_season.get(name) if name is not None else None
        part = own.mean if own is not None and own.mean is not None else column.mean
        mean += count / total * part
    return mean
