"""Calibration and ranking metrics of binary probabilities, in batch and as a mergeable state.

Batch functions take whole arrays (no nulls; 1-D labels as bool or 0/1, probabilities in
[0, 1]) and match scikit-learn where scikit-learn has the metric. `CalibrationState` is the
same figures computed incrementally: each scoring actor builds one per shard and partition,
ships it to the driver (kilobytes, no per-row data), and the driver merges them.

Definitions (N rows, label y, probability p):

- ``brier``: mean of (p - y)^2.
- ``log_loss``: mean of -(y log p + (1 - y) log(1 - p)) with p clipped to [eps, 1 - eps], eps the
  machine epsilon of the probabilities' float dtype (1.19e-7 for float32 scores, 2.2e-16 for
  float64), as scikit-learn >= 1.5 does.
- ``roc_auc``: probability that a random positive scores above a random negative, ties counting
  one half (the Mann-Whitney statistic, = sklearn.metrics.roc_auc_score). NaN with one class only.
- Reliability bins and ECE: rows are put in bins; per bin, count n_b, mean prediction and observed
  rate; ``ece = sum_b n_b / N * |mean_prediction_b - observed_rate_b|`` over non-empty bins.

  - equal-width (``strategy="width"``): bin ``min(floor(bins * p), bins - 1)``, i.e.
    [k/bins, (k+1)/bins) with the last bin closed at 1.
  - equal-mass (``strategy="mass"``): rows sorted by score, 0-based rank r; with
    ``q_k = floor(k (N - 1) / bins)`` for k = 1..bins-1, a group of equal scores whose lowest rank
    is r goes to bin ``#{k : q_k < r}``. Without ties that is ``bins`` runs of (nearly) equal
    counts; tied scores are never split, so a tie straddling an edge lands wholly in the lower bin
    and bins can be unequal or empty under heavy ties. This is exactly the binning of
    ``sklearn.calibration.calibration_curve(strategy="quantile")``: edges at the linearly
    interpolated quantiles, a row in bin k when ``edge_k < p <= edge_{k+1}``.

`CalibrationState` keeps rows, positives and the sums behind the mean, Brier and log loss exactly
(the log-loss sum to ~1e-15 relative), and a histogram of each score over
``FINE_BINS = 15 * 2**11`` equal-width fine bins (count, positives, sum of predictions). A fine bin lies inside one of the 15 equal-width bins, so those
are exact too. ROC AUC and equal-mass bins are computed from the fine bins treated as tied groups;
the error this makes is bounded by `CalibrationState.approximation_bounds` (see there).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from scorer.arrow import RUN_ID_TYPE, fill_scalar, table_from_rows, to_numpy
from scorer.partitions import DATE_KEY

ECE_BINS = 15
# A multiple of ECE_BINS so every fine bin sits inside one equal-width bin, and a power-of-two
# factor so float32 * FINE_BINS is exact in float64: the fine binning never disagrees with the
# coarse one. 30720 bins >= 2**14 gives a width of 3.3e-5.
FINE_BINS = ECE_BINS * 2**11
STRATEGIES = ("width", "mass")


# --------------------------------------------------------------------------------------------
# Binned totals: the one representation every figure is computed from
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityBins:
    """Per bin: rows, positives and the sum of predictions; empty bins are kept."""

    count: np.ndarray
    positives: np.ndarray
    sum_predicted: np.ndarray

    @property
    def mean_predicted(self) -> np.ndarray:
        """Mean prediction per bin; NaN for an empty bin."""
        return _ratio(self.sum_predicted, self.count)

    @property
    def observed_rate(self) -> np.ndarray:
        """Fraction of positives per bin; NaN for an empty bin."""
        return _ratio(self.positives, self.count)

    def ece(self) -> float:
        """Expected calibration error: count-weighted mean gap of prediction and outcome."""
        rows = self.count.sum()
        if rows == 0:
            return float("nan")
        # Per bin n_b * |mean_b - rate_b| = |sum_predicted_b - positives_b|; no division needed.
        return float(np.abs(self.sum_predicted - self.positives).sum() / rows)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(denominator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _totals(index: np.ndarray, labels: np.ndarray, probs: np.ndarray, size: int) -> ReliabilityBins:
    return ReliabilityBins(
        count=np.bincount(index, minlength=size).astype(np.int64),
        positives=np.bincount(index, weights=labels, minlength=size).round().astype(np.int64),
        sum_predicted=np.bincount(index, weights=probs, minlength=size),
    )


def _width_index(probs: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum(np.floor(probs * bins), bins - 1).astype(np.int64)


def _mass_bins(groups: ReliabilityBins, bins: int) -> ReliabilityBins:
    """Equal-mass bins from groups of tied scores given in ascending score order."""
    rows = int(groups.count.sum())
    lowest_rank = np.cumsum(groups.count) - groups.count
    edges = (np.arange(1, bins) * (rows - 1)) // bins  # q_k = floor(k (N - 1) / bins)
    index = np.searchsorted(edges, lowest_rank, side="left")  # #{k : q_k < r}
    return ReliabilityBins(
        count=np.bincount(index, weights=groups.count, minlength=bins).astype(np.int64),
        positives=np.bincount(index, weights=groups.positives, minlength=bins).astype(np.int64),
        sum_predicted=np.bincount(index, weights=groups.sum_predicted, minlength=bins),
    )


def _auc(groups: ReliabilityBins) -> float:
    """Mann-Whitney AUC from groups of tied scores given in ascending score order."""
    negatives = groups.count - groups.positives
    total_pos, total_neg = int(groups.positives.sum()), int(negatives.sum())
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    below = np.cumsum(negatives) - negatives
    wins = groups.positives.astype(np.float64) @ (below + 0.5 * negatives)
    return float(wins / (total_pos * total_neg))


# --------------------------------------------------------------------------------------------
# Batch metrics
# --------------------------------------------------------------------------------------------


def _check(labels, probs) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate and convert to (bool labels, float64 probabilities, log-loss epsilon)."""
    y = np.asarray(labels)
    p = np.asarray(probs)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(
            f"labels and probabilities must be 1-D of equal length, got {y.shape}, {p.shape}"
        )
    if y.dtype != np.bool_:
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be boolean or 0/1")
        y = y.astype(np.bool_)
    eps = float(np.finfo(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64).eps)
    p = p.astype(np.float64)
    if p.size and not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return y, p, eps


def _row_log_loss(y: np.ndarray, p: np.ndarray, eps: float) -> np.ndarray:
    clipped = np.clip(p, eps, 1.0 - eps)
    # One log per row, of the probability given to what happened.
    return -np.log(np.where(y, clipped, 1.0 - clipped))


def _tied_groups(y: np.ndarray, p: np.ndarray) -> ReliabilityBins:
    values, index = np.unique(p, return_inverse=True)
    return _totals(index, y, p, values.size)


def roc_auc(labels, scores) -> float:
    """ROC AUC (ties count one half); NaN when only one class is present."""
    y, p, _ = _check(labels, scores)
    return _auc(_tied_groups(y, p))


def brier(labels, probs) -> float:
    """Brier score: mean squared difference of probability and 0/1 outcome."""
    y, p, _ = _check(labels, probs)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def log_loss(labels, probs) -> float:
    """Mean negative log-likelihood, probabilities clipped to the dtype's machine epsilon."""
    y, p, eps = _check(labels, probs)
    return float(np.mean(_row_log_loss(y, p, eps))) if p.size else float("nan")


def reliability_bins(
    labels, probs, bins: int = ECE_BINS, strategy: str = "width"
) -> ReliabilityBins:
    """Reliability-diagram bins (count, mean_predicted, observed_rate) by width or by mass."""
    y, p, _ = _check(labels, probs)
    if strategy == "width":
        return _totals(_width_index(p, bins), y, p, bins)
    if strategy == "mass":
        return _mass_bins(_tied_groups(y, p), bins)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def ece(labels, probs, bins: int = ECE_BINS, strategy: str = "width") -> float:
    """Expected calibration error over equal-width or equal-mass bins (see module docstring)."""
    return reliability_bins(labels, probs, bins, strategy).ece()


def summary(labels, probs) -> dict[str, float | int]:
    """Every figure the model card and the calibration table carry, for one score."""
    y, p, eps = _check(labels, probs)
    groups = _tied_groups(y, p)
    return {
        "rows": int(y.size),
        "positives": int(y.sum()),
        "mean_score": float(p.mean()) if p.size else float("nan"),
        "roc_auc": _auc(groups),
        "brier": float(np.mean((p - y) ** 2)) if p.size else float("nan"),
        "log_loss": float(np.mean(_row_log_loss(y, p, eps))) if p.size else float("nan"),
        "ece_width": _totals(_width_index(p, ECE_BINS), y, p, ECE_BINS).ece(),
        "ece_mass": _mass_bins(groups, ECE_BINS).ece(),
    }


# --------------------------------------------------------------------------------------------
# Mergeable state
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreHistogram:
    """One score over the rows a state has seen: fine histogram plus exact loss sums."""

    fine: ReliabilityBins
    sum_squared_error: float
    sum_log_loss: float

    @classmethod
    def empty(cls) -> ScoreHistogram:
        zeros = np.zeros(FINE_BINS, dtype=np.int64)
        return cls(ReliabilityBins(zeros, zeros, np.zeros(FINE_BINS)), 0.0, 0.0)

    @classmethod
    def from_arrays(cls, labels, probs) -> ScoreHistogram:
        """Histogram of non-null labels and probabilities (see `CalibrationState` for nulls)."""
        y, p, eps = _check(labels, probs)  # p as float64, eps of the scores' own type
        return _histograms(y, _checked_scores(p, eps))[0]

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        return ScoreHistogram(
            ReliabilityBins(
                self.fine.count + other.fine.count,
                self.fine.positives + other.fine.positives,
                self.fine.sum_predicted + other.fine.sum_predicted,
            ),
            self.sum_squared_error + other.sum_squared_error,
            self.sum_log_loss + other.sum_log_loss,
        )

    @property
    def rows(self) -> int:
        return int(self.fine.count.sum())

    @property
    def positives(self) -> int:
        return int(self.fine.positives.sum())

    def reliability_bins(self, strategy: str = "width") -> ReliabilityBins:
        """The 15 reliability bins; exact by width, approximate by mass (see bounds)."""
        if strategy == "width":
            # Fine bins nest in the coarse ones, so summing runs of them is exact.
            return ReliabilityBins(
                *(
                    a.reshape(ECE_BINS, -1).sum(axis=1)
                    for a in (self.fine.count, self.fine.positives, self.fine.sum_predicted)
                )
            )
        if strategy == "mass":
            return _mass_bins(self.fine, ECE_BINS)
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")

    def summary(self) -> dict[str, float | int]:
        """The figures of `summary`, from the histogram."""
        rows = self.rows
        return {
            "rows": rows,
            "positives": self.positives,
            "mean_score": _per_row(float(self.fine.sum_predicted.sum()), rows),
            "roc_auc": _auc(self.fine),
            "brier": _per_row(self.sum_squared_error, rows),
            "log_loss": _per_row(self.sum_log_loss, rows),
            "ece_width": self.reliability_bins("width").ece(),
            "ece_mass": self.reliability_bins("mass").ece(),
        }

    def approximation_bounds(self) -> dict[str, float]:
        """Upper bounds of |histogram figure - exact figure| for ROC AUC and equal-mass ECE.

        AUC: only pairs of a positive and a negative in the same fine bin can be miscounted, and
        each by at most one half: bound = sum_j pos_j * neg_j / (2 * P * N_neg).

        Equal-mass ECE: a fine bin is put wholly in one mass bin, so only the rows of a fine bin
        that holds a mass edge (at most 14 fine bins) can land in the wrong bin. N * ECE is the
        sum over bins of |sum (p - y)|, and moving a row changes two of those terms by at most
        |p - y| each. In fine bin [lo, hi) that is at most 1 - lo for a positive and hi for a
        negative: bound = 2 / N * sum over edge-holding bins of (pos (1 - lo) + neg hi).
        """
        count, positives = self.fine.count, self.fine.positives
        negatives = count - positives
        total_pos, total_neg, rows = int(positives.sum()), int(negatives.sum()), int(count.sum())
        auc = (
            float(positives.astype(np.float64) @ negatives) / (2 * total_pos * total_neg)
            if total_pos and total_neg
            else float("nan")
        )
        if rows == 0:
            return {"roc_auc": auc, "ece_mass": float("nan")}
        end = np.cumsum(count)  # one past the last rank of each fine bin
        edges = (np.arange(1, ECE_BINS) * (rows - 1)) // ECE_BINS
        holder = np.searchsorted(end, edges, side="right")  # fine bin holding rank q_k
        split = np.unique(holder[edges + 1 < end[holder]])  # ranks q_k and q_k + 1 share it
        low, high = split / FINE_BINS, (split + 1) / FINE_BINS
        gap = positives[split] * (1.0 - low) + negatives[split] * high
        return {"roc_auc": auc, "ece_mass": 2.0 * float(gap.sum()) / rows}

    def __reduce__(self):
        # Ship only the non-empty fine bins: a shard's state pickles to kilobytes, not 700 kB.
        used = np.flatnonzero(self.fine.count)
        fine = self.fine
        return (
            _histogram_from_sparse,
            (
                used,
                fine.count[used],
                fine.positives[used],
                fine.sum_predicted[used],
                self.sum_squared_error,
                self.sum_log_loss,
            ),
        )


# Rows per product in the log-loss sum: a probability clipped to [eps, 1 - eps] is >= 2**-52,
# so a product of 16 of them stays >= 2**-832, far from float64's subnormals.
_LOG_BLOCK = 16
# Longer inputs are histogrammed in pieces of this many rows and merged: it bounds the scratch
# arrays (36 bytes a row: 9.4 MB per thread) and keeps the label-weighted counts exact.
_PIECE_ROWS = 2**18
# Rows weigh _ROW + y in the count bincount: a bin's total is _ROW * count + positives, an
# integer < 2**38 (exact in float64) that splits into both as positives <= rows < _ROW.
_ROW_BIT = _PIECE_ROWS.bit_length()
_ROW = 1 << _ROW_BIT


class _Scratch:
    """Work arrays for `_histogram`, reused from batch to batch by one thread.

    Fresh arrays of a batch's size come from mmap (or a trimmed heap) and cost a page fault per
    4 kB on first touch: ~1,200 faults per 131,072-row batch, about a third of the time when
    every temporary was new. They are per thread (`_scratch`), so calls on different threads
    never share one; no result refers to them.
    """

    def __init__(self, rows: int):
        self.rows = rows
        self.weight = np.empty(rows)
        self.probability = np.empty(rows)
        self.index32 = np.empty(rows, np.int32)
        self.index = np.empty(rows, np.intp)
        # Padded to whole `_LOG_BLOCK`-row blocks for the log-loss product.
        self.work = np.empty(_LOG_BLOCK * -(-rows // _LOG_BLOCK))


_thread = threading.local()


def _scratch(rows: int) -> _Scratch:
    scratch = getattr(_thread, "scratch", None)
    if scratch is None or scratch.rows < rows:
        scratch = _thread.scratch = _Scratch(rows)
    return scratch


class _Labels:
    """At most `_PIECE_ROWS` bool labels, and what the histogram of every score needs of them."""

    def __init__(self, y: np.ndarray):
        self.rows = y.size
        self.scratch = _scratch(y.size)
        self.positive, self.negative = y, ~y
        self.weight = np.add(y, float(_ROW), out=self.scratch.weight[: y.size])  # see _ROW


class _Scores(NamedTuple):
    """Scores checked to lie in [0, 1] (no NaN), with what `_histogram` needs besides."""

    values: np.ndarray
    eps: float  # the log-loss clip (see the module docstring)
    low: float  # min and max of `values`; 1.0 and 0.0 when empty
    high: float


def _histograms(y: np.ndarray, *scores: _Scores) -> list[ScoreHistogram]:
    """The histogram of each of `scores` against the bool labels `y`, sharing the label work."""
    histograms: list[ScoreHistogram] = []
    for start in range(0, max(y.size, 1), _PIECE_ROWS):
        rows = slice(start, start + _PIECE_ROWS)
        labels = _Labels(y[rows])
        piece = [_histogram(labels, s._replace(values=s.values[rows])) for s in scores]
        histograms = list(map(ScoreHistogram.merge, histograms, piece)) if histograms else piece
    return histograms


def _histogram(labels: _Labels, scores: _Scores) -> ScoreHistogram:
    """The histogram of one piece: two bincounts and a few passes, all into scratch arrays.

    Measured per 1M rows (131,072-row batches, a 2-core VM): a weighted bincount ~3.5 ms, an
    unweighted one ~5 ms, another pass ~0.5-1 ms. Hence one weighted bincount for both counts
    (see `_ROW`) and one for the sum of predictions. No per-row log: the log loss is summed as
    the logs of products of `_LOG_BLOCK` rows (relative error ~1e-15; a float64 log costs
    ~10 ns per row, more than everything else here together).
    """
    rows, scratch = labels.rows, labels.scratch
    p = scores.values
    if p.dtype != np.float64:
        p = scratch.probability[:rows]
        np.copyto(p, scores.values)
    # p >= 0, so truncation is floor(p * FINE_BINS): exactly `_width_index` (see FINE_BINS).
    # Through int32: NumPy converts float64 to int32 with SIMD but to int64 per element.
    index32 = np.multiply(p, FINE_BINS, out=scratch.index32[:rows], casting="unsafe")
    if scores.high >= 1.0:  # only p = 1.0 lands past the last bin
        np.minimum(index32, FINE_BINS - 1, out=index32)
    # bincount wants intp: given int32 it converts into a fresh array, page faults again.
    index = scratch.index[:rows]
    np.copyto(index, index32)
    totals = np.bincount(index, weights=labels.weight, minlength=FINE_BINS).astype(np.int64)
    count, positives = totals >> _ROW_BIT, totals & (_ROW - 1)
    sum_predicted = np.bincount(index, weights=p, minlength=FINE_BINS)

    work = scratch.work[: _LOG_BLOCK * -(-rows // _LOG_BLOCK)]
    error = np.subtract(p, labels.positive, out=work[:rows])
    sum_squared_error = float(np.square(error, out=error).sum())  # no BLAS dot: its threads
    # cost milliseconds on a busy machine.
    eps = scores.eps
    clipped = p
    if scores.low < eps or scores.high > 1.0 - eps:  # else clipping changes nothing
        clipped = np.clip(p, eps, 1.0 - eps, out=work[:rows])
    # The probability given to what happened up to its sign: c for a positive, c - 1 = -(1 - c)
    # exactly for a negative; the product's magnitude ignores signs.
    np.subtract(clipped, labels.negative, out=work[:rows])
    work[rows:] = 1.0  # the padding multiplies by one
    blocks = np.abs(work.reshape(_LOG_BLOCK, -1).prod(axis=0))
    return ScoreHistogram(
        fine=ReliabilityBins(count, positives, sum_predicted),
        sum_squared_error=sum_squared_error,
        sum_log_loss=-float(np.log(blocks).sum()),
    )


def _per_row(total: float, rows: int) -> float:
    return total / rows if rows else float("nan")


def _histogram_from_sparse(used, count, positives, sum_predicted, sse, sll) -> ScoreHistogram:
    def dense(values, dtype):
        out = np.zeros(FINE_BINS, dtype=dtype)
        out[used] = values
        return out

    fine = ReliabilityBins(
        dense(count, np.int64), dense(positives, np.int64), dense(sum_predicted, np.float64)
    )
    return ScoreHistogram(fine, sse, sll)


@dataclass(frozen=True)
class CalibrationState:
    """Mergeable calibration figures of raw and calibrated scores over a set of rows.

    ``CalibrationState()`` is the state of no rows, the identity of `merge`. Rows are used when the label and both scores are present. A row with a null score (invalid
    input) is counted in ``null_score_rows``; else a row with a null label in
    ``null_label_rows``. NaN counts as null.
    """

    raw: ScoreHistogram = field(default_factory=ScoreHistogram.empty)
    calibrated: ScoreHistogram = field(default_factory=ScoreHistogram.empty)
    null_score_rows: int = 0
    null_label_rows: int = 0

    @classmethod
    def from_arrays(cls, labels, raw, calibrated) -> CalibrationState:
        """State of one batch; each argument a NumPy array, an Arrow Array or ChunkedArray."""
        y, y_valid = _values_and_validity(labels)
        p_raw, raw_valid = _values_and_validity(raw)
        p_cal, cal_valid = _values_and_validity(calibrated)
        if not y.size == p_raw.size == p_cal.size:
            raise ValueError(
                f"labels and scores differ in length: {y.size}, {p_raw.size}, {p_cal.size}"
            )
        scored = _both(raw_valid, cal_valid)
        used = _both(scored, y_valid)
        rows = y.size
        null_score_rows = 0 if scored is None else rows - int(np.count_nonzero(scored))
        rows_used = rows if used is None else int(np.count_nonzero(used))
        if used is not None:  # only batches with invalid rows or missing labels copy
            y, p_raw, p_cal = y[used], p_raw[used], p_cal[used]
        raw, calibrated = _histograms(
            _boolean_labels(y), _checked_scores(p_raw), _checked_scores(p_cal)
        )
        return cls(
            raw=raw,
            calibrated=calibrated,
            null_score_rows=null_score_rows,
            null_label_rows=rows - null_score_rows - rows_used,
        )

    def merge(self, other: CalibrationState) -> CalibrationState:
        """The state of both sets of rows; associative and commutative (up to float sums)."""
        return CalibrationState(
            self.raw.merge(other.raw),
            self.calibrated.merge(other.calibrated),
            self.null_score_rows + other.null_score_rows,
            self.null_label_rows + other.null_label_rows,
        )

    @property
    def rows(self) -> int:
        return self.raw.rows

    @property
    def positives(self) -> int:
        return self.raw.positives


def _values_and_validity(values) -> tuple[np.ndarray, np.ndarray | None]:
    """NumPy values and validity (None: all valid) of an Arrow or NumPy column; NaN is null.

    Null-free columns (the common case) are read zero-copy, and a float column is scanned for
    NaN by one reduction (min propagates NaN) before any mask is built.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if not isinstance(values, pa.Array):
        array = np.asarray(values)
        if array.dtype.kind in "biuf":
            return array, _not_nan(array, None)
        values = pa.array(array, from_pandas=True)  # objects: None -> null (imports pandas)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    valid = None
    if values.null_count:
        valid = to_numpy(values.is_valid())
        # 0 or False; a Python value would import pandas. The filler also keeps null slots'
        # undefined buffer contents out of the range checks.
        values = values.fill_null(fill_scalar(0, values.type))
    array = to_numpy(values)
    return array, _not_nan(array, valid)


def _not_nan(array: np.ndarray, valid: np.ndarray | None) -> np.ndarray | None:
    if array.dtype.kind != "f" or not array.size or not np.isnan(array.min()):
        return valid
    return ~np.isnan(array) if valid is None else valid & ~np.isnan(array)


def _both(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return b if a is None else a
    return a & b


def _boolean_labels(y: np.ndarray) -> np.ndarray:
    if y.dtype == np.bool_:
        return y
    if y.dtype.kind in "iu":
        # Read as unsigned (same width and byte order) a negative label is huge, so one max
        # checks the range: np.isin took 16 ms per 1M rows.
        valid = y.view(y.dtype.str.replace("i", "u")).max(initial=0) <= 1
    else:
        valid = np.isin(y, (0, 1)).all()
    if not valid:
        raise ValueError("labels must be boolean or 0/1")
    return y.astype(np.bool_)


def _checked_scores(p: np.ndarray, eps: float | None = None) -> _Scores:
    """Non-null scores with their log-loss epsilon (default: that of their type) and range; as
    `_check`, refuses values outside [0, 1]."""
    if eps is None:
        eps = float(np.finfo(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64).eps)
    low, high = float(p.min(initial=1.0)), float(p.max(initial=0.0))
    # NaN is already excluded as null, so the range check also refuses infinities.
    if not (low >= 0 and high <= 1):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return _Scores(p, eps, low, high)


# --------------------------------------------------------------------------------------------
# The calibration table (docs/output.md)
# --------------------------------------------------------------------------------------------

_SCORES = ("raw", "calibrated")
_FIGURES = ("roc_auc", "brier", "log_loss", "ece_width", "ece_mass")


def calibration_schema(partition_key: str = DATE_KEY) -> pa.Schema:
    """Schema of OUTPUT/calibration/run_id=<RUN_ID>/*.parquet.

    One row per input partition (``scope = 'partition'``, the partition value in
    ``partition_key``; null for rows from files outside any partition folder) and one row over
    everything (``scope = 'overall'``, ``partition_key`` null). Figures are per score,
    suffixed ``_raw`` / ``_calibrated``, and null where undefined (AUC with one class, an empty
    bin). ``bin_*`` lists are the 15 equal-width reliability bins, element k for
    [k/15, (k+1)/15), the last closed at 1.
    """
    per_score = (
        [("mean", pa.float64())]
        + [(name, pa.float64()) for name in _FIGURES]
        + [
            ("bin_count", pa.list_(pa.int64())),
            ("bin_mean_predicted", pa.list_(pa.float64())),
            ("bin_observed_rate", pa.list_(pa.float64())),
        ]
    )
    return pa.schema(
        [
            ("run_id", RUN_ID_TYPE),  # the type pyarrow gives the run_id= folders
            ("scope", pa.string()),
            (partition_key, pa.string()),
            ("rows", pa.int64()),
            ("positives", pa.int64()),
            ("observed_rate", pa.float64()),
            ("rows_null_score", pa.int64()),
            ("rows_null_label", pa.int64()),
        ]
        + [(f"{name}_{score}", dtype) for name, dtype in per_score for score in _SCORES]
    )


def calibration_table(
    run_id: str, states: dict[str | None, CalibrationState], partition_key: str = DATE_KEY
) -> pa.Table:
    """One row per partition (sorted, the None partition last) and one overall row."""
    keys = sorted(states, key=lambda k: (k is None, "" if k is None else str(k)))
    overall = functools.reduce(CalibrationState.merge, states.values(), CalibrationState())
    records = [_record(run_id, "partition", key, states[key], partition_key) for key in keys]
    records.append(_record(run_id, "overall", None, overall, partition_key))
    return table_from_rows(records, calibration_schema(partition_key))


def _record(run_id, scope, key, state: CalibrationState, partition_key: str) -> dict:
    record = {
        "run_id": run_id,
        "scope": scope,
        partition_key: None if key is None else str(key),
        "rows": state.rows,
        "positives": state.positives,
        "observed_rate": _or_none(state.positives / state.rows if state.rows else float("nan")),
        "rows_null_score": state.null_score_rows,
        "rows_null_label": state.null_label_rows,
    }
    for score in _SCORES:
        histogram: ScoreHistogram = getattr(state, score)
        figures = histogram.summary()
        bins = histogram.reliability_bins("width")
        record[f"mean_{score}"] = _or_none(figures["mean_score"])
        record.update({f"{name}_{score}": _or_none(figures[name]) for name in _FIGURES})
        record[f"bin_count_{score}"] = bins.count.tolist()
        record[f"bin_mean_predicted_{score}"] = [_or_none(v) for v in bins.mean_predicted]
        record[f"bin_observed_rate_{score}"] = [_or_none(v) for v in bins.observed_rate]
    return record


def _or_none(value: float) -> float | None:
    """NaN (undefined) becomes null in Parquet, which every query engine treats as missing."""
    return None if np.isnan(value) else float(value)
