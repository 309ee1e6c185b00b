"""Foreign ONNX graphs: read what one takes and gives, and compose it with our calibration stage.

A classifier exported by skl2onnx, onnxmltools (LightGBM, XGBoost), CatBoost or PyTorch keeps
every node it came with. What `compose` adds, all named under `intent_scorer/`:

    score      the positive-class column of the chosen output, float32 [N]: column `index` of a
               [N, C] tensor (a ZipMap's input tensor when the output was a ZipMap, so no row
               becomes a Python dict), or the [N] / [N, 1] tensor itself
    intent_raw        that probability unchanged (bit for bit what the original file gives), or
                      sigmoid(score) when the score is a logit
    intent_logit      z, float32 [N]: the logit the calibrators take; a probability's is
                      log(p) − log(1 − p) in float64, clipped to ±LOGIT_BOUND
    intent_calibrated the calibrator applied to z, built by `scorer.model.graph`, exactly as in
                      the scorer's own graphs

Outputs the foreign graph had (labels, a ZipMap) are dropped, with the nodes only they needed.
The calibration stage's nodes are named under `intent_scorer/calibration/`, so `recalibrated`
swaps it without touching a node `intent_raw` depends on: recalibrating keeps it bit-identical.

The stage needs opset 21 (QuantizeLinear to uint16); an older graph is converted by onnx's
version converter, and `scorer.model.importer` then checks the composed graph's `intent_raw`
against the original file's output on every labelled row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import pyarrow as pa
from onnx import TensorProto, helper, numpy_helper

from scorer.errors import ForeignGraphError
from scorer.model.card import ELEMENT_TYPES, OUTPUT_KINDS, GraphInput
from scorer.model.graph import CalibratorParams, calibration_stage
from scorer.model.interface import CALIBRATED_OUTPUT, RAW_OUTPUT
from scorer.storage import foreign_errors

LOGIT_OUTPUT = "intent_logit"
PREFIX = "intent_scorer/"
_CALIBRATION_PREFIX = f"{PREFIX}calibration/"
_LOGIT_ROW = f"{PREFIX}logit_row"  # z as float32 [1, N], the calibration stage's input
_RAW_ROW = f"{PREFIX}raw_row"
OPSET = 21
# |z| beyond this changes no calibrated score in float32, and keeps p = 0 or 1 finite.
LOGIT_BOUND = 40.0
# Operator domains onnxruntime's CPU build implements.
_KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
_ELEMENT_TYPES = {
    TensorProto.FLOAT: "float",
    TensorProto.DOUBLE: "double",
    TensorProto.INT64: "int64",
    TensorProto.INT32: "int32",
    TensorProto.STRING: "string",
}
assert set(_ELEMENT_TYPES.values()) == set(ELEMENT_TYPES)


@dataclass(frozen=True)
class ForeignGraph:
    """An ONNX file as read, before anything is changed."""

    path: Path
    model: onnx.ModelProto
    data: bytes  # the file's bytes, which onnxruntime runs for the parity check
    sha256: str


@dataclass(frozen=True)
class ScoreOutput:
    """Which output of the foreign graph holds the positive-class score, and how."""

    name: str  # the graph output
    index: int | None  # its column, for [N, C] tensors and ZipMaps
    kind: str  # "probability" | "logit"
    zipmap: bool
    tensor: str  # the tensor read: the output itself, or a ZipMap's input


def read_graph(path: str | Path) -> ForeignGraph:
    """Read an ONNX file; refuse external data files and operator domains onnxruntime lacks."""
    path = Path(path)
    with foreign_errors(str(path), "cannot read", error=ForeignGraphError):
        data = path.read_bytes()
    # protobuf's DecodeError and onnx's own exceptions are undocumented: any is a bad file.
    with foreign_errors(
        str(path), "not an ONNX model", error=ForeignGraphError, foreign=(Exception,)
    ):
        model = onnx.load_from_string(data)
    for tensor in _initializers(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            where = {entry.key: entry.value for entry in tensor.external_data}.get("location", "?")
            raise ForeignGraphError(
                f"{path}: initializer {tensor.name!r} keeps its data in an external file "
                f"({where}); save the model as one file (onnx.save(model, path, "
                "save_as_external_data=False))"
            )
    for node in _nodes(model.graph):
        if node.domain not in _KNOWN_DOMAINS:
            raise ForeignGraphError(
                f"{path}: node {node.name or node.op_type!r} ({node.op_type}) is in operator "
                f"domain {node.domain!r}, which onnxruntime does not implement"
            )
    return ForeignGraph(path, model, data, hashlib.sha256(data).hexdigest())


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (old IR versions also list initializers as inputs)."""
    constants = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in constants]


def plan_inputs(
    graph: ForeignGraph,
    schema: pa.Schema,
    features: Sequence[str] | None,
    input_map: Mapping[str, str],
) -> tuple[GraphInput, ...]:
    """Which session columns feed each graph input, checked against the labelled data's schema.

    A 2-D input wider than one column takes `features` in matrix order; any other input takes
    the column `input_map` names for it, or the column of its own name.
    """
    path = graph.path
    inputs = graph_inputs(graph.model)
    names = [i.name for i in inputs]
    for name in input_map:
        if name not in names:
            raise ForeignGraphError(
                f"--input {name}=...: {path} has no input {name!r} (it has {', '.join(names)})"
            )
    planned = []
    matrices = []
    for value in inputs:
        element_type, shape = _tensor_type(path, value)
        if len(shape) not in (1, 2):
            raise ForeignGraphError(
                f"{path}: input {value.name!r} has shape {_shape_text(shape)}; "
                "expected [N] or [N, F]"
            )
        width = shape[1] if len(shape) == 2 else 1
        if width != 1 and value.name not in input_map:
            matrices.append(value.name)
            if features is None:
                raise ForeignGraphError(
                    f"{path}: input {value.name!r} is a matrix {_shape_text(shape)}; name its "
                    "columns in order with --features COL,COL,..."
                )
            if width is not None and len(features) != width:
                raise ForeignGraphError(
                    f"--features names {len(features)} columns, but input {value.name!r} of "
                    f"{path} is {width} wide {_shape_text(shape)}"
                )
            columns = tuple(features)
            shape = (None, len(features))
        else:
            columns = (input_map.get(value.name, value.name),)
        if element_type == "string" and len(columns) > 1:
            raise ForeignGraphError(
                f"{path}: input {value.name!r} is a string matrix; the scorer feeds string "
                "inputs one column each"
            )
        for column in columns:
            _check_column(path, value.name, element_type, column, schema)
        planned.append(GraphInput(value.name, element_type, (None, *shape[1:]), columns))
    if len(matrices) > 1:
        raise ForeignGraphError(
            f"{path}: inputs {', '.join(map(repr, matrices))} are all matrices; --features can "
            "describe one (map the others with --input NAME=COLUMN if they are one column)"
        )
    if features is not None and not matrices:
        raise ForeignGraphError(f"--features: {path} has no matrix input ({', '.join(names)})")
    return tuple(planned)


def _check_column(path: Path, name: str, element_type: str, column: str, schema: pa.Schema) -> None:
    if column not in schema.names:
        mapped = f"column {column!r}" if column != name else f"column named {name!r}"
        raise ForeignGraphError(
            f"{path}: input {name!r} needs a {mapped}, which the labelled data lacks "
            f"(map it with --input {name}=COLUMN)"
        )
    kind = schema.field(column).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    is_string = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    is_number = pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if element_type == "string" and not is_string:
        raise ForeignGraphError(
            f"{path}: input {name!r} takes strings, but column {column!r} holds {kind}"
        )
    if element_type != "string" and not (is_number or pa.types.is_boolean(kind)):
        raise ForeignGraphError(
            f"{path}: input {name!r} takes {element_type} numbers, but column {column!r} "
            f"holds {kind}"
        )


def find_output(graph: ForeignGraph, output: str | None, output_kind: str | None) -> ScoreOutput:
    """The positive-class score: `output` (NAME or NAME:INDEX) when given, else the one output
    that can only be it (a ZipMap or a [N, 2] float tensor: column or key 1). A single float
    column is a probability or a logit, which only `output_kind` can say."""
    path = graph.path
    outputs = {o.name: o for o in graph.model.graph.output}
    producers = {out: node for node in graph.model.graph.node for out in node.output}
    if output is not None:
        name, _, index_text = output.partition(":")
        if name not in outputs:
            raise ForeignGraphError(
                f"--output {output}: {path} has no output {name!r} (it has {', '.join(outputs)})"
            )
        try:
            index = int(index_text) if index_text else None
        except ValueError:
            raise ForeignGraphError(f"--output {output}: INDEX must be an integer") from None
        chosen = _read_output(path, outputs[name], producers.get(name), index)
        if chosen is None:
            raise ForeignGraphError(
                f"--output {output}: output {name!r} of {path} is {_type_text(outputs[name])}, "
                "not a probability or logit tensor"
            )
    else:
        candidates = [
            c
            for o in outputs.values()
            if (c := _read_output(path, o, producers.get(o.name), None)) is not None
        ]
        if not candidates:
            listed = ", ".join(f"{o.name} {_type_text(o)}" for o in outputs.values())
            raise ForeignGraphError(
                f"{path}: no output looks like a probability or a logit ({listed}); name it "
                "with --output NAME[:INDEX]"
            )
        if len(candidates) > 1:
            raise ForeignGraphError(
                f"{path}: outputs {', '.join(repr(c.name) for c in candidates)} could each be "
                "the score; pick one with --output NAME[:INDEX]"
            )
        chosen = candidates[0]
    if output_kind is not None:
        if output_kind not in OUTPUT_KINDS:
            raise ForeignGraphError(f"--output-kind must be one of {', '.join(OUTPUT_KINDS)}")
        return ScoreOutput(chosen.name, chosen.index, output_kind, chosen.zipmap, chosen.tensor)
    if chosen.kind == "":
        raise ForeignGraphError(
            f"{path}: output {chosen.name!r} is one float per row: say whether it is a "
            "probability or a logit with --output-kind probability|logit"
        )
    return chosen


def _read_output(
    path: Path, value: onnx.ValueInfoProto, producer: onnx.NodeProto | None, index: int | None
) -> ScoreOutput | None:
    """What `value` would give as the score; None when it is not a float tensor or ZipMap.
    A single column gets kind "" (unknown): probability or logit is the caller's to say."""
    if producer is not None and producer.op_type == "ZipMap":
        labels = _zipmap_labels(producer)
        if len(labels) != 2:
            raise ForeignGraphError(
                f"{path}: output {value.name!r} is a ZipMap over {len(labels)} classes "
                f"({', '.join(map(str, labels))}): a multi-class model; the scorer imports "
                "binary classifiers"
            )
        if index is None:
            index = labels.index(1) if 1 in labels else 1
        _check_index(path, value.name, index, 2)
        return ScoreOutput(value.name, index, "probability", True, producer.input[0])
    if not value.type.HasField("tensor_type"):
        return None
    if value.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        return None
    _, shape = _tensor_type(path, value)
    width = shape[-1] if len(shape) == 2 else 1
    if len(shape) > 2 or (len(shape) == 2 and width is None and index is None):
        raise ForeignGraphError(
            f"{path}: output {value.name!r} has shape {_shape_text(shape)}; name the "
            "positive-class column with --output NAME:INDEX"
        )
    if width is not None and width > 2:
        if index is None:
            raise ForeignGraphError(
                f"{path}: output {value.name!r} has shape {_shape_text(shape)}: a multi-class "
                "model; the scorer imports binary classifiers"
            )
        _check_index(path, value.name, index, width)
    if width == 2:
        index = 1 if index is None else index
        _check_index(path, value.name, index, 2)
        return ScoreOutput(value.name, index, "probability", False, value.name)
    if width == 1 and index not in (None, 0):
        _check_index(path, value.name, index, 1)
    return ScoreOutput(value.name, None if width == 1 else index, "", False, value.name)


def _check_index(path: Path, name: str, index: int, width: int) -> None:
    if not 0 <= index < width:
        raise ForeignGraphError(
            f"--output {name}:{index}: output {name!r} of {path} has {width} column(s)"
        )


def _zipmap_labels(node: onnx.NodeProto) -> list[int | str]:
    for attribute in node.attribute:
        if attribute.name == "classlabels_int64s":
            return list(attribute.ints)
        if attribute.name == "classlabels_strings":
            return [s.decode() for s in attribute.strings]
    return []


def compose(
    graph: ForeignGraph, output: ScoreOutput, calibrator: CalibratorParams, *, name: str
) -> onnx.ModelProto:
    """The foreign graph with our outputs and calibration stage (module docstring)."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    versions = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    if versions.get("ai.onnx", 1) < OPSET:
        try:
            model = onnx.version_converter.convert_version(model, OPSET)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise ForeignGraphError(
                f"{graph.path}: its opset {versions.get('ai.onnx', 1)} cannot be raised to "
                f"{OPSET}, which the calibration stage needs: {exc}"
            ) from exc
    if "ai.onnx.ml" not in versions:
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    model.ir_version = max(model.ir_version, 10)

    nodes, constants = _score_nodes(output)
    used = _needed(model.graph, [output.tensor])
    kept = [node for position, node in enumerate(model.graph.node) if position in used]
    clash = {n for node in nodes for n in node.output} & {
        n for node in kept for n in [*node.input, *node.output]
    }
    if clash:
        raise ForeignGraphError(
            f"{graph.path}: tensor names {sorted(clash)} clash with the scorer's own outputs"
        )
    del model.graph.node[:]
    model.graph.node.extend(kept + nodes)
    model.graph.initializer.extend(constants)
    del model.graph.output[:]
    model.graph.output.extend(
        helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N"])
        for out in (RAW_OUTPUT, LOGIT_OUTPUT)
    )
    model.graph.name = name
    return recalibrated(model, calibrator)


def recalibrated(model: onnx.ModelProto, calibrator: CalibratorParams) -> onnx.ModelProto:
    """`model` (made by `compose`) with its calibration stage replaced by `calibrator`'s; every
    other node is kept as it is."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    kept_nodes = [n for n in graph.node if not n.name.startswith(_CALIBRATION_PREFIX)]
    kept_constants = [t for t in graph.initializer if not t.name.startswith(_CALIBRATION_PREFIX)]
    nodes, constants = calibration_stage(
        _LOGIT_ROW, _RAW_ROW, calibrator, prefix=_CALIBRATION_PREFIX, out=CALIBRATED_OUTPUT
    )
    # The Reshape to intent_calibrated is named after its output; rename it into the stage.
    nodes[-1].name = f"{_CALIBRATION_PREFIX}{CALIBRATED_OUTPUT}"
    del graph.node[:]
    graph.node.extend(kept_nodes + nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_constants + constants)
    del graph.output[:]
    graph.output.extend(
        helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N"])
        for out in (RAW_OUTPUT, CALIBRATED_OUTPUT, LOGIT_OUTPUT)
    )
    helper.set_model_props(result, {**_props(model), "calibration": calibrator.method})
    # onnx's ValidationError and shape inference's errors, which onnx does not document.
    with foreign_errors(
        "the composed graph",
        "does not pass onnx's checker",
        error=ForeignGraphError,
        foreign=(Exception,),
    ):
        onnx.checker.check_model(result, full_check=True)
    return result


def _props(model: onnx.ModelProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in model.metadata_props}


def _score_nodes(output: ScoreOutput) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The nodes from the chosen tensor to intent_raw, intent_logit and the [1, N] rows the
    calibration stage reads."""
    nodes: list[onnx.NodeProto] = []
    constants: list[TensorProto] = []

    def const(stem: str, value: np.ndarray) -> str:
        name = f"{PREFIX}{stem}"
        constants.append(numpy_helper.from_array(value, name))
        return name

    def op(op_type: str, inputs: Iterable[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    tensor = output.tensor
    if output.index is not None:
        index = const("index", np.array(output.index, np.int64))
        score = op("Gather", [tensor, index], f"{PREFIX}score_any", axis=1)
    else:
        score = op(
            "Reshape", [tensor, const("flat", np.array([-1], np.int64))], f"{PREFIX}score_flat"
        )
    # A float64 output (some exports) is rounded once, as the scores are float32.
    score = op("Cast", [score], f"{PREFIX}score", to=TensorProto.FLOAT)
    if output.kind == "logit":
        op("Identity", [score], LOGIT_OUTPUT)
        op("Sigmoid", [score], RAW_OUTPUT)
    else:
        op("Identity", [score], RAW_OUTPUT)
        p = op("Cast", [score], f"{PREFIX}p64", to=TensorProto.DOUBLE)
        one = const("one", np.array(1.0, np.float64))
        log_odds = op(
            "Sub",
            [
                op("Log", [p], f"{PREFIX}log_p"),
                op("Log", [op("Sub", [one, p], f"{PREFIX}q")], f"{PREFIX}log_q"),
            ],
            f"{PREFIX}log_odds",
        )
        bounded = op(
            "Clip",
            [
                log_odds,
                const("low", np.array(-LOGIT_BOUND, np.float64)),
                const("high", np.array(LOGIT_BOUND, np.float64)),
            ],
            f"{PREFIX}logit64",
        )
        op("Cast", [bounded], LOGIT_OUTPUT, to=TensorProto.FLOAT)
    row = const("row", np.array([1, -1], np.int64))
    op("Reshape", [LOGIT_OUTPUT, row], _LOGIT_ROW)
    op("Reshape", [RAW_OUTPUT, row], _RAW_ROW)
    return nodes, constants


def logit_of_probability(p: np.ndarray) -> np.ndarray:
    """z for a float32 probability, in float64, as the composed graph computes it."""
    p64 = np.asarray(p, np.float32).astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.clip(np.log(p64) - np.log(1.0 - p64), -LOGIT_BOUND, LOGIT_BOUND)


def _needed(graph: onnx.GraphProto, tensors: Iterable[str]) -> set[int]:
    """The positions of the nodes `tensors` depend on (a subgraph's outer-scope names
    included). Positions, not the node objects: protobuf hands out a new wrapper per access."""
    nodes = list(graph.node)
    producers = {out: position for position, node in enumerate(nodes) for out in node.output}
    wanted = list(tensors)
    seen: set[str] = set()
    used: set[int] = set()
    while wanted:
        name = wanted.pop()
        if name in seen or name not in producers:
            continue
        seen.add(name)
        node = nodes[producers[name]]
        used.add(producers[name])
        wanted.extend(node.input)
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs]:
                wanted.extend(n for inner in sub.node for n in inner.input)
    return used


def _nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs]:
                yield from _nodes(sub)


def _initializers(graph: onnx.GraphProto) -> Iterable[TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs]:
                yield from _initializers(sub)


def _tensor_type(path: Path, value: onnx.ValueInfoProto) -> tuple[str, tuple[int | None, ...]]:
    if not value.type.HasField("tensor_type"):
        raise ForeignGraphError(
            f"{path}: input {value.name!r} is {_type_text(value)}, not a tensor"
        )
    tensor = value.type.tensor_type
    element_type = _ELEMENT_TYPES.get(tensor.elem_type)
    if element_type is None:
        raise ForeignGraphError(
            f"{path}: {value.name!r} has element type "
            f"{TensorProto.DataType.Name(tensor.elem_type).lower()}; the scorer feeds "
            f"{', '.join(ELEMENT_TYPES)}"
        )
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return element_type, shape


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _type_text(value: onnx.ValueInfoProto) -> str:
    kind = value.type.WhichOneof("value")
    if kind == "tensor_type":
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
        return f"{TensorProto.DataType.Name(tensor.elem_type).lower()} {_shape_text(dims)}"
    return str(kind).removesuffix("_type")
