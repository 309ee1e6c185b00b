"""Fitting the calibration stage, exactly as scikit-learn's `CalibratedClassifierCV` would.

For a binary classifier, `CalibratedClassifierCV(FrozenEstimator(clf), method=...)` fits one
calibrator on `clf.decision_function`, the logit z, of the calibration rows:

    "sigmoid"      _SigmoidCalibration        (our "platt")
    "temperature"  _TemperatureScaling        (binary z becomes the logits (−z, z))
    "isotonic"     IsotonicRegression(out_of_bounds="clip")

`fit_calibrator` makes the same calls on the same inputs, so its parameters are those the
scikit-learn class would hold; `reference_predict` rebuilds the scikit-learn objects from the
parameters and predicts with them, the oracle the ONNX graph is checked against.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit  # type: ignore[import-untyped]  # scipy ships no type stubs

# Private classes, but exactly the ones CalibratedClassifierCV fits (scikit-learn is pinned to
# 1.9.x); re-implementing them would make parity a matter of luck.
from sklearn.calibration import _SigmoidCalibration, _TemperatureScaling
from sklearn.isotonic import IsotonicRegression

from scorer.errors import TrainingDataError
from scorer.model.card import CALIBRATION_METHODS
from scorer.model.graph import CalibratorParams

# Below this many calibration rows an isotonic fit follows the noise of too few points.
MIN_ISOTONIC_ROWS = 1000


class FewCalibrationRowsWarning(UserWarning):
    """Isotonic calibration fitted on fewer rows than it needs to be reliable."""


def fit_calibrator(method: str, logits: ArrayLike, labels: ArrayLike) -> CalibratorParams:
    """Fit `method` on the calibration split's logits (decision_function) and 0/1 labels."""
    if method not in CALIBRATION_METHODS:
        expected = ", ".join(CALIBRATION_METHODS)
        raise ValueError(f"unknown calibration method {method!r}; expected one of {expected}")
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(logits) != len(labels):
        raise TrainingDataError(f"{len(logits)} logits but {len(labels)} labels")
    if not np.all(np.isfinite(logits)):
        raise TrainingDataError("calibration logits are not all finite")
    if not np.isin(labels, (0, 1)).all():
        raise TrainingDataError("calibration labels must be 0/1")
    # CalibratedClassifierCV fits on the label-binarised target: 0/1 integers.
    labels = labels.astype(np.int64)
    if method == "none":
        return CalibratorParams("none")
    if len(np.unique(labels)) < 2:
        raise TrainingDataError(
            f"calibration rows hold only one class ({int(labels[0])}); cannot fit {method!r}"
        )
    if method == "platt":
        sigmoid = _SigmoidCalibration().fit(logits, labels)
        return CalibratorParams("platt", a=sigmoid.a_, b=sigmoid.b_)
    if method == "temperature":
        temperature = _TemperatureScaling().fit(logits, labels)
        return CalibratorParams("temperature", beta=float(temperature.beta_))
    if len(logits) < MIN_ISOTONIC_ROWS:
        warnings.warn(
            f"isotonic calibration fitted on {len(logits)} rows (fewer than "
            f"{MIN_ISOTONIC_ROWS}) follows noise; Platt scaling is more reliable here",
            FewCalibrationRowsWarning,
            stacklevel=2,
        )
    isotonic = IsotonicRegression(out_of_bounds="clip").fit(logits, labels)
    return CalibratorParams("isotonic", x=isotonic.X_thresholds_, y=isotonic.y_thresholds_)


def reference_predict(params: CalibratorParams, logits: ArrayLike) -> NDArray[np.float64]:
    """The calibrated probability of each logit, float64, computed by scikit-learn itself."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if params.method == "none":
        return expit(logits)
    if params.method == "platt":
        sigmoid = _SigmoidCalibration()
        sigmoid.a_, sigmoid.b_ = params.a, params.b
        return sigmoid.predict(logits)
    if params.method == "temperature":
        temperature = _TemperatureScaling()
        temperature.beta_ = np.float64(params.beta)
        return temperature.predict(logits)[:, 1]
    assert params.x is not None and params.y is not None  # CalibratorParams checks it
    # The state a fitted IsotonicRegression unpickles from: __setstate__ rebuilds its
    # interpolation function from the thresholds.
    isotonic = IsotonicRegression(out_of_bounds="clip")
    isotonic.__setstate__(
        {
            **isotonic.__getstate__(),
            "increasing_": True,
            "X_min_": params.x[0],
            "X_max_": params.x[-1],
            "X_thresholds_": params.x,
            "y_thresholds_": params.y,
        }
    )
    return isotonic.predict(logits)
