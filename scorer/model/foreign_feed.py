"""The feed of an imported graph, built from a batch already validated by `scorer.model.encode`.

Validation, statuses, unseen values and drift stay those of every model: `encode` fills the
scorer's own feed (float32 [k, N] per kind) and this module lays the same values out as the
foreign graph declares its inputs, with NumPy passes per column and no per-row Python:

- a float matrix [N, F]: one C-contiguous float32 array, its columns written from the rows of
  `encode`'s feed (the float32 rounding `numpy.astype` gives, and zeros for invalid rows);
- a per-column input [N, 1] or [N]: the column in the declared element type (float64, int64
  and int32 straight from the Arrow values, so nothing is rounded through float32 first);
- a string input: an object array of the column's strings, from the dictionary when the column
  is dictionary-encoded (one Python string per distinct value, not per row), "" for nulls.
  onnxruntime takes strings only as NumPy object arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from scorer.arrow import fill_scalar, to_numpy
from scorer.model.card import GraphInput, Imported, InputSpec
from scorer.model.encode import EncodedBatch

_NUMPY_TYPES: dict[str, Any] = {
    "float": np.float32,
    "double": np.float64,
    "int64": np.int64,
    "int32": np.int32,
}


class ForeignFeed:
    """Builds an imported graph's feed; reuses its buffers, so a feed is valid until the next."""

    def __init__(self, inputs: tuple[InputSpec, ...], imported: Imported) -> None:
        slots: dict[str, int] = {}
        self._where: dict[str, tuple[str, int]] = {}  # column -> (kind, row of encode's feed)
        for spec in inputs:
            slot = slots.get(spec.kind, 0)
            self._where[spec.name] = (spec.kind, slot)
            slots[spec.kind] = slot + 1
        self._inputs = imported.inputs
        self._buffers: dict[str, np.ndarray] = {}

    def feed(self, encoded: EncodedBatch, data: pa.Table | pa.RecordBatch) -> dict[str, Any]:
        """The graph's inputs for the rows `encoded` came from (`data`)."""
        return {i.name: self._input(i, encoded, data) for i in self._inputs}

    def _input(self, graph_input: GraphInput, encoded: EncodedBatch, data: Any) -> np.ndarray:
        rows = encoded.rows
        if graph_input.element_type == "string":
            values = _strings(data.column(graph_input.columns[0]))
        elif graph_input.element_type == "float":
            width = len(graph_input.columns)
            values = self._buffer(graph_input.name, rows * width).reshape(rows, width)
            for j, column in enumerate(graph_input.columns):
                kind, slot = self._where[column]
                values[:, j] = encoded.feed[kind][slot]
        else:
            values = _numbers(data.column(graph_input.columns[0]), graph_input.element_type)
            if encoded.invalid_mask is not None:
                values[encoded.invalid_mask] = 0
        if len(graph_input.shape) == 1:
            return values.reshape(rows)
        return values.reshape(rows, -1)

    def _buffer(self, name: str, size: int) -> np.ndarray:
        if name not in self._buffers or self._buffers[name].size < size:
            self._buffers[name] = np.empty(size, np.float32)
        return self._buffers[name][:size]


def _numbers(column: pa.Array | pa.ChunkedArray, element_type: str) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        column = column.fill_null(fill_scalar(0, column.type))
    with np.errstate(invalid="ignore", over="ignore"):
        values = (
            np.nan_to_num(to_numpy(column))
            if pa.types.is_floating(column.type)
            else to_numpy(column)
        )
        return np.asarray(values).astype(_NUMPY_TYPES[element_type])


def _strings(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            values = np.asarray(chunk.dictionary.to_pylist() + [""], dtype=object)
            indices = chunk.indices.fill_null(len(chunk.dictionary))
            parts.append(values[to_numpy(indices)])
        else:
            strings = chunk.cast(pa.string()) if not pa.types.is_string(chunk.type) else chunk
            parts.append(
                np.asarray(strings.fill_null("").to_numpy(zero_copy_only=False), dtype=object)
            )
    return np.concatenate(parts) if parts else np.empty(0, dtype=object)
