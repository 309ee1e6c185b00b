"""The model graph agrees with numpy (raw score) and scikit-learn (every calibrator).

Calibration is checked on the logit itself: a graph whose only input is one boolean column
with weight 1 and intercept 0 has z = that column exactly, so any float32 logit, adversarial
ones included, can be fed to the calibration stage.
"""

from __future__ import annotations

import functools
import json
import warnings

import numpy as np
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

from scorer.model.calibration import FewCalibrationRowsWarning, fit_calibrator, reference_predict
from scorer.model.card import CALIBRATION_METHODS
from scorer.model.graph import CalibratorParams, LinearParams, build_graph
from scorer.model.interface import session_options

METHODS = CALIBRATION_METHODS
FLOAT32_MAX = float(np.finfo(np.float32).max)

PASSTHROUGH = LinearParams(
    numeric_mean=[],
    numeric_scale=[],
    numeric_coef=[],
    boolean_coef=[1.0],
    categorical_coef=(),
    intercept=0.0,
)


def _session(linear: LinearParams, calibrator: CalibratorParams) -> onnxruntime.InferenceSession:
    model = build_graph(linear, calibrator, name="test", version="0")
    return onnxruntime.InferenceSession(
        model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )


def _score_logits(session: onnxruntime.InferenceSession, logits) -> tuple[np.ndarray, np.ndarray]:
    raw, calibrated = session.run(None, {"boolean": np.asarray(logits, np.float32)[None, :]})
    return raw, calibrated


def _calibration_split(seed: int = 0, rows: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Logits like a class-weighted model's, float32-representable so that inputs can sit
    exactly on isotonic thresholds, a quarter of them rounded to create ties."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.8, 2.0, rows)
    logits[: rows // 4] = np.round(logits[: rows // 4] * 4) / 4
    logits = logits.astype(np.float32).astype(np.float64)
    labels = rng.uniform(size=rows) < expit(0.7 * logits - 1.6)
    return logits, labels


@functools.cache
def _fitted(method: str) -> CalibratorParams:
    return fit_calibrator(method, *_calibration_split())


@functools.cache
def _calibrated_session(method: str) -> onnxruntime.InferenceSession:
    return _session(PASSTHROUGH, _fitted(method))


def _adversarial_logits(params: CalibratorParams) -> np.ndarray:
    rng = np.random.default_rng(1)
    logits = [
        rng.normal(0.8, 3.0, 20_000),
        [0.0, -0.0, 1e-30, -1e-30, 1e3, -1e3, 1e30, -1e30, FLOAT32_MAX, -FLOAT32_MAX],
    ]
    if params.method == "isotonic":
        x = params.x.astype(np.float32)
        logits += [
            x,  # exactly on every threshold
            np.nextafter(x, np.float32(np.inf)),
            np.nextafter(x, np.float32(-np.inf)),
            (x[:-1] + x[1:]) / 2,
            [x[0] - 1, x[-1] + 1],  # outside the fitted range
        ]
    return np.concatenate([np.asarray(part, np.float32) for part in logits])


@pytest.mark.parametrize("method", METHODS)
def test_calibrated_matches_sklearn(method):
    params = _fitted(method)
    logits = _adversarial_logits(params)
    _, calibrated = _score_logits(_calibrated_session(method), logits)
    expected = reference_predict(params, logits.astype(np.float64))
    np.testing.assert_allclose(calibrated, expected, rtol=0, atol=1e-5)


def test_isotonic_is_exact_on_adversarial_logits():
    params = _fitted("isotonic")
    assert np.all(params.x == params.x.astype(np.float32)), "thresholds must be float32 inputs"
    logits = _adversarial_logits(params)
    _, calibrated = _score_logits(_calibrated_session("isotonic"), logits)
    expected = reference_predict(params, logits.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(calibrated, expected)


def test_isotonic_with_500_clustered_knots_is_exact():
    # Clusters of adjacent float32 values crowd several thresholds into one grid cell, which
    # forces the binary search to take several steps.
    rng = np.random.default_rng(2)
    x = set(rng.normal(0.0, 3.0, 400).astype(np.float32).tolist())
    for centre in rng.normal(0.0, 1.0, 20).astype(np.float32):
        x.update(np.nextafter(centre, np.float32(np.inf)) + np.arange(5) * np.spacing(centre))
    x = np.array(sorted(x), np.float64)[:500]
    params = CalibratorParams("isotonic", x=x, y=np.sort(rng.uniform(0.0, 1.0, len(x))))
    assert params.knots == 500
    x32 = x.astype(np.float32)
    logits = np.concatenate(
        [
            x32,
            np.nextafter(x32, np.float32(np.inf)),
            np.nextafter(x32, np.float32(-np.inf)),
            rng.uniform(x32[0] - 1, x32[-1] + 1, 200_000).astype(np.float32),
            np.float32([-FLOAT32_MAX, FLOAT32_MAX, -1e20, 1e20]),
        ]
    )
    _, calibrated = _score_logits(_session(PASSTHROUGH, params), logits)
    expected = reference_predict(params, logits.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(calibrated, expected)


@pytest.mark.parametrize("cluster", [2, 4, 7, 30, 100])
def test_isotonic_exact_with_many_knots_in_one_cell(cluster):
    # Adjacent float32 values all fall in one grid cell: the search takes several levels.
    start = np.float32(0.37)
    crowded = start + np.arange(cluster, dtype=np.float32) * np.spacing(start)
    x = np.concatenate([[-4.0, -1.0], crowded, [2.0, 5.0]]).astype(np.float64)
    y = np.linspace(0.05, 0.95, len(x)) ** 2
    params = CalibratorParams("isotonic", x=x, y=y)
    x32 = x.astype(np.float32)
    logits = np.concatenate(
        [
            x32,
            np.nextafter(x32, np.float32(np.inf)),
            np.nextafter(x32, np.float32(-np.inf)),
            np.linspace(-6, 6, 10_001, dtype=np.float32),
        ]
    )
    _, calibrated = _score_logits(_session(PASSTHROUGH, params), logits)
    expected = reference_predict(params, logits.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(calibrated, expected)


def test_isotonic_single_knot_predicts_its_value_everywhere():
    params = fit_calibrator("isotonic", np.full(1500, 0.25), np.arange(1500) % 3 == 0)
    assert params.knots == 1
    logits = np.float32([-FLOAT32_MAX, -3.0, 0.25, 7.0, FLOAT32_MAX])
    _, calibrated = _score_logits(_session(PASSTHROUGH, params), logits)
    expected = reference_predict(params, logits.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(calibrated, expected)


def test_isotonic_non_finite_logit_gives_nan_not_an_error():
    logits = [np.nan, np.inf, -np.inf, 0.5]
    _, calibrated = _score_logits(_calibrated_session("isotonic"), logits)
    assert np.isnan(calibrated[:3]).all() and np.isfinite(calibrated[3])


@pytest.mark.parametrize(
    ("ours", "sklearns"),
    [
        ("platt", "sigmoid"),
        ("temperature", "temperature"),
        ("isotonic", "isotonic"),
    ],
)
def test_fit_matches_calibrated_classifier_cv(ours, sklearns):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(6000, 4))
    labels = rng.uniform(size=6000) < expit(features @ [1.0, -2.0, 0.5, 0.0] - 1.5)
    model = LogisticRegression(class_weight="balanced").fit(features[:3000], labels[:3000])
    calibration = features[3000:], labels[3000:]
    expected = CalibratedClassifierCV(FrozenEstimator(model), method=sklearns).fit(*calibration)
    params = fit_calibrator(ours, model.decision_function(calibration[0]), calibration[1])
    probe = rng.normal(size=(5000, 4)) * 3
    np.testing.assert_array_equal(
        reference_predict(params, model.decision_function(probe)),
        expected.predict_proba(probe)[:, 1],
    )


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    logits=st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=2, max_size=300),
)
def test_calibrated_is_monotone_in_raw(method, logits):
    raw, calibrated = _score_logits(_calibrated_session(method), np.sort(np.float32(logits)))
    assert np.all(np.diff(raw) >= 0)
    assert np.all(np.diff(calibrated) >= 0)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), knots=st.integers(1, 40))
def test_isotonic_exact_for_any_knots(data, knots):
    finite = st.floats(-50, 50, allow_nan=False, width=32)
    x = np.array(sorted(data.draw(st.sets(finite, min_size=knots, max_size=knots))))
    y = np.sort(data.draw(st.lists(st.floats(0, 1), min_size=knots, max_size=knots)))
    params = CalibratorParams("isotonic", x=x, y=y)
    logits = np.concatenate(
        [
            np.float32(x),
            np.float32(data.draw(st.lists(finite, min_size=1, max_size=50))),
        ]
    )
    _, calibrated = _score_logits(_session(PASSTHROUGH, params), logits)
    expected = reference_predict(params, logits.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(calibrated, expected)


def _random_linear(rng, n_numeric, n_boolean, vocabularies) -> LinearParams:
    return LinearParams(
        numeric_mean=rng.uniform(0, 6, n_numeric),
        numeric_scale=rng.uniform(0.3, 3, n_numeric),
        numeric_coef=rng.normal(0, 1, n_numeric),
        boolean_coef=rng.normal(0, 1, n_boolean),
        categorical_coef=tuple(np.append(rng.normal(0, 1, size), 0.0) for size in vocabularies),
        intercept=rng.normal(),
    )


def _random_feed(rng, linear: LinearParams, rows: int) -> dict[str, np.ndarray]:
    feed = {}
    if len(linear.numeric_coef):
        values = rng.exponential(
            rng.uniform(0.01, 500, (len(linear.numeric_coef), 1)), (len(linear.numeric_coef), rows)
        )
        values[:, :3] = 0.0
        feed["numeric"] = values.astype(np.float32)
    if len(linear.boolean_coef):
        feed["boolean"] = rng.integers(0, 2, (len(linear.boolean_coef), rows)).astype(np.float32)
    if linear.categorical_coef:
        # Indices up to len(vocabulary) inclusive: the last one is the unseen value.
        # Whole-number float32, as the graph takes them (see scorer.model.graph).
        feed["categorical"] = np.stack(
            [rng.integers(0, len(coef), rows) for coef in linear.categorical_coef]
        ).astype(np.float32)
    return feed


@pytest.mark.parametrize(
    ("n_numeric", "n_boolean", "vocabularies"),
    [
        (10, 1, (12, 8, 13, 9, 20, 3)),
        (3, 0, ()),
        (0, 2, (5,)),
        (0, 0, (200, 150, 3, 2)),  # too big for one joint table: several lookup groups
        (1, 0, (1,)),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_raw_matches_numpy_sigmoid_of_the_logit(n_numeric, n_boolean, vocabularies, seed):
    rng = np.random.default_rng(seed)
    linear = _random_linear(rng, n_numeric, n_boolean, vocabularies)
    feed = _random_feed(rng, linear, 5000)
    session = _session(linear, CalibratorParams("none"))
    assert sorted(i.name for i in session.get_inputs()) == sorted(feed)
    raw, calibrated = session.run(None, feed)
    np.testing.assert_allclose(raw, expit(linear.logit(**feed)), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(calibrated, raw)


def test_unseen_categorical_value_has_weight_zero():
    rng = np.random.default_rng(4)
    linear = _random_linear(rng, 0, 0, (4, 6))
    session = _session(linear, CalibratorParams("none"))
    raw, _ = session.run(None, {"categorical": np.array([[4], [6]], np.float32)})
    np.testing.assert_allclose(raw, expit([linear.intercept]), rtol=0, atol=1e-7)


def test_raw_is_bit_identical_whatever_the_calibrator():
    rng = np.random.default_rng(5)
    linear = _random_linear(rng, 10, 1, (12, 8, 13, 9, 20, 3))
    feed = _random_feed(rng, linear, 20_000)
    raws = [_session(linear, _fitted(method)).run(None, feed)[0] for method in METHODS]
    for raw in raws[1:]:
        np.testing.assert_array_equal(raw, raws[0])


@pytest.mark.parametrize("method", METHODS)
def test_params_round_trip_through_json_exactly(method):
    linear = _random_linear(np.random.default_rng(6), 4, 1, (3, 5))
    calibrator = _fitted(method)
    linear_back = LinearParams.from_json(json.loads(json.dumps(linear.to_json())))
    calibrator_back = CalibratorParams.from_json(json.loads(json.dumps(calibrator.to_json())))
    assert linear_back.to_json() == linear.to_json()
    assert calibrator_back.to_json() == calibrator.to_json()
    original = build_graph(linear, calibrator, name="m", version="1").SerializeToString()
    rebuilt = build_graph(linear_back, calibrator_back, name="m", version="1").SerializeToString()
    assert rebuilt == original


def test_isotonic_on_few_rows_recommends_platt():
    logits, labels = _calibration_split(rows=400)
    with pytest.warns(FewCalibrationRowsWarning, match="Platt"):
        fit_calibrator("isotonic", logits, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_calibrator("isotonic", *_calibration_split(rows=1000))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "plat"}, "unknown calibration method"),
        ({"method": "platt", "a": 1.0}, "needs field 'b'"),
        ({"method": "none", "beta": 1.0}, "takes no field 'beta'"),
        ({"method": "isotonic", "x": [1.0, 1.0], "y": [0.1, 0.2]}, "strictly increasing"),
        ({"method": "isotonic", "x": [1.0, 2.0], "y": [0.3, 0.2]}, "non-decreasing"),
    ],
)
def test_invalid_calibrator_params_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CalibratorParams(**kwargs)
