"""Arrow helpers that stay clear of pandas, shared by the model, the metrics and the pipeline.

In pyarrow 26 `pa.array(...)` on NumPy or lists, `pa.scalar`, `fill_null(<python value>)` and
`Array.to_numpy()` import pandas: 0.5 s and ~30-50 MB in every actor. These wrap buffers instead.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping, Sequence
from typing import Any

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


def table_from_rows(rows: Sequence[Mapping[str, object]], schema: pa.Schema) -> pa.Table:
    """Rows as dicts → a table of exactly `schema` (a missing key or None is a null).

    `pa.Table.from_pylist` (like `pa.array` on a list) imports pandas: 0.6 s of every run's
    ~1 s on a small input, to write its three small stats tables. This builds each column
    from NumPy buffers instead; types: integers, floats, booleans, strings, timestamps,
    dictionary<int32, string>, lists of numbers and structs of these.
    """
    columns = [_column([row.get(f.name) for row in rows], f.type, f.name) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _column(values: list[object], kind: pa.DataType, name: str) -> pa.Array:
    valid = np.fromiter((v is not None for v in values), bool, len(values))
    mask = None if valid.all() else valid
    if pa.types.is_dictionary(kind):
        words = sorted({str(v) for v in values if v is not None})
        index = {word: i for i, word in enumerate(words)}
        codes = np.fromiter((index.get(str(v), 0) for v in values), np.int32, len(values))
        indices = numpy_array(codes, pa.int32(), mask)
        return pa.DictionaryArray.from_arrays(indices, string_array(words)).cast(kind)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _strings([None if v is None else str(v) for v in values]).cast(kind)
    if pa.types.is_timestamp(kind):
        micros = np.fromiter((_micros(v) for v in values), np.int64, len(values))
        return numpy_array(micros, pa.timestamp("us", tz=kind.tz), mask).cast(kind)
    if pa.types.is_list(kind):
        lists = [list(v) if v is not None else [] for v in values]  # type: ignore[call-overload]
        offsets = np.zeros(len(lists) + 1, np.int32)
        np.cumsum([len(v) for v in lists], out=offsets[1:])
        flat = [x for v in lists for x in v]
        items = _column(flat, kind.value_type, name)
        array = pa.ListArray.from_arrays(numpy_array(offsets, pa.int32()), items)
        return array if mask is None else _with_nulls(array, mask)
    if pa.types.is_struct(kind):  # rows' dicts (or None) by field name
        fields = [kind.field(i) for i in range(kind.num_fields)]
        children = [_column([_field(v, f.name) for v in values], f.type, name) for f in fields]
        nulls = None if mask is None else _booleans(~mask, None)
        return pa.StructArray.from_arrays(children, fields=fields, mask=nulls)
    if pa.types.is_boolean(kind):
        flags = np.fromiter((bool(v) for v in values), bool, len(values))
        return _booleans(flags, mask)
    if str(kind) in _NUMPY_TYPES:
        dtype = _NUMPY_TYPES[str(kind)]
        numbers: np.ndarray = np.fromiter((0 if v is None else v for v in values), dtype)
        return numpy_array(numbers, kind, mask)
    raise TypeError(f"table_from_rows: column {name!r} of type {kind} is not supported")


_NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
}


def _micros(value: object) -> int:
    if value is None:
        return 0
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"expected a datetime, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _strings(values: list[str | None]) -> pa.Array:
    encoded = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int32)
    np.cumsum([len(v) for v in encoded], out=offsets[1:])
    valid = np.fromiter((v is not None for v in values), bool, len(values))
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        pa.string(),
        len(encoded),
        [validity, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
    )


def _field(row: object, name: str) -> object:
    return row.get(name) if isinstance(row, Mapping) else None


def _booleans(flags: np.ndarray, mask: np.ndarray | None) -> pa.Array:
    data = pa.py_buffer(np.packbits(flags, bitorder="little"))
    validity = None if mask is None else pa.py_buffer(np.packbits(mask, bitorder="little"))
    return pa.Array.from_buffers(pa.bool_(), len(flags), [validity, data])


def _with_nulls(array: pa.Array, valid: np.ndarray) -> pa.Array:
    validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(
        array.type, len(array), [validity, *array.buffers()[1:2]], children=[array.values]
    )
