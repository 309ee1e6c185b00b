"""Batch metrics against scikit-learn and hand-computed cases; the mergeable state against both."""

from __future__ import annotations

import functools
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from scorer import metrics
from scorer.metrics import CalibrationState, ScoreHistogram
from scorer.model.sessions import MEASURES, bundled_sessions_path

FIGURES = (
    "rows",
    "positives",
    "mean_score",
    "roc_auc",
    "brier",
    "log_loss",
    "ece_width",
    "ece_mass",
)


def synthetic(n: int, dtype=np.float64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Skewed scores with outcomes drawn from a slightly miscalibrated truth."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.0, 5.0, n).astype(dtype)
    y = rng.random(n) < np.clip(p * 1.2, 0, 1)
    return y, p


@functools.cache
def bundled_scores() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and float32 raw/"calibrated" scores of a logistic regression on the bundled data."""
    table = pq.read_table(bundled_sessions_path())
    x = np.log1p(np.column_stack([table[c].to_numpy().astype(np.float64) for c in MEASURES]))
    y = table["converted"].to_numpy()
    raw = LogisticRegression(max_iter=1000).fit(x, y).predict_proba(x)[:, 1].astype(np.float32)
    # A deliberately miscalibrated second score, still a probability.
    calibrated = np.sqrt(raw).astype(np.float32)
    return y, raw, calibrated


# --------------------------------------------------------------------------------------------
# batch metrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_metrics_match_sklearn(dtype):
    y, p = synthetic(20_000, dtype)
    p[:2000] = np.round(p[:2000], 3)  # ties, which AUC must count one half
    assert metrics.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    # scikit-learn sums float32 inputs in float32; we sum in float64.
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p), rel=1e-6)
    assert metrics.log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-6)


def test_log_loss_clips_at_the_dtype_epsilon_like_sklearn():
    y = np.array([True, False, True, False])
    for dtype in (np.float32, np.float64):
        p = np.array([0.0, 1.0, 1.0, 0.0], dtype=dtype)
        assert metrics.log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-6)


@pytest.mark.parametrize(
    ("strategy", "sklearn_strategy"), [("width", "uniform"), ("mass", "quantile")]
)
def test_reliability_bins_match_calibration_curve(strategy, sklearn_strategy):
    y, p = synthetic(20_000, np.float32)
    if strategy == "mass":
        p[:3000] = np.round(p[:3000], 2)  # ties straddling quantile edges
    bins = metrics.reliability_bins(y, p, 15, strategy)
    observed, predicted = calibration_curve(y, p, n_bins=15, strategy=sklearn_strategy)
    used = bins.count > 0
    np.testing.assert_allclose(bins.observed_rate[used], observed, rtol=1e-12)
    np.testing.assert_allclose(bins.mean_predicted[used], predicted, rtol=1e-9)
    assert bins.count.sum() == y.size


def test_width_bins_are_left_closed_with_the_last_bin_closed():
    p = np.array([0.0, 0.2, 0.19999, 1.0, 14 / 15])
    bins = metrics.reliability_bins(np.zeros(5, bool), p, 15, "width")
    assert np.flatnonzero(bins.count).tolist() == [0, 2, 3, 14]
    assert bins.count[14] == 2  # 14/15 and 1.0


def test_ece_by_hand_equal_width():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    # bin 0: mean 0.05, rate 0.5, weight 1/2; bin 14: mean 0.95, rate 1, weight 1/2.
    assert metrics.ece(y, p, strategy="width") == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)


def test_ece_by_hand_equal_mass_without_and_with_ties():
    y = np.array([0, 1, 0, 0, 1, 1])
    # N = 6, 3 bins: q = floor(k * 5 / 3) = 1, 3, so ranks {0,1} {2,3} {4,5}.
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    bins = metrics.reliability_bins(y, p, 3, "mass")
    assert bins.count.tolist() == [2, 2, 2]
    expected = (abs(0.15 - 0.5) + abs(0.35 - 0.0) + abs(0.55 - 1.0)) / 3
    assert bins.ece() == pytest.approx(expected)
    # The tie at 0.2 spans ranks 1..3 and lowest rank 1 is not past q_1 = 1: all of it in bin 0.
    p_tied = np.array([0.1, 0.2, 0.2, 0.2, 0.5, 0.6])
    tied = metrics.reliability_bins(y, p_tied, 3, "mass")
    assert tied.count.tolist() == [4, 0, 2]
    assert np.isnan(tied.mean_predicted[1])
    expected = (4 * abs(0.175 - 0.25) + 2 * abs(0.55 - 1.0)) / 6
    assert tied.ece() == pytest.approx(expected)


def test_summary_has_the_card_keys_and_agrees_with_the_single_metrics():
    y, p = synthetic(5000)
    figures = metrics.summary(y, p)
    assert tuple(figures) == FIGURES
    assert figures["rows"] == 5000 and figures["positives"] == int(y.sum())
    assert figures["roc_auc"] == metrics.roc_auc(y, p)
    assert figures["brier"] == metrics.brier(y, p)
    assert figures["log_loss"] == metrics.log_loss(y, p)
    assert figures["ece_width"] == metrics.ece(y, p, strategy="width")
    assert figures["ece_mass"] == metrics.ece(y, p, strategy="mass")


def test_degenerate_inputs_give_nan_not_errors():
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.4]))
    empty = metrics.summary(np.array([], bool), np.array([]))
    assert empty["rows"] == 0 and all(np.isnan(empty[k]) for k in FIGURES[2:])


@pytest.mark.parametrize(
    ("labels", "probs"),
    [([0, 1], [0.1, 1.5]), ([0, 1], [0.1, np.nan]), ([0, 2], [0.1, 0.2]), ([0, 1], [0.1])],
)
def test_invalid_inputs_are_rejected(labels, probs):
    with pytest.raises(ValueError):
        metrics.summary(np.array(labels), np.array(probs))


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="strategy"):
        metrics.ece([0, 1], [0.1, 0.2], strategy="quantile")


# --------------------------------------------------------------------------------------------
# CalibrationState
# --------------------------------------------------------------------------------------------


def assert_same_state(a: CalibrationState, b: CalibrationState) -> None:
    for name in ("raw", "calibrated"):
        x, y = getattr(a, name), getattr(b, name)
        np.testing.assert_array_equal(x.fine.count, y.fine.count)
        np.testing.assert_array_equal(x.fine.positives, y.fine.positives)
        np.testing.assert_allclose(x.fine.sum_predicted, y.fine.sum_predicted, rtol=1e-12)
        assert x.sum_squared_error == pytest.approx(y.sum_squared_error, rel=1e-12)
        assert x.sum_log_loss == pytest.approx(y.sum_log_loss, rel=1e-12)
    assert (a.null_score_rows, a.null_label_rows) == (b.null_score_rows, b.null_label_rows)


def test_merge_of_parts_equals_a_single_pass():
    y, raw, cal = bundled_scores()
    whole = CalibrationState.from_arrays(y, raw, cal)
    cuts = np.array_split(np.random.default_rng(1).permutation(y.size), 7)
    parts = [CalibrationState.from_arrays(y[i], raw[i], cal[i]) for i in cuts]
    merged = functools.reduce(CalibrationState.merge, parts, CalibrationState())
    assert_same_state(merged, whole)
    for name in ("raw", "calibrated"):
        a, b = getattr(merged, name).summary(), getattr(whole, name).summary()
        assert a == pytest.approx(b, rel=1e-12, nan_ok=True)


def test_state_figures_match_batch_metrics_within_the_documented_bounds():
    y, raw, cal = bundled_scores()
    state = CalibrationState.from_arrays(y, raw, cal)
    for name, scores in (("raw", raw), ("calibrated", cal)):
        histogram: ScoreHistogram = getattr(state, name)
        approx, exact = histogram.summary(), metrics.summary(y, scores)
        bounds = histogram.approximation_bounds()
        # Exact up to float summation order:
        for key in ("rows", "positives", "mean_score", "brier", "log_loss", "ece_width"):
            assert approx[key] == pytest.approx(exact[key], rel=1e-9), key
        assert abs(approx["roc_auc"] - exact["roc_auc"]) <= bounds["roc_auc"]
        assert abs(approx["ece_mass"] - exact["ece_mass"]) <= bounds["ece_mass"]
        # ... and the bounds are small on 12k real rows.
        assert bounds["roc_auc"] < 1e-3 and bounds["ece_mass"] < 5e-3
        width = histogram.reliability_bins("width")
        batch = metrics.reliability_bins(y, scores, strategy="width")
        np.testing.assert_array_equal(width.count, batch.count)
        np.testing.assert_array_equal(width.positives, batch.positives)


def test_bounds_hold_under_heavy_ties():
    y, p = synthetic(30_000, np.float32, seed=3)
    p = (np.round(p * 40) / 40).astype(np.float32)  # 41 distinct scores
    histogram = ScoreHistogram.from_arrays(y, p)
    approx, exact = histogram.summary(), metrics.summary(y, p)
    bounds = histogram.approximation_bounds()
    assert abs(approx["roc_auc"] - exact["roc_auc"]) <= bounds["roc_auc"] + 1e-12
    assert abs(approx["ece_mass"] - exact["ece_mass"]) <= bounds["ece_mass"] + 1e-12


def test_nulls_are_excluded_and_counted():
    labels = pa.array([True, False, None, True, False])
    raw = pa.array([0.9, None, 0.4, 0.7, 0.2], pa.float32())
    calibrated = pa.chunked_array(
        [pa.array([0.8, None, 0.5], pa.float32()), pa.array([0.6, 0.1], pa.float32())]
    )
    state = CalibrationState.from_arrays(labels, raw, calibrated)
    assert (state.rows, state.positives) == (3, 2)
    assert (state.null_score_rows, state.null_label_rows) == (1, 1)
    keep = np.array([0, 3, 4])
    expected = metrics.summary(np.array([1, 1, 0]), pc.take(raw, pa.array(keep)).to_numpy())
    assert state.raw.summary() == pytest.approx(expected, rel=1e-9)


def test_numpy_nan_counts_as_a_null_score():
    state = CalibrationState.from_arrays(
        np.array([True, False]), np.array([0.3, np.nan]), np.array([0.3, 0.1])
    )
    assert (state.rows, state.null_score_rows) == (1, 1)


def test_state_pickles_small_and_round_trips():
    y, raw, cal = bundled_scores()
    small = CalibrationState.from_arrays(y[:500], raw[:500], cal[:500])
    blob = pickle.dumps(small)
    assert len(blob) < 40_000  # only non-empty fine bins travel
    assert_same_state(pickle.loads(blob), small)
    empty = pickle.loads(pickle.dumps(CalibrationState()))
    assert empty.rows == 0 and np.isnan(empty.raw.summary()["roc_auc"])


def reference_histogram(y: np.ndarray, p: np.ndarray) -> tuple:
    """ScoreHistogram's figures the plain way: np.floor bins, separate bincounts, a log per row."""
    y = y.astype(bool)
    eps = np.finfo(p.dtype).eps
    p = p.astype(np.float64)
    size = metrics.FINE_BINS
    index = np.minimum(np.floor(p * size), size - 1).astype(np.intp)
    clipped = np.clip(p, eps, 1 - eps)
    return (
        np.bincount(index, minlength=size),
        np.bincount(index[y], minlength=size),
        np.bincount(index, weights=p, minlength=size),
        float(np.sum((p - y) ** 2)),
        float(-np.sum(np.log(np.where(y, clipped, 1 - clipped)))),
    )


def assert_matches_reference(histogram: ScoreHistogram, y: np.ndarray, p: np.ndarray) -> None:
    count, positives, sum_predicted, sse, sll = reference_histogram(y, p)
    np.testing.assert_array_equal(histogram.fine.count, count)
    np.testing.assert_array_equal(histogram.fine.positives, positives)
    assert histogram.fine.count.dtype == histogram.fine.positives.dtype == np.int64
    np.testing.assert_allclose(histogram.fine.sum_predicted, sum_predicted, rtol=1e-12)
    assert histogram.sum_squared_error == pytest.approx(sse, rel=1e-12)
    assert histogram.sum_log_loss == pytest.approx(sll, rel=1e-12)


def edgy_scores(n: int, dtype, rng: np.random.Generator) -> np.ndarray:
    """Beta scores mixed with 0, 1, the clip limits and fine-bin edges with their neighbours."""
    p = rng.beta(0.7, 3.0, n).astype(dtype)
    one = dtype(1)
    edges = np.array([k / metrics.FINE_BINS for k in (1, 2047, 2048, 15360, 28672, 30719)], dtype)
    special = np.concatenate(
        [
            np.array([0, one, np.finfo(dtype).eps, one - np.finfo(dtype).eps], dtype),
            edges,
            np.nextafter(edges, dtype(0)),
            np.nextafter(edges, one),
            np.nextafter(np.array([one], dtype), dtype(0)),
        ]
    )
    at = rng.random(n) < 0.2
    p[at] = rng.choice(special, int(at.sum()))
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("piece_rows", [None, 1000])
def test_state_matches_a_plain_reference(dtype, piece_rows, monkeypatch):
    if piece_rows:  # long inputs are histogrammed in pieces and merged
        monkeypatch.setattr(metrics, "_PIECE_ROWS", piece_rows)
    rng = np.random.default_rng(7)
    n = 20_000
    y = rng.random(n) < 0.3
    raw, cal = edgy_scores(n, dtype, rng), edgy_scores(n, dtype, rng)
    cal[:50] = 1.0  # the top fine bin is closed at 1
    # Nulls and NaN in the Arrow input: the reference sees only the complete rows.
    raw_null = rng.random(n) < 0.02
    cal[rng.random(n) < 0.02] = np.nan
    label_null = rng.random(n) < 0.02
    state = CalibrationState.from_arrays(
        pa.array(y.astype(np.int64), mask=label_null),
        pa.array(raw, mask=raw_null),
        pa.array(cal),
    )
    scored = ~raw_null & ~np.isnan(cal)
    used = scored & ~label_null
    null_rows = (n - scored.sum(), (scored & label_null).sum())
    assert (state.null_score_rows, state.null_label_rows) == null_rows
    assert_matches_reference(state.raw, y[used], raw[used])
    assert_matches_reference(state.calibrated, y[used], cal[used])
    assert_matches_reference(ScoreHistogram.from_arrays(y, raw), y, raw)


def test_integer_labels_outside_0_1_are_rejected():
    scores = np.array([0.1, 0.2])
    for labels in (np.array([0, 2]), np.array([-1, 1], np.int8), pa.array([0, 256], pa.int16())):
        with pytest.raises(ValueError, match="labels"):
            CalibrationState.from_arrays(labels, scores, scores)
    assert CalibrationState.from_arrays(np.array([0, 1], np.uint8), scores, scores).positives == 1


def test_states_built_concurrently_equal_those_built_alone():
    # Each thread has its own scratch arrays: interleaved calls must not see each other's rows.
    rng = np.random.default_rng(11)
    jobs = []
    for n in (1_000, 70_000, 131_072, 5_000, 40_000, 131_072):
        y = rng.random(n) < 0.2
        jobs.append((y, rng.random(n).astype(np.float32), rng.beta(1, 4, n).astype(np.float32)))
    alone = [CalibrationState.from_arrays(*job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: CalibrationState.from_arrays(*job), jobs * 4))
    for state, expected in zip(together, alone * 4):
        for name in ("raw", "calibrated"):
            a, b = getattr(state, name), getattr(expected, name)
            np.testing.assert_array_equal(a.fine.count, b.fine.count)
            np.testing.assert_array_equal(a.fine.positives, b.fine.positives)
            np.testing.assert_array_equal(a.fine.sum_predicted, b.fine.sum_predicted)
            assert (a.sum_squared_error, a.sum_log_loss) == (b.sum_squared_error, b.sum_log_loss)
