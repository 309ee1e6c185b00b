"""The model card: `model.json` beside `model.onnx` (docs/model.md).

The card is the scorer's only description of a model: which columns it reads (in status-precedence
order), their valid ranges and vocabularies, the calibration, the training data, the holdout
metrics, and the fitted parameters from which `calibrate` rebuilds the graph. It is plain JSON,
so a model directory can be reviewed in a pull request and loaded without pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scorer.errors import ChecksumError, ModelError
from scorer.model.reference import Reference, reference_from_json, reference_to_json
from scorer.storage import foreign_errors

CARD_FILE = "model.json"
GRAPH_FILE = "model.onnx"

DTYPES = ("int", "float", "string", "bool")
KINDS = ("numeric", "categorical", "boolean")
# The calibration stages a card can name, in the order every listing shows them (CLI choices,
# error messages); `scorer.model.graph` builds each, `scorer.model.calibration` fits each.
CALIBRATION_METHODS = ("isotonic", "platt", "temperature", "none")

# What a new model directory gets unless told otherwise; `train`, `recalibrate` and the CLI's help
# read these. They live here rather than in `scorer.model.train` so that the CLI can show them
# without importing scikit-learn and onnxruntime (seconds of start-up for `scorer --help`).
BUNDLED_MODEL = "intent-v1"  # models/<BUNDLED_MODEL>, the model used when none is named
DEFAULT_CALIBRATION = "isotonic"
DEFAULT_VERSION = "1.0.0"
DEFAULT_SEED = 0  # of the stratified splits of the labelled sessions


@dataclass(frozen=True)
class InputSpec:
    """One input column: its type, how the graph consumes it, and which values are valid."""

    name: str
    dtype: str  # "int" | "float" | "string" | "bool"
    kind: str  # "numeric" | "categorical" | "boolean"
    min: float | None = None  # inclusive; None = unbounded
    max: float | None = None
    vocabulary: tuple[str, ...] | tuple[int, ...] | None = None  # categoricals only


@dataclass(frozen=True)
class OutputSpec:
    """One graph output."""

    name: str
    dtype: str
    description: str


@dataclass(frozen=True)
class Calibration:
    """The calibration stage: method, what it was fitted on, and its parameters (for rebuilds)."""

    method: str
    fitted_rows: int
    fitted_positives: int
    knots: int
    fitted_on: str
    params: dict[str, Any]  # CalibratorParams.to_json()


@dataclass(frozen=True)
class Training:
    """What the linear model was fitted on and how."""

    data: str
    rows: int
    positives: int
    seed: int
    splits: dict[str, int]  # split name -> rows
    class_weight: str
    estimator: str


@dataclass(frozen=True)
class Holdout:
    """Metrics on rows neither the model nor the calibrator saw; `raw`/`calibrated` per metric."""

    evaluated_on: str
    rows: int
    positives: int
    raw: dict[str, float]
    calibrated: dict[str, float]


@dataclass(frozen=True)
class HistoryEntry:
    """One change to the model directory, newest last."""

    version: str
    created: str
    change: str


# How an imported graph's inputs are fed (`scorer.model.foreign_feed`) and what its raw output is.
ELEMENT_TYPES = ("float", "double", "int64", "int32", "string")
OUTPUT_KINDS = ("probability", "logit")


@dataclass(frozen=True)
class GraphInput:
    """One input of an imported graph and the session columns it is fed from.

    `shape` is what the graph declares, rows as None: `(None, F)` is one matrix whose columns
    are `columns` in order; `(None, 1)` or `(None,)` is one column.
    """

    name: str
    element_type: str  # one of ELEMENT_TYPES
    shape: tuple[int | None, ...]
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Imported:
    """Where an imported model came from and how its graph is read (`scorer import`)."""

    inputs: tuple[GraphInput, ...]
    output: str  # the foreign output holding the positive-class score
    output_index: int | None  # its column (a [N, 2] tensor or a ZipMap's probabilities)
    output_kind: str  # one of OUTPUT_KINDS
    zipmap: bool  # the output was a ZipMap, cut off at its input tensor
    source: str  # the original file as given
    source_sha256: str
    producer_name: str
    producer_version: str
    flags: dict[str, Any]  # the options of `scorer import` that shaped the graph
    # `--calibration auto`: folds, each candidate's out-of-fold log loss, the choice.
    calibration_search: dict[str, Any]


@dataclass(frozen=True)
class ModelCard:
    """Everything `model.json` says about a model."""

    name: str
    version: str
    sha256: str
    created: str
    inputs: tuple[InputSpec, ...]  # order = status precedence
    outputs: tuple[OutputSpec, ...]
    key_column: str
    label_column: str
    calibration: Calibration
    training: Training
    holdout: Holdout
    linear: dict[str, Any]  # LinearParams.to_json()
    history: tuple[HistoryEntry, ...]
    # The training distribution drift is measured against; cards written before it have none.
    reference: Reference | None = None
    # Set for a graph made elsewhere and brought in by `scorer import` (its `linear` is empty).
    imported: Imported | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "created": self.created,
            "inputs": [_input_to_json(spec) for spec in self.inputs],
            "outputs": [vars(out) for out in self.outputs],
            "key_column": self.key_column,
            "label_column": self.label_column,
            "calibration": vars(self.calibration),
            "training": vars(self.training),
            "metrics": {"holdout": vars(self.holdout)},
            "linear": self.linear,
            "history": [vars(entry) for entry in self.history],
        } | (
            ({} if self.reference is None else {"reference": reference_to_json(self.reference)})
            | ({} if self.imported is None else {"imported": _imported_to_json(self.imported)})
        )


def load_card(model_dir: str | Path) -> ModelCard:
    """Read `model_dir/model.json`; a missing or malformed key is a `ModelError` naming it."""
    return read_card(model_dir)[0]


def read_card(model_dir: str | Path) -> tuple[ModelCard, bytes]:
    """`load_card`, and the bytes the card was parsed from (what a run ships to its workers:
    read once, so that the card shipped is the card whose checksum was verified)."""
    path = Path(model_dir) / CARD_FILE
    try:
        with foreign_errors(
            str(path),
            "unreadable model card",
            error=ModelError,
            foreign=(UnicodeDecodeError, json.JSONDecodeError),
            passes=(FileNotFoundError,),
        ):
            data = path.read_bytes()
            doc = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: no model card (is {model_dir} a model directory?)") from None
    return _card_from_json(_Reader(doc, path, "")), data


def save_card(card: ModelCard, model_dir: str | Path) -> Path:
    """Write `model_dir/model.json` atomically (a reader never sees half a card)."""
    path = Path(model_dir) / CARD_FILE
    text = json.dumps(card.to_json(), indent=2, ensure_ascii=False) + "\n"
    write_atomic(path, text.encode("utf-8"))
    return path


def verify_checksum(model_dir: str | Path, card: ModelCard) -> bytes:
    """Refuse a `model.onnx` whose sha256 differs from the card's; return the verified bytes.

    Loading from the returned bytes (not the path again) means the graph that runs is the one
    that was checked, even if the file is replaced in between.
    """
    path = Path(model_dir) / GRAPH_FILE
    with foreign_errors(str(path), "cannot read the model graph", error=ModelError):
        graph = path.read_bytes()
    actual = hashlib.sha256(graph).hexdigest()
    if actual != card.sha256:
        raise ChecksumError(
            f"{path}: sha256 {actual} does not match {card.sha256} in {Path(model_dir) / CARD_FILE}"
        )
    return graph


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary sibling and rename, so the file is old or new, never partial."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _input_to_json(spec: InputSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": spec.name,
        "dtype": spec.dtype,
        "kind": spec.kind,
        "min": spec.min,
        "max": spec.max,
    }
    if spec.kind == "categorical":
        doc["vocabulary"] = list(spec.vocabulary or ())
    return doc


def _imported_to_json(imported: Imported) -> dict[str, Any]:
    inputs = [
        vars(i) | {"shape": list(i.shape), "columns": list(i.columns)} for i in imported.inputs
    ]
    return vars(imported) | {"inputs": inputs}


def _imported_from_json(r: _Reader) -> Imported:
    inputs = []
    for item in r.items("inputs"):
        element_type = item.get("element_type", str)
        if element_type not in ELEMENT_TYPES:
            raise ModelError(
                f"{r.path}: key {item.prefix}'element_type' must be one of {ELEMENT_TYPES}"
            )
        shape = item.get("shape", list)
        columns = item.get("columns", list)
        if not all(d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in shape):
            raise ModelError(f"{r.path}: key {item.prefix}'shape' must hold integers or null")
        if not columns or not all(isinstance(c, str) for c in columns):
            raise ModelError(f"{r.path}: key {item.prefix}'columns' must name columns")
        inputs.append(GraphInput(item.get("name", str), element_type, tuple(shape), tuple(columns)))
    kind = r.get("output_kind", str)
    if kind not in OUTPUT_KINDS:
        raise ModelError(f"{r.path}: key {r.prefix}'output_kind' must be one of {OUTPUT_KINDS}")
    return Imported(
        inputs=tuple(inputs),
        output=r.get("output", str),
        output_index=r.get("output_index", int, optional=True),
        output_kind=kind,
        zipmap=r.get("zipmap", bool),
        source=r.get("source", str),
        source_sha256=r.get("source_sha256", str),
        producer_name=r.get("producer_name", str),
        producer_version=r.get("producer_version", str),
        flags=r.get("flags", dict),
        calibration_search=r.get("calibration_search", dict),
    )


class _Reader:
    """A JSON object plus where it sits in the card, so every error names the file and key."""

    def __init__(self, doc: Any, path: Path, prefix: str) -> None:
        if not isinstance(doc, dict):
            raise ModelError(f"{path}: {prefix.rstrip('.') or 'the card'} must be a JSON object")
        self.doc, self.path, self.prefix = doc, path, prefix

    def get(self, key: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
        if key not in self.doc:
            if optional:
                return None
            raise ModelError(f"{self.path}: missing key {self.prefix}{key!r}")
        value = self.doc[key]
        if value is None and optional:
            return value
        if isinstance(value, kind) and not _is_bool_for_number(value, kind):
            return value
        raise ModelError(
            f"{self.path}: key {self.prefix}{key!r} has a wrong type ({type(value).__name__})"
        )

    def child(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), self.path, f"{self.prefix}{key}.")

    def items(self, key: str) -> list[_Reader]:
        return [
            _Reader(item, self.path, f"{self.prefix}{key}[{i}].")
            for i, item in enumerate(self.get(key, list))
        ]


def _is_bool_for_number(value: Any, kind: type | tuple[type, ...]) -> bool:
    # JSON true/false must not pass as a count or a bound (bool is an int subclass in Python).
    return isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))


def _input_from_json(r: _Reader) -> InputSpec:
    number = (int, float)
    dtype, kind = r.get("dtype", str), r.get("kind", str)
    if dtype not in DTYPES:
        raise ModelError(f"{r.path}: key {r.prefix}'dtype' must be one of {DTYPES}, not {dtype!r}")
    if kind not in KINDS:
        raise ModelError(f"{r.path}: key {r.prefix}'kind' must be one of {KINDS}, not {kind!r}")
    vocabulary = None
    if kind == "categorical":
        vocabulary = tuple(r.get("vocabulary", list))
        wanted = str if dtype == "string" else int
        if not all(isinstance(v, wanted) and not isinstance(v, bool) for v in vocabulary):
            raise ModelError(f"{r.path}: key {r.prefix}'vocabulary' must hold {dtype} values")
    return InputSpec(
        name=r.get("name", str),
        dtype=dtype,
        kind=kind,
        min=r.get("min", number, optional=True),
        max=r.get("max", number, optional=True),
        vocabulary=vocabulary,
    )


def _card_from_json(r: _Reader) -> ModelCard:
    cal, train = r.child("calibration"), r.child("training")
    holdout = r.child("metrics").child("holdout")
    inputs = tuple(_input_from_json(item) for item in r.items("inputs"))
    reference = None
    if r.doc.get("reference") is not None:
        reference = reference_from_json(r.child("reference"), inputs)
    imported = _imported_from_json(r.child("imported")) if "imported" in r.doc else None
    return ModelCard(
        name=r.get("name", str),
        version=r.get("version", str),
        sha256=r.get("sha256", str),
        created=r.get("created", str),
        inputs=inputs,
        outputs=tuple(
            OutputSpec(o.get("name", str), o.get("dtype", str), o.get("description", str))
            for o in r.items("outputs")
        ),
        key_column=r.get("key_column", str),
        label_column=r.get("label_column", str),
        calibration=Calibration(
            method=cal.get("method", str),
            fitted_rows=cal.get("fitted_rows", int),
            fitted_positives=cal.get("fitted_positives", int),
            knots=cal.get("knots", int),
            fitted_on=cal.get("fitted_on", str),
            params=cal.get("params", dict),
        ),
        training=Training(
            data=train.get("data", str),
            rows=train.get("rows", int),
            positives=train.get("positives", int),
            seed=train.get("seed", int),
            splits=train.get("splits", dict),
            class_weight=train.get("class_weight", str),
            estimator=train.get("estimator", str),
        ),
        holdout=Holdout(
            evaluated_on=holdout.get("evaluated_on", str),
            rows=holdout.get("rows", int),
            positives=holdout.get("positives", int),
            raw=holdout.get("raw", dict),
            calibrated=holdout.get("calibrated", dict),
        ),
        # An imported graph has no linear model of ours to describe.
        linear=r.get("linear", dict, optional=imported is not None) or {},
        history=tuple(
            HistoryEntry(h.get("version", str), h.get("created", str), h.get("change", str))
            for h in r.items("history")
        ),
        reference=reference,
        imported=imported,
    )
