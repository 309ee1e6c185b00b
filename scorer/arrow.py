"""Arrow helpers that stay clear of pandas, shared by the model, the metrics and the pipeline.

In pyarrow 26 `pa.array(...)` on NumPy or lists, `pa.scalar`, `fill_null(<python value>)` and
`Array.to_numpy()` import pandas: 0.5 s and ~30-50 MB in every actor. These wrap buffers instead.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

# The folders are hive-partitioned by run_id, and pyarrow (so pandas) infers a partition key as
# dictionary<int32, string>: a file column of the same name must have that type too, or reading
# OUTPUT/stats/shards as one dataset fails ("Unable to merge: Field run_id has incompatible types").
RUN_ID_TYPE = pa.dictionary(pa.int32(), pa.string())


def numpy_array(values: np.ndarray, kind: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """A contiguous NumPy array as an Arrow array of `kind`, zero-copy; `valid`: False = null.

    Not `pa.array`: on NumPy or Python input it imports pandas (0.5 s and ~50 MB in every
    actor) and checks for pandas types on each call; this wraps the buffer and copies nothing.
    """
    validity = None
    if valid is not None:
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(kind, len(values), [validity, pa.py_buffer(values)])


def to_numpy(array: pa.Array) -> np.ndarray:
    """A null-free Arrow array of numbers or booleans as NumPy: a zero-copy view of its buffer
    (booleans are unpacked from bits). `Array.to_numpy` imports pandas in pyarrow 26 (see
    `numpy_array`); this reads the buffer directly."""
    if array.null_count:
        raise ValueError("to_numpy takes arrays without nulls; fill them first")
    start, stop = array.offset, array.offset + len(array)
    data = array.buffers()[1]
    if pa.types.is_boolean(array.type):
        bits = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
        return np.unpackbits(bits, count=stop, bitorder="little")[start:].view(bool)
    if pa.types.is_floating(array.type):
        kind = "f"
    elif pa.types.is_integer(array.type):
        kind = "i" if pa.types.is_signed_integer(array.type) else "u"
    else:
        raise TypeError(f"to_numpy takes numbers or booleans, not {array.type}")
    dtype = np.dtype(f"{kind}{array.type.bit_width // 8}")
    if data is None:  # a zero-length array may have no buffer
        return np.zeros(0, dtype)
    return np.frombuffer(data, dtype, count=len(array), offset=start * dtype.itemsize)


@functools.lru_cache(maxsize=64)
def fill_scalar(value: int, kind: pa.DataType) -> pa.Scalar:
    """A fill value for `fill_null`: a Python one goes through `pa.scalar`, which imports pandas."""
    return numpy_array(np.array([value], np.int64), pa.int64()).cast(kind)[0]


def string_array(values: Sequence[str]) -> pa.Array:
    """A small Arrow string array (vocabularies, dictionaries) without `pa.array` (see above)."""
    encoded = [value.encode() for value in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(value) for value in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )
