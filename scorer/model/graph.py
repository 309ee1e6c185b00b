"""The ONNX graph of an intent model: preprocessing, logistic model and calibration in one file.

Inputs put rows on the LAST axis: onnxruntime runs an elementwise op on a [1, N] tensor about
50 times faster than on [N, 1], so every per-row tensor here is [1, N] (or [k, N]) until the
final reshape to [N].

    numeric      float32 [n_numeric, N]      raw values; the graph takes log1p and standardises
    boolean      float32 [n_boolean, N]      0/1
    categorical  float32 [n_categorical, N]  index into that input's vocabulary,
                                             len(vocabulary) for an unseen value (weight 0)

Categorical indices are whole numbers in float32 (exact below 2**24): the lookup starts with a
float Gemm, and an int64 feed cost a Cast of every value (6.5 of 84 ms per 1M rows) plus twice
the feed's memory. Graphs of earlier scorer releases take int64 indices; `scorer.model.runtime` feeds
either, as the graph declares.

An input kind with no columns is left out. Outputs, float32 [N], probabilities:

    intent_raw          sigmoid(z), z = the logistic model's logit (decision_function)
    intent_calibrated   the calibrator applied to z

The raw subgraph is built by the same code whatever the calibrator, so recalibrating a model
leaves `intent_raw` bit-identical. The calibrators follow scikit-learn's
`CalibratedClassifierCV` for a binary classifier (see `scorer.model.calibration`); isotonic is the
exact piecewise-linear interpolation of `IsotonicRegression.predict`, computed in float64 on
the float32 logit; its segment is found through a 2**16-cell grid and a short branchless
search, a few table lookups per row whatever the number of knots.

Precision: the logit is computed in float32, within ~1e-6 of scikit-learn's float64
decision_function. Everything after the logit is exact (isotonic bit for bit), but a steep
isotonic segment multiplies that 1e-6 by its slope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from scorer.model.card import CALIBRATION_METHODS
from scorer.model.interface import (
    BOOLEAN_INPUT,
    CALIBRATED_OUTPUT,
    CATEGORICAL_INPUT,
    NUMERIC_INPUT,
    RAW_OUTPUT,
    ROWS,
)

OPSET = 21
ML_OPSET = 3
IR_VERSION = 10


def _float64_vector(values: Any, what: str) -> NDArray[np.float64]:
    array = np.array(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} has non-finite values")
    array.flags.writeable = False
    return array


# eq=False: the fields are arrays, whose == is elementwise; compare to_json() instead.
@dataclass(frozen=True, eq=False)
class LinearParams:
    """A fitted logistic model in the graph's terms (log1p + StandardScaler + one-hot + LR)."""

    numeric_mean: NDArray[np.float64]  # mean of log1p(x): StandardScaler.mean_ after log1p
    numeric_scale: NDArray[np.float64]  # StandardScaler.scale_
    numeric_coef: NDArray[np.float64]
    boolean_coef: NDArray[np.float64]  # booleans enter as 0/1, unscaled
    # One array per categorical input, len(vocabulary) + 1 long; the last entry, 0.0, is the
    # weight of an unseen value (the all-zero one-hot row).
    categorical_coef: tuple[NDArray[np.float64], ...]
    intercept: float

    def __post_init__(self) -> None:
        for name in ("numeric_mean", "numeric_scale", "numeric_coef", "boolean_coef"):
            object.__setattr__(self, name, _float64_vector(getattr(self, name), name))
        object.__setattr__(
            self,
            "categorical_coef",
            tuple(
                _float64_vector(coef, f"categorical_coef[{i}]")
                for i, coef in enumerate(self.categorical_coef)
            ),
        )
        object.__setattr__(self, "intercept", float(self.intercept))
        n = len(self.numeric_coef)
        if len(self.numeric_mean) != n or len(self.numeric_scale) != n:
            raise ValueError("numeric_mean, numeric_scale and numeric_coef differ in length")
        if np.any(self.numeric_scale <= 0):
            raise ValueError("numeric_scale must be positive")
        for i, coef in enumerate(self.categorical_coef):
            if len(coef) < 1 or coef[-1] != 0.0:
                raise ValueError(f"categorical_coef[{i}] must end with 0.0, the unseen value")
        if not math.isfinite(self.intercept):
            raise ValueError("intercept is not finite")

    def logit(
        self,
        numeric: NDArray[np.float32] | None = None,
        boolean: NDArray[np.float32] | None = None,
        categorical: NDArray[np.float32] | NDArray[np.int64] | None = None,
    ) -> NDArray[np.float64]:
        """The logit z in float64 for a feed of the graph's layout (rows on the last axis)."""
        z: NDArray[np.float64] = np.asarray(self.intercept, np.float64)
        if len(self.numeric_coef):
            log1p = np.log1p(np.asarray(_fed(numeric, NUMERIC_INPUT), np.float64))
            scaled = (log1p - self.numeric_mean[:, None]) / self.numeric_scale[:, None]
            z = z + self.numeric_coef @ scaled
        if len(self.boolean_coef):
            z = z + self.boolean_coef @ np.asarray(_fed(boolean, BOOLEAN_INPUT), np.float64)
        if self.categorical_coef:
            indices = _fed(categorical, CATEGORICAL_INPUT)
            for coef, index in zip(self.categorical_coef, indices, strict=False):
                z = z + coef[np.asarray(index, np.intp)]  # whole-number float32 or int64 feed
        return z

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; Python floats serialise by repr, so float64 round-trips exactly."""
        return {
            "numeric_mean": self.numeric_mean.tolist(),
            "numeric_scale": self.numeric_scale.tolist(),
            "numeric_coef": self.numeric_coef.tolist(),
            "boolean_coef": self.boolean_coef.tolist(),
            "categorical_coef": [coef.tolist() for coef in self.categorical_coef],
            "intercept": self.intercept,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinearParams:
        return cls(
            numeric_mean=data["numeric_mean"],
            numeric_scale=data["numeric_scale"],
            numeric_coef=data["numeric_coef"],
            boolean_coef=data["boolean_coef"],
            categorical_coef=tuple(data["categorical_coef"]),
            intercept=data["intercept"],
        )


def _fed(array: NDArray[Any] | None, kind: str) -> NDArray[Any]:
    if array is None:
        raise ValueError(f"the model has {kind} inputs, but no {kind!r} feed was given")
    return array


@dataclass(frozen=True, eq=False)
class CalibratorParams:
    """A fitted calibrator of the logit z, with scikit-learn's conventions (binary case).

    - ``none``: p = sigmoid(z).
    - ``platt``: ``_SigmoidCalibration``: p = 1 / (1 + exp(a·z + b)) (note the sign).
    - ``temperature``: ``_TemperatureScaling`` with ``beta`` its ``beta_`` (inverse
      temperature); binary logits become (−z, z), so p = softmax(beta·(−z, z))[1] =
      sigmoid(2·beta·z).
    - ``isotonic``: ``IsotonicRegression(out_of_bounds="clip")`` with ``x``/``y`` its
      ``X_thresholds_``/``y_thresholds_``: clip z to [x[0], x[-1]], interpolate linearly.
    """

    method: str
    a: float | None = None
    b: float | None = None
    beta: float | None = None
    x: NDArray[np.float64] | None = None
    y: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(
                f"unknown calibration method {self.method!r}; "
                f"expected one of {', '.join(CALIBRATION_METHODS)}"
            )
        wanted = _CALIBRATOR_FIELDS[self.method]
        for name in ("a", "b", "beta", "x", "y"):
            value = getattr(self, name)
            if (value is not None) != (name in wanted):
                state = "needs" if name in wanted else "takes no"
                raise ValueError(f"calibration method {self.method!r} {state} field {name!r}")
        for name in ("a", "b", "beta"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))
                if not math.isfinite(float(value)):
                    raise ValueError(f"calibration parameter {name} is not finite")
        if self.method == "isotonic":
            x = _float64_vector(self.x, "isotonic x")
            y = _float64_vector(self.y, "isotonic y")
            if len(x) == 0 or len(x) != len(y):
                raise ValueError("isotonic x and y must be non-empty and of equal length")
            # IsotonicRegression de-duplicates X, and the grid search relies on it.
            if np.any(np.diff(x) <= 0):
                raise ValueError("isotonic x must be strictly increasing")
            if np.any(np.diff(y) < 0):
                raise ValueError("isotonic y must be non-decreasing")
            object.__setattr__(self, "x", x)
            object.__setattr__(self, "y", y)

    @property
    def knots(self) -> int:
        """Number of isotonic thresholds (0 for the parametric methods)."""
        return 0 if self.x is None else len(self.x)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with only the method's fields; float64 round-trips exactly."""
        data: dict[str, Any] = {"method": self.method}
        for name in _CALIBRATOR_FIELDS[self.method]:
            value = getattr(self, name)
            data[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CalibratorParams:
        return cls(**data)


_CALIBRATOR_FIELDS: dict[str, tuple[str, ...]] = {
    "none": (),
    "platt": ("a", "b"),
    "temperature": ("beta",),
    "isotonic": ("x", "y"),
}


class _GraphBuilder:
    """Accumulates nodes and constants, naming every intermediate uniquely."""

    def __init__(self, prefix: str = "") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._prefix = (
            prefix  # keeps the names apart from a foreign graph's (`scorer.model.foreign`)
        )

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{self._prefix}{stem}_{self._count}"

    def const(self, value: Any, dtype: Any, stem: str = "c") -> str:
        name = self._name(stem)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        output = out or self._name(op_type.lower())
        domain = "ai.onnx.ml" if op_type == "ArrayFeatureExtractor" else ""
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=output, domain=domain, **attrs)
        )
        return output

    def lookup(self, table: np.ndarray, index: str, dtype: Any, stem: str) -> str:
        """table[index] for an int64 index tensor; ArrayFeatureExtractor is ~5x faster than
        Gather here. The output has shape [1, index.size]."""
        return self.op("ArrayFeatureExtractor", self.const(table[None, :], dtype, stem), index)


def _input(name: str, dtype: int, columns: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, [columns, ROWS])


def _raw_logit(g: _GraphBuilder, linear: LinearParams) -> tuple[str, list[onnx.ValueInfoProto]]:
    """The logit z, float32 [1, N], and the graph inputs it reads."""
    inputs = []
    terms = []
    intercept = linear.intercept

    n_numeric = len(linear.numeric_coef)
    if n_numeric:
        inputs.append(_input(NUMERIC_INPUT, TensorProto.FLOAT, n_numeric))
        # Σ coef·(log1p(x) − mean)/scale = Σ (coef/scale)·log(1 + x) − Σ (coef/scale)·mean: the
        # constant part joins the intercept, leaving one elementwise Add and one Log per value
        # (the Log is most of the model's cost). Centring before the Log was measured to buy
        # no accuracy: float32 rounding of 1 + x and of the Log's result dominate either way.
        weight = linear.numeric_coef / linear.numeric_scale
        intercept -= float(weight @ linear.numeric_mean)
        plus_one = g.op("Add", NUMERIC_INPUT, g.const(1.0, np.float32, "one"))
        log1p = g.op("Log", plus_one)
        terms.append(g.op("MatMul", g.const(weight[None, :], np.float32, "numeric_w"), log1p))

    n_boolean = len(linear.boolean_coef)
    if n_boolean:
        inputs.append(_input(BOOLEAN_INPUT, TensorProto.FLOAT, n_boolean))
        boolean_w = g.const(linear.boolean_coef[None, :], np.float32, "boolean_w")
        terms.append(g.op("MatMul", boolean_w, BOOLEAN_INPUT))

    n_categorical = len(linear.categorical_coef)
    if n_categorical:
        inputs.append(_input(CATEGORICAL_INPUT, TensorProto.FLOAT, n_categorical))
        terms.append(_categorical_logit(g, linear.categorical_coef))

    logit = g.const(np.float32(intercept).reshape(1, 1), np.float32, "intercept")
    for term in terms:
        logit = g.op("Add", logit, term)
    return logit, inputs


# Categorical inputs are looked up in groups whose joint table (every combination of their
# values, weights summed) stays small enough to be cache-resident.
_MAX_GROUP_TABLE = 1 << 14


def _categorical_logit(g: _GraphBuilder, coefs: tuple[np.ndarray, ...]) -> str:
    """Σ coef_c[index_c], float32 [1, N], with as few table lookups as possible.

    Lookups cost per element, so the inputs are packed into groups: a group's row index is
    the mixed-radix number of its inputs' indices, computed for all groups by one Gemm in
    float32 (exact: integers far below 2**24), with each group's offset in the concatenated
    table as the Gemm's bias. One ArrayFeatureExtractor then fetches every group's summed
    weight; six inputs of 4–21 values take two lookups per row instead of six.
    """
    groups: list[list[int]] = [[]]
    size = 1
    for i, coef in enumerate(coefs):
        if groups[-1] and size * len(coef) > _MAX_GROUP_TABLE:
            groups.append([])
            size = 1
        groups[-1].append(i)
        size *= len(coef)

    radix = np.zeros((len(groups), len(coefs)))
    offsets = np.zeros((len(groups), 1))
    tables: list[NDArray[np.float64]] = []
    for row, members in enumerate(groups):
        offsets[row, 0] = sum(len(table) for table in tables)
        table = np.zeros(1)
        for i in members:
            # Row-major: the last member varies fastest.
            radix[row, members[: members.index(i)]] *= len(coefs[i])
            radix[row, i] = 1
            table = (table[:, None] + coefs[i][None, :]).reshape(-1)
        tables.append(table)

    packed = g.op(
        "Gemm",
        g.const(radix, np.float32, "radix"),
        CATEGORICAL_INPUT,
        g.const(offsets, np.float32, "group_offsets"),
    )
    index = g.op("Cast", packed, to=TensorProto.INT64)
    weights = g.lookup(np.concatenate(tables), index, np.float32, "categorical_w")
    if len(groups) == 1:
        return weights
    per_group = g.op("Reshape", weights, g.const([len(groups), -1], np.int64, "shape"))
    return g.op("MatMul", g.const(np.ones((1, len(groups))), np.float32, "ones"), per_group)


# The isotonic grid: every uint16 is a cell. Its base table is int64, 512 KiB, cache-resident.
_CELLS = 1 << 16


def _isotonic(g: _GraphBuilder, logit: str, x: np.ndarray, y: np.ndarray) -> str:
    """IsotonicRegression(out_of_bounds="clip").predict of the logit, float64 [1, N], exact.

    scikit-learn fits on float64 logits, so its thresholds are float64 and scipy's interp1d
    delegates to numpy.interp: after clipping z to [x[0], x[-1]], with j the last threshold
    <= z, p = slope[j]·(z − x[j]) + y[j], slope[j] = (y[j+1] − y[j]) / (x[j+1] − x[j]), and
    p = y[-1] at z = x[-1]. The graph does the same float64 arithmetic in the same order, so
    it matches bit for bit; what it needs is count = #{x <= z} (j = count − 1). Instead of
    clipping, the tables indexed by count get a slope of 0 at both ends: count = 0 (z below
    the range) gives y[0] and count = k (z at or above x[-1]) gives y[-1], as clipping would.

    Finding count: z is mapped to one of 2**16 cells by QuantizeLinear (round(z / s) + zero
    point, saturating, to uint16), a non-decreasing function of z. With s a power of two the
    division is exact, so the map is fixed by IEEE arithmetic alone and `_cells` computes the
    thresholds' cells identically. Then every threshold in an earlier cell is below z and
    every one in a later cell above it: count is base[cell] (thresholds in earlier cells) plus
    how many of the few thresholds in z's own cell are <= z, found by a branchless k-ary
    search (`_search_shape`). Any uint16 is a valid cell, so even a NaN logit cannot index
    out of bounds: a non-finite logit (impossible from finite inputs) gives NaN, not an error.
    """
    k = len(x)
    if k == 1:
        # A single knot: IsotonicRegression predicts y[0] everywhere.
        return g.op("Expand", g.const(y[0], np.float64, "iso_y"), g.op("Shape", logit))

    scale, zero_point = _quantization(x)
    cell = g.op(
        "Cast",
        g.op(
            "QuantizeLinear",
            logit,
            g.const(scale, np.float32, "iso_scale"),
            g.const(zero_point, np.uint16, "iso_zero_point"),
        ),
        to=TensorProto.INT64,
    )
    per_cell = np.bincount(_cells(x, scale, zero_point), minlength=_CELLS)
    count = g.lookup(np.cumsum(per_cell) - per_cell, cell, np.int64, "iso_base")

    # x <= z for a float32 z exactly when x rounded up to float32 is <= z: the search can
    # stay in float32.
    x_up = x.astype(np.float32)
    x_up[x_up < x] = np.nextafter(x_up[x_up < x], np.float32(np.inf))
    branching, levels = _search_shape(int(per_cell.max()))
    # Padding past the last threshold is NaN, not +inf: NaN <= z is false even for z = +inf,
    # so count never runs past k and off the tables.
    probes = np.concatenate([x_up, np.full(branching**levels, np.nan, np.float32)])
    for level in reversed(range(levels)):
        stride = branching**level
        # Row r of the table holds probes[count + (r + 1)·stride − 1] at column count, so one
        # lookup fetches all of a level's probes as a [branching − 1, N] tensor.
        table = np.stack([probes[(r + 1) * stride - 1 :][: k + 1] for r in range(branching - 1)])
        probe = g.op("ArrayFeatureExtractor", g.const(table, np.float32, "iso_probe"), count)
        hits = g.op("LessOrEqual", probe, logit)
        if branching == 2 and stride == 1:
            step = g.op("Cast", hits, to=TensorProto.INT64)
        else:
            # The hits are a prefix (thresholds ascend); their number times the stride is
            # the step. A float32 MatMul sums them exactly and applies the stride for free.
            strides = g.const(np.full((1, branching - 1), stride), np.float32, "iso_stride")
            summed = g.op("MatMul", strides, g.op("Cast", hits, to=TensorProto.FLOAT))
            step = g.op("Cast", summed, to=TensorProto.INT64)
        count = g.op("Add", count, step)

    # Tables indexed by count = j + 1, with the flat ends described above.
    slope = np.concatenate([[0.0], np.diff(y) / np.diff(x), [0.0]])
    x_j = g.lookup(np.concatenate([x[:1], x]), count, np.float64, "iso_x")
    y_j = g.lookup(np.concatenate([y[:1], y]), count, np.float64, "iso_y")
    slope_j = g.lookup(slope, count, np.float64, "iso_slope")
    z = g.op("Cast", logit, to=TensorProto.DOUBLE)
    return g.op("Add", g.op("Mul", slope_j, g.op("Sub", z, x_j)), y_j)


def _search_shape(most_per_cell: int) -> tuple[int, int]:
    """Branching factor and levels of the search among the thresholds sharing one cell.

    A level compares the logit with branching − 1 probes at once; costs measured here per 1M
    rows: about 4 ms per level plus 2.8 ms per probe. The search must tell apart
    most_per_cell + 1 outcomes: branching**levels > most_per_cell.
    """
    if most_per_cell == 0:
        return 2, 0
    shapes = []
    for levels in range(1, most_per_cell.bit_length() + 1):
        branching = 2
        while branching**levels <= most_per_cell:
            branching += 1
        shapes.append((levels * (4.0 + 2.8 * (branching - 1)), branching, levels))
    _, branching, levels = min(shapes)
    return branching, levels


def _quantization(x: np.ndarray) -> tuple[float, int]:
    """The finest power-of-two scale, and a zero point, that fit [x[0], x[-1]] into uint16.

    The scale stays within 2**±100 so that neither it nor its reciprocal is subnormal in
    float32: onnxruntime may divide by it or multiply by its reciprocal, exact either way.
    """
    exponent = max(-100, math.ceil(math.log2(max(x[-1] - x[0], 2.0**-100) / (_CELLS - 1))))
    while True:
        scale = 2.0**exponent
        zero_point = int(np.clip(-np.rint(x[0] / scale), 0, _CELLS - 1))
        if np.rint(x[-1] / scale) + zero_point <= _CELLS - 1 or exponent >= 100:
            return scale, zero_point
        exponent += 1


def _cells(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """QuantizeLinear to uint16 of `values` rounded to float32, as onnxruntime computes it."""
    with np.errstate(over="ignore"):
        quotient = values.astype(np.float32) / np.float32(scale)
    return np.clip(np.rint(quotient) + zero_point, 0, _CELLS - 1).astype(np.int64)


def _calibrated(g: _GraphBuilder, logit: str, raw: str, calibrator: CalibratorParams) -> str:
    """The calibrated probability, float32 [1, N]."""
    if calibrator.method == "none":
        return g.op("Identity", raw)
    # Platt and temperature run in float64 and round once at the end: onnxruntime's float32
    # Sigmoid is a vectorised approximation that can step down by one ulp between neighbouring
    # inputs, and a calibrated score must never decrease as the raw score grows. [1, N] float64
    # elementwise ops cost a few ms per million rows.
    # CalibratorParams guarantees each method its fields; the asserts tell the type checker.
    if calibrator.method == "platt":
        assert calibrator.a is not None and calibrator.b is not None
        # sigmoid(−(a·z + b)) = 1 / (1 + exp(a·z + b)).
        z = g.op("Cast", logit, to=TensorProto.DOUBLE)
        slope = g.const(-calibrator.a, np.float64, "platt_a")
        offset = g.const(-calibrator.b, np.float64, "platt_b")
        scaled = g.op("Add", g.op("Mul", z, slope), offset)
        return g.op("Cast", g.op("Sigmoid", scaled), to=TensorProto.FLOAT)
    if calibrator.method == "temperature":
        assert calibrator.beta is not None
        # softmax(beta·(−z, z))[1] = sigmoid(2·beta·z).
        z = g.op("Cast", logit, to=TensorProto.DOUBLE)
        scaled = g.op("Mul", z, g.const(2.0 * calibrator.beta, np.float64, "temperature"))
        return g.op("Cast", g.op("Sigmoid", scaled), to=TensorProto.FLOAT)
    assert calibrator.x is not None and calibrator.y is not None
    return g.op("Cast", _isotonic(g, logit, calibrator.x, calibrator.y), to=TensorProto.FLOAT)


def calibration_stage(
    logit: str, raw: str, calibrator: CalibratorParams, *, prefix: str, out: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and constants that turn the logit and raw score, float32 [1, N] tensors of
    another graph, into `out`, float32 [N]: the same calibration stage as `build_graph`'s, its
    names starting with `prefix` (`scorer.model.foreign` appends it to imported graphs)."""
    g = _GraphBuilder(prefix)
    calibrated = _calibrated(g, logit, raw, calibrator)
    g.op("Reshape", calibrated, g.const([-1], np.int64, "flat"), out=out)
    return g.nodes, g.initializers


def build_graph(
    linear: LinearParams, calibrator: CalibratorParams, *, name: str, version: str
) -> onnx.ModelProto:
    """The model's ONNX graph: inputs and outputs as the module docstring says."""
    g = _GraphBuilder()
    logit, inputs = _raw_logit(g, linear)
    raw = g.op("Sigmoid", logit)
    calibrated = _calibrated(g, logit, raw, calibrator)
    flat = g.const([-1], np.int64, "flat")
    g.op("Reshape", raw, flat, out=RAW_OUTPUT)
    g.op("Reshape", calibrated, flat, out=CALIBRATED_OUTPUT)
    outputs = [
        helper.make_tensor_value_info(RAW_OUTPUT, TensorProto.FLOAT, [ROWS]),
        helper.make_tensor_value_info(CALIBRATED_OUTPUT, TensorProto.FLOAT, [ROWS]),
    ]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    model = helper.make_model(
        graph,
        producer_name="intent-scorer",
        doc_string=f"{name} {version}: calibration {calibrator.method}",
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model, {"name": name, "version": version, "calibration": calibrator.method}
    )
    onnx.checker.check_model(model, full_check=True)
    return model
