"""`scorer import`: a classifier exported to ONNX elsewhere -> a model directory of the scorer.

The job, in order; nothing is written under the output folder before every step succeeded:

1. read the file (`scorer.model.foreign.read_graph`) and the labelled sessions;
2. plan which columns feed each graph input and which output is the positive-class score;
3. derive the card's inputs: string inputs are categoricals with the vocabulary of the labelled
   data, numbers numeric (with `--range` bounds), booleans boolean;
4. compose the graph without calibration and check its `intent_raw` against onnxruntime on the
   original file, on every labelled row, bit for bit;
5. split the labelled rows in halves (stratified, seeded): calibration and test. With
   `calibration="auto"`, each method of `CALIBRATION_METHODS` is fitted fold by fold on the
   calibration half and scored by the log loss of its out-of-fold predictions; the lowest
   wins ("none" included, so a model already calibrated stays as it is). The chosen calibrator
   is fitted on the whole half and composed into the graph;
6. holdout metrics on the test half, the drift reference on every row, then model.onnx and
   model.json (`scorer.model.train.write_model`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.model_selection import StratifiedKFold

from scorer.errors import ForeignGraphError, TrainingDataError
from scorer.metrics import summary
from scorer.model.calibration import FewCalibrationRowsWarning, fit_calibrator, reference_predict
from scorer.model.card import (
    CALIBRATION_METHODS,
    DEFAULT_SEED,
    DEFAULT_VERSION,
    GraphInput,
    HistoryEntry,
    Holdout,
    Imported,
    InputSpec,
    ModelCard,
    OutputSpec,
    Training,
)
from scorer.model.foreign import (
    ForeignGraph,
    ScoreOutput,
    compose,
    find_output,
    plan_inputs,
    read_graph,
)
from scorer.model.graph import CalibratorParams
from scorer.model.interface import CALIBRATED_OUTPUT, RAW_OUTPUT, session_options
from scorer.model.runtime import IntentModel
from scorer.model.sessions import KEY_COLUMN, LABEL_COLUMN
from scorer.model.train import (
    ReferenceRows,
    calibration_of,
    decode_dictionaries,
    imported_logits,
    labels_of,
    now,
    read_labelled,
    split_rows,
    write_model,
)
from scorer.storage import foreign_errors

AUTO = "auto"
CALIBRATION_CHOICES = (AUTO, *CALIBRATION_METHODS)
DEFAULT_FOLDS = 5
SPLITS = (("calibration", 0.5), ("test", 0.5))


@dataclass(frozen=True)
class ImportOptions:
    """The options of `scorer import` (its --help says what each does)."""

    features: tuple[str, ...] | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # graph input -> column
    output: str | None = None  # NAME or NAME:INDEX
    output_kind: str | None = None
    calibration: str = AUTO
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    name: str | None = None
    version: str = DEFAULT_VERSION
    key_column: str = KEY_COLUMN
    label_column: str = LABEL_COLUMN
    seed: int = DEFAULT_SEED
    folds: int = DEFAULT_FOLDS

    def flags(self) -> dict[str, object]:
        """What the card records of them: the options that shaped the graph and its fit."""
        return {
            "features": list(self.features) if self.features is not None else None,
            "inputs": dict(self.inputs),
            "output": self.output,
            "output_kind": self.output_kind,
            "calibration": self.calibration,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "seed": self.seed,
            "folds": self.folds,
        }


def import_model(
    onnx_file: str | Path, data: str | Path | pa.Table, out_dir: str | Path, options: ImportOptions
) -> ModelCard:
    """Make a model directory at `out_dir` from the classifier in `onnx_file`, calibrated and
    described from the labelled sessions in `data` (module docstring)."""
    if options.calibration not in CALIBRATION_CHOICES:
        raise ForeignGraphError(
            f"--calibration must be one of {', '.join(CALIBRATION_CHOICES)}, "
            f"not {options.calibration!r}"
        )
    graph = read_graph(onnx_file)
    table, source = read_labelled(data if isinstance(data, pa.Table) else Path(data))
    output = find_output(graph, options.output, options.output_kind)
    graph_inputs = plan_inputs(graph, table.schema, options.features, options.inputs)
    inputs = _input_specs(graph_inputs, table, options.ranges)
    labels = labels_of(table, inputs, options.label_column, source)
    name = options.name or Path(out_dir).resolve().name
    imported = Imported(
        inputs=graph_inputs,
        output=output.name,
        output_index=output.index,
        output_kind=output.kind,
        zipmap=output.zipmap,
        source=str(onnx_file),
        source_sha256=graph.sha256,
        producer_name=graph.model.producer_name,
        producer_version=graph.model.producer_version,
        flags=options.flags(),
        calibration_search={},
    )
    created = now()
    card = ModelCard(
        name=name,
        version=options.version,
        sha256="",
        created=created,
        inputs=inputs,
        outputs=(
            OutputSpec(
                RAW_OUTPUT,
                "float32",
                f"the imported model's own score ({output.kind} of output "
                f"{output.name!r}{'' if output.index is None else f', column {output.index}'})"
                + (", through a sigmoid" if output.kind == "logit" else ""),
            ),
            OutputSpec(CALIBRATED_OUTPUT, "float32", "the raw score after the calibration stage"),
        ),
        key_column=options.key_column,
        label_column=options.label_column,
        calibration=calibration_of(CalibratorParams("none"), labels[:0], ""),
        training=Training(
            data=source,
            rows=len(labels),
            positives=int(labels.sum()),
            seed=options.seed,
            splits={},
            class_weight="unknown (fitted elsewhere)",
            estimator=f"ONNX graph by {graph.model.producer_name or 'an unnamed producer'} "
            f"{graph.model.producer_version}".rstrip(),
        ),
        holdout=Holdout(f"test half of {source} (seed {options.seed})", 0, 0, {}, {}),
        linear={},
        history=(),
        imported=imported,
    )

    uncalibrated = _model(
        out_dir, card, compose(graph, output, CalibratorParams("none"), name=name)
    )
    table = decode_dictionaries(table)
    _check_parity(graph, output, uncalibrated, table)
    splits = split_rows(labels, options.seed, SPLITS)
    calibration_rows = splits["calibration"]
    logits = imported_logits(uncalibrated, table.take(calibration_rows))
    calibration_labels = labels[calibration_rows]
    if options.calibration == AUTO:
        scores = out_of_fold_log_loss(logits, calibration_labels, options.folds, options.seed)
        method = min(scores, key=lambda m: (scores[m], CALIBRATION_METHODS.index(m)))
        search = {"folds": options.folds, "log_loss": scores, "chosen": method}
    else:
        method, search = options.calibration, {"chosen": options.calibration}
    with warnings.catch_warnings():
        if options.calibration == AUTO:
            # Chosen on its out-of-fold score: the few-rows warning has been answered.
            warnings.simplefilter("ignore", FewCalibrationRowsWarning)
        calibrator = fit_calibrator(method, logits, calibration_labels)
    card = dataclasses.replace(
        card,
        calibration=calibration_of(
            calibrator,
            calibration_labels,
            f"calibration half of {source} (seed {options.seed})",
        ),
        training=dataclasses.replace(
            card.training, splits={split: len(rows) for split, rows in splits.items()}
        ),
        imported=dataclasses.replace(imported, calibration_search=search),
        history=(
            HistoryEntry(
                options.version,
                created,
                f"imported from {onnx_file} (sha256 {graph.sha256[:12]}), calibration {method}"
                + (
                    f" chosen by {options.folds}-fold out-of-fold log loss"
                    if search.get("folds")
                    else ""
                ),
            ),
        ),
    )
    composed = compose(graph, output, calibrator, name=name).SerializeToString()
    test = splits["test"]
    return write_model(
        out_dir,
        card,
        composed,
        table.take(test),
        labels[test],
        ReferenceRows(table, labels, source),
    )


def out_of_fold_log_loss(
    logits: np.ndarray, labels: np.ndarray, folds: int, seed: int
) -> dict[str, float]:
    """Each calibration method's log loss over predictions for rows its fit did not see."""
    positives = int(labels.sum())
    folds = min(folds, positives, len(labels) - positives)
    if folds < 2:
        raise TrainingDataError(
            f"{len(labels)} calibration rows with {positives} converted cannot be split into "
            "two folds of both classes; give more labelled rows or --calibration METHOD"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = {}
    for method in CALIBRATION_METHODS:
        predicted = np.empty(len(labels))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewCalibrationRowsWarning)
            for fit_rows, held_out in splitter.split(logits, labels):
                params = fit_calibrator(method, logits[fit_rows], labels[fit_rows])
                predicted[held_out] = reference_predict(params, logits[held_out])
        scores[method] = round(float(summary(labels, predicted)["log_loss"]), 6)
    return scores


def _input_specs(
    graph_inputs: tuple[GraphInput, ...],
    table: pa.Table,
    ranges: dict[str, tuple[float | None, float | None]],
) -> tuple[InputSpec, ...]:
    """The card's inputs: every column a graph input reads, once, in graph-input order."""
    specs: dict[str, InputSpec] = {}
    for graph_input in graph_inputs:
        for column in graph_input.columns:
            if column in specs:
                continue
            kind = table.schema.field(column).type
            if pa.types.is_dictionary(kind):
                kind = kind.value_type
            if graph_input.element_type == "string":
                values = pc.unique(table[column]).drop_null()
                if pa.types.is_dictionary(values.type):
                    values = values.dictionary_decode()
                vocabulary = tuple(sorted(str(v) for v in values.to_pylist()))
                specs[column] = InputSpec(column, "string", "categorical", vocabulary=vocabulary)
            elif pa.types.is_boolean(kind):
                specs[column] = InputSpec(column, _dtype(graph_input), "boolean")
            else:
                low, high = ranges.get(column, (None, None))
                specs[column] = InputSpec(column, _dtype(graph_input), "numeric", low, high)
    for column in ranges:
        spec = specs.get(column)
        if spec is None:
            raise ForeignGraphError(
                f"--range {column}=...: no graph input reads column {column!r} "
                f"(inputs read {', '.join(specs)})"
            )
        if spec.kind != "numeric":
            raise ForeignGraphError(
                f"--range {column}=...: column {column!r} is {spec.kind}, not a number"
            )
    return tuple(specs.values())


def _dtype(graph_input: GraphInput) -> str:
    return "int" if graph_input.element_type in ("int64", "int32") else "float"


def _model(out_dir: str | Path, card: ModelCard, graph: onnx.ModelProto) -> IntentModel:
    data = graph.SerializeToString()
    session = onnxruntime.InferenceSession(
        data, sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    return IntentModel(Path(out_dir), card, session)


def _check_parity(
    graph: ForeignGraph, output: ScoreOutput, model: IntentModel, table: pa.Table
) -> None:
    """The composed graph's score must be the original file's, bit for bit, on every row."""
    # onnxruntime raises its own, undocumented exception types: any of them is the graph's fault.
    where = str(graph.path)
    unknown = (Exception,)
    with foreign_errors(
        where, "onnxruntime cannot load it", error=ForeignGraphError, foreign=unknown
    ):
        original = onnxruntime.InferenceSession(
            graph.data, sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
    feed = model.graph_feed(table)
    with foreign_errors(
        where, "onnxruntime cannot run it", error=ForeignGraphError, foreign=unknown
    ):
        (theirs,) = original.run([output.name], feed)
    expected = original_score(theirs, output)
    wanted = RAW_OUTPUT if output.kind == "probability" else "intent_logit"
    (ours,) = model.session.run([wanted], feed)
    if not np.array_equal(np.asarray(ours, np.float32), expected, equal_nan=True):
        worst = float(np.nanmax(np.abs(np.asarray(ours, np.float64) - expected)))
        raise ForeignGraphError(
            f"{graph.path}: the composed graph's score differs from the original's by up to "
            f"{worst:.3g} (the opset conversion changed it); please report this file"
        )


def original_score(result: object, output: ScoreOutput) -> np.ndarray:
    """The positive-class score, float32 [N], of what onnxruntime returned for `output` of the
    original file (a list of dicts for a ZipMap)."""
    if output.zipmap:
        rows = list(result)  # type: ignore[call-overload]
        keys = list(rows[0]) if rows else []
        key = keys[output.index] if output.index is not None and keys else 1
        return np.array([row[key] for row in rows], np.float32)
    array = np.asarray(result)
    if output.index is not None:
        array = array[:, output.index]
    return array.reshape(-1).astype(np.float32)
