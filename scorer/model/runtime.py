"""The intent model at run time: its card plus one onnxruntime session, and `.score(table)`.

`IntentModel.score` is the exact code the Ray actors run on every batch: encode (validate, build
the feed), infer, assemble the scores table of docs/output.md. The per-batch Python work is a handful
of calls whatever the batch size; constant columns are dictionary arrays over one shared buffer
of zero indices, so assembling the output copies nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime
import pyarrow as pa
from numpy.typing import NDArray

from scorer.arrow import numpy_array, string_array, to_numpy
from scorer.errors import ChecksumError, ConfigError, ModelError, ShardReadError
from scorer.model.card import (
    BUNDLED_MODEL,
    CARD_FILE,
    GRAPH_FILE,
    ModelCard,
    read_card,
    verify_checksum,
)
from scorer.model.drift import DriftState
from scorer.model.encode import (
    ACCEPTED_FEED_DTYPES,
    FEED_DTYPES,
    EncodedBatch,
    encode,
    feed_shapes,
)
from scorer.model.foreign_feed import ForeignFeed
from scorer.model.interface import CALIBRATED_OUTPUT, RAW_OUTPUT, session_options
from scorer.storage import foreign_errors

_OUTPUT_NAMES = (RAW_OUTPUT, CALIBRATED_OUTPUT)
_DICTIONARY_STRING = pa.dictionary(pa.int32(), pa.string())
_NO_STRINGS = string_array([])
_SCORE_FIELDS = (
    pa.field(RAW_OUTPUT, pa.float32()),
    pa.field(CALIBRATED_OUTPUT, pa.float32()),
    pa.field("status", _DICTIONARY_STRING, nullable=False),
    pa.field("model_version", _DICTIONARY_STRING, nullable=False),
    pa.field("run_id", _DICTIONARY_STRING),
)
RESERVED_COLUMNS = frozenset(field.name for field in _SCORE_FIELDS)
# Tables larger than this are encoded and scored block by block (see `IntentModel._in_blocks`).
_BLOCK_ROWS = 1 << 18


class _Inferred(NamedTuple):
    encoded: EncodedBatch
    raw: NDArray[np.float32]
    calibrated: NDArray[np.float32]
    encode_seconds: float
    infer_seconds: float
    drift: DriftState | None
    drift_seconds: float


_ONNX_TENSOR_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(int64)": np.dtype(np.int64),
}


@dataclass(frozen=True)
class ScoredBatch:
    """One scored batch: the output table plus what the actor adds to its stats and calibration."""

    table: pa.Table
    raw: pa.Array  # float32, null for invalid rows
    calibrated: pa.Array
    status: pa.DictionaryArray
    invalid_counts: dict[str, int]  # status code -> rows, only codes that occur
    unseen: dict[str, int]  # categorical column -> ok rows with an unseen value
    rows_unseen: int  # ok rows with at least one unseen value
    encode_seconds: float
    infer_seconds: float
    drift: DriftState | None = None  # against the card's reference, when asked and it has one
    drift_seconds: float = 0.0

    @property
    def rows_invalid(self) -> int:
        return sum(self.invalid_counts.values())


class IntentModel:
    """A loaded, checksum-verified model. Score from one thread at a time: batches share the
    model's feed buffers (an actor scores its batches one after another anyway)."""

    def __init__(
        self,
        model_dir: Path,
        card: ModelCard,
        session: onnxruntime.InferenceSession,
        files: dict[str, bytes] | None = None,
    ):
        self.model_dir = model_dir
        self.card = card
        self.session = session
        self.files = files or {}
        """The bytes of model.json and model.onnx this model was loaded and verified from (what
        a run ships to its workers: never read again from a folder that may have changed)."""
        self._version = string_array([card.version])
        # An imported graph is fed from `encode`'s feed by `ForeignFeed` (docs/your-own-model.md).
        self._foreign = None if card.imported is None else ForeignFeed(card.inputs, card.imported)
        # As the graph declares them: categorical indices are int64 in graphs of earlier releases.
        self.feed_dtypes: dict[str, np.dtype[Any]] = (
            {kind: np.dtype(dtype) for kind, dtype in FEED_DTYPES.items()}
            if self._foreign is not None
            else {i.name: _ONNX_TENSOR_TYPES[i.type] for i in session.get_inputs()}
        )
        self._buffers: dict[str, np.ndarray] = {}  # flat, grown to the largest batch seen
        self._zeros = numpy_array(np.zeros(0, np.int32), pa.int32())  # sliced, never written

    @property
    def required_columns(self) -> tuple[str, ...]:
        """The input columns the model reads, in status-precedence order."""
        return self.card.input_names

    @property
    def categorical_string_columns(self) -> list[str]:
        """String categoricals: read them with `read_dictionary` and encoding looks up the
        dictionary only (a few values) instead of hashing every row's string."""
        return [s.name for s in self.card.inputs if s.kind == "categorical" and s.dtype == "string"]

    def output_metadata(self, run_id: str | None = None) -> dict[bytes, bytes]:
        """Parquet key-value metadata naming the model and the run (docs/output.md)."""
        metadata = {
            b"scorer.model.name": self.card.name.encode(),
            b"scorer.model.version": self.card.version.encode(),
            b"scorer.model.sha256": self.card.sha256.encode(),
        }
        if run_id is not None:
            metadata[b"scorer.run_id"] = run_id.encode()
        return metadata

    def output_schema(
        self, key: pa.Field | None = None, keep: Sequence[pa.Field] = (), run_id: str | None = None
    ) -> pa.Schema:
        """Schema of `score`'s output for a key and kept columns of the given types."""
        fields = ([key] if key is not None else []) + list(keep) + list(_SCORE_FIELDS)
        return pa.schema(fields, metadata=self.output_metadata(run_id))

    def score(
        self,
        data: pa.Table | pa.RecordBatch,
        *,
        key_column: str | None = None,
        keep: Sequence[str] = (),
        run_id: str | None = None,
    ) -> pa.Table:
        """Score every row of `data`: docs/output.md columns, input order, nulls for invalid rows."""
        return self.score_batch(data, key_column=key_column, keep=keep, run_id=run_id).table

    def score_batch(
        self,
        data: pa.Table | pa.RecordBatch,
        *,
        key_column: str | None = None,
        keep: Sequence[str] = (),
        run_id: str | None = None,
        drift: bool = False,
    ) -> ScoredBatch:
        """`score`, plus the score arrays, validation counts and stage timings; with `drift`, the
        batch's `DriftState` too if the card has a reference (built from the graph's feed while
        it is still in memory: the values are read once)."""
        passed = [key_column] if key_column is not None else []
        passed += [name for name in keep if name != key_column]
        clash = RESERVED_COLUMNS.intersection(passed)
        if clash:
            raise ConfigError(f"cannot keep column {sorted(clash)[0]!r}: the scores use that name")
        for name in passed:
            if name not in data.schema.names:
                raise ShardReadError(f"column {name!r} is missing (asked to be kept)")

        rows = data.num_rows
        drift = drift and self.card.reference is not None
        if rows <= _BLOCK_ROWS + _BLOCK_ROWS // 2:
            inferred = self._encode_and_infer(data, drift, key_column)
        else:
            inferred = self._in_blocks(data, drift, key_column)
        encoded, raw, calibrated = inferred.encoded, inferred.raw, inferred.calibrated

        valid = None if encoded.invalid_mask is None else ~encoded.invalid_mask
        # onnxruntime hands over fresh arrays each run: Arrow wraps them without a copy.
        raw_array = numpy_array(raw, pa.float32(), valid)
        calibrated_array = numpy_array(calibrated, pa.float32(), valid)
        # One zero-index buffer serves both constant columns: no per-row copy of the strings.
        zeros = self._zero_indices(rows)
        if run_id is None:
            run_ids = pa.DictionaryArray.from_arrays(pa.nulls(rows, pa.int32()), _NO_STRINGS)
        else:
            run_ids = pa.DictionaryArray.from_arrays(zeros, string_array([run_id]))
        columns = [data.column(name) for name in passed] + [
            raw_array,
            calibrated_array,
            encoded.status,
            pa.DictionaryArray.from_arrays(zeros, self._version),
            run_ids,
        ]
        schema = self.output_schema(None, [data.schema.field(name) for name in passed], run_id)
        return ScoredBatch(
            table=pa.Table.from_arrays(columns, schema=schema),
            raw=raw_array,
            calibrated=calibrated_array,
            status=encoded.status,
            invalid_counts=encoded.invalid_counts,
            unseen=encoded.unseen,
            rows_unseen=encoded.rows_unseen,
            encode_seconds=inferred.encode_seconds,
            infer_seconds=inferred.infer_seconds,
            drift=inferred.drift,
            drift_seconds=inferred.drift_seconds,
        )

    def _encode_and_infer(
        self, data: pa.Table | pa.RecordBatch, drift: bool, key_column: str | None = None
    ) -> _Inferred:
        started = time.perf_counter()
        encoded = encode(self.card, data, self._feed_buffers(data.num_rows), key_column)
        feed = encoded.feed if self._foreign is None else self._foreign.feed(encoded, data)
        encoded_at = time.perf_counter()
        if data.num_rows:
            raw, calibrated = self.session.run(_OUTPUT_NAMES, feed)
        else:
            raw = calibrated = np.empty(0, np.float32)
        inferred_at = time.perf_counter()
        state = None
        if drift and self.card.reference is not None:
            state = DriftState.from_feed(
                self.card.reference,
                encoded.feed,
                encoded.invalid_mask,
                encoded.invalid_counts,
                encoded.unseen,
                calibrated,
            )
        return _Inferred(
            encoded,
            raw,
            calibrated,
            encoded_at - started,
            inferred_at - encoded_at,
            state,
            time.perf_counter() - inferred_at,
        )

    def _in_blocks(
        self, data: pa.Table | pa.RecordBatch, drift: bool, key_column: str | None = None
    ) -> _Inferred:
        """`_encode_and_infer` block by block of `_BLOCK_ROWS` rows, results joined: the feed
        and the graph's intermediates of a block stay in cache, those of a whole large table
        do not (measured, 1M rows: 119 ms in one block, 112 ms in blocks of 2**18)."""
        rows = data.num_rows
        raw, calibrated = np.empty(rows, np.float32), np.empty(rows, np.float32)
        status = np.empty(rows, np.int32)
        invalid = None
        invalid_counts: Counter[str] = Counter()
        unseen: Counter[str] = Counter()
        rows_unseen = 0
        encode_seconds = infer_seconds = drift_seconds = 0.0
        state = DriftState() if drift else None
        for start in range(0, rows, _BLOCK_ROWS):
            block = data.slice(start, _BLOCK_ROWS)
            inferred = self._encode_and_infer(block, drift, key_column)
            encoded = inferred.encoded
            stop = start + block.num_rows
            raw[start:stop], calibrated[start:stop] = inferred.raw, inferred.calibrated
            status[start:stop] = to_numpy(encoded.status.indices)
            if encoded.invalid_mask is not None:
                if invalid is None:
                    invalid = np.zeros(rows, dtype=bool)
                invalid[start:stop] = encoded.invalid_mask
            invalid_counts.update(encoded.invalid_counts)
            unseen.update(encoded.unseen)
            rows_unseen += encoded.rows_unseen
            encode_seconds += inferred.encode_seconds
            infer_seconds += inferred.infer_seconds
            drift_seconds += inferred.drift_seconds
            if state is not None and inferred.drift is not None:
                state = state.merge(inferred.drift)
        joined = EncodedBatch(
            feed={},  # each block's feed was overwritten by the next
            status=pa.DictionaryArray.from_arrays(
                numpy_array(status, pa.int32()), encoded.status.dictionary
            ),
            invalid_mask=invalid,
            invalid_counts=dict(invalid_counts),
            unseen=dict(unseen),
            rows_unseen=rows_unseen,
        )
        return _Inferred(
            joined, raw, calibrated, encode_seconds, infer_seconds, state, drift_seconds
        )

    def encode(self, data: pa.Table | pa.RecordBatch) -> EncodedBatch:
        """Validate and encode `data` into fresh feed arrays of the types this graph takes
        (`session.run(None, encoded.feed)` runs the graph on them)."""
        shapes = feed_shapes(self.card.inputs, data.num_rows)
        out = {kind: np.empty(shape, self.feed_dtypes[kind]) for kind, shape in shapes.items()}
        return encode(self.card, data, out)

    def graph_feed(self, data: pa.Table | pa.RecordBatch) -> dict[str, np.ndarray]:
        """Validate and encode `data` into fresh arrays of the inputs this graph declares, an
        imported one's included: `session.run(None, feed)` runs the graph on them."""
        encoded = self.encode(data)
        if self._foreign is None:
            return encoded.feed
        return {name: np.array(v) for name, v in self._foreign.feed(encoded, data).items()}

    def _zero_indices(self, rows: int) -> pa.Array:
        if len(self._zeros) < rows:
            self._zeros = numpy_array(np.zeros(rows, np.int32), pa.int32())
        return self._zeros.slice(0, rows)

    def _feed_buffers(self, rows: int) -> dict[str, np.ndarray]:
        """Contiguous [k, rows] views of the reused flat buffers (onnxruntime reads in place)."""
        views = {}
        for kind, shape in feed_shapes(self.card.inputs, rows).items():
            size = shape[0] * shape[1]
            if kind not in self._buffers or self._buffers[kind].size < size:
                self._buffers[kind] = np.empty(size, self.feed_dtypes[kind])
            views[kind] = self._buffers[kind][:size].reshape(shape)
        return views


def load_model(
    model_dir: str | Path | None = None, threads: int = 1, expected_sha256: str | None = None
) -> IntentModel:
    """Load a model directory (default: the bundled model); its checksum is verified every time,
    and with `expected_sha256` (a worker given the model its driver verified) it must be that."""
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    card, card_bytes = read_card(model_dir)
    graph = verify_checksum(model_dir, card)
    if expected_sha256 is not None and card.sha256 != expected_sha256:
        raise ChecksumError(
            f"{model_dir / GRAPH_FILE}: sha256 {card.sha256} is not the model this run verified "
            f"({expected_sha256})"
        )
    # onnxruntime raises its own, undocumented exception types: any of them is the graph's fault.
    with foreign_errors(
        str(model_dir), "onnxruntime cannot load model.onnx", error=ModelError, foreign=(Exception,)
    ):
        session = onnxruntime.InferenceSession(
            graph, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    _check_graph_matches_card(model_dir, card, session)
    return IntentModel(model_dir, card, session, {CARD_FILE: card_bytes, GRAPH_FILE: graph})


def default_model_dir() -> Path:
    """The bundled model: `models/intent-v1` of a checkout, else the copy installed with the
    package as `scorer.bundled_models` (pyproject maps the top-level `models/` there)."""
    root = Path(__file__).resolve().parents[2]  # scorer/model/runtime.py -> the checkout
    checkout = root / "models" / BUNDLED_MODEL
    if (root / "pyproject.toml").is_file() and (checkout / CARD_FILE).is_file():
        return checkout
    try:
        installed = Path(str(resources.files("scorer.bundled_models") / BUNDLED_MODEL))
    except ModuleNotFoundError:
        installed = None
    if installed is not None and (installed / CARD_FILE).is_file():
        return installed
    raise ModelError(
        f"no bundled model: neither {checkout} nor an installed "
        f"scorer.bundled_models/{BUNDLED_MODEL}"
    )


def _check_graph_matches_card(
    model_dir: Path, card: ModelCard, session: onnxruntime.InferenceSession
) -> None:
    """A card and graph from different trainings would score garbage; refuse them at load."""
    if card.imported is not None:
        _check_imported_graph(model_dir, card, session)
        return
    expected: dict[str, int] = {}
    for spec in card.inputs:
        expected[spec.kind] = expected.get(spec.kind, 0) + 1
    found = {i.name: i.shape[0] for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if found != expected or not outputs.issuperset(_OUTPUT_NAMES):
        raise ModelError(
            f"{model_dir}: model.onnx takes {found} and gives {sorted(outputs)}, but the card "
            f"describes inputs {expected} and outputs {list(_OUTPUT_NAMES)}"
        )
    wrong_types = [
        f"{i.name}: {i.type}"
        for i in session.get_inputs()
        if _ONNX_TENSOR_TYPES.get(i.type) not in ACCEPTED_FEED_DTYPES.get(i.name, ())
    ]
    if wrong_types:
        raise ModelError(
            f"{model_dir}: model.onnx takes inputs of types the scorer cannot feed: "
            f"{', '.join(wrong_types)}"
        )


_ONNX_ELEMENT_TYPES = {
    "float": "tensor(float)",
    "double": "tensor(double)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
    "string": "tensor(string)",
}


def _check_imported_graph(
    model_dir: Path, card: ModelCard, session: onnxruntime.InferenceSession
) -> None:
    """An imported graph takes the inputs its card's `imported` section describes."""
    assert card.imported is not None
    found = {i.name: i.type for i in session.get_inputs()}
    expected = {i.name: _ONNX_ELEMENT_TYPES[i.element_type] for i in card.imported.inputs}
    outputs = {o.name for o in session.get_outputs()}
    columns = {column for i in card.imported.inputs for column in i.columns}
    if (
        found != expected
        or not outputs.issuperset(_OUTPUT_NAMES)
        or columns != set(card.input_names)
    ):
        raise ModelError(
            f"{model_dir}: model.onnx takes {found} and gives {sorted(outputs)}, but the card "
            f"describes inputs {expected} from columns {sorted(columns)} and outputs "
            f"{list(_OUTPUT_NAMES)}"
        )
