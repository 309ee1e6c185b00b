"""The limits an input file must keep (docs/limits.md), checked before what they bound is read.

A Parquet file says in its footer how large its parts are, and a hostile or broken writer can
say anything: a footer of gigabytes, a million row groups, or one megabyte-long string in a
dictionary that every row points at (a few bytes on disk, gigabytes decoded per batch). Such a
file fails alone with `InputLimitError`, named, like a corrupt one; the rest of the run commits.

- `MAX_FOOTER_BYTES` and `MAX_ROW_GROUPS` are checked when the plan reads the footer
  (`footers.read_footer`, `scan._read_footer`).
- `MAX_STRING_BYTES_PER_BATCH` is checked for each row group before the reader decodes it
  (`reading.ShardReader`): the key and kept string columns' decoded size is bounded from the
  footer and, for dictionary-encoded column chunks, from the longest value of the dictionary
  page (read and parsed here: a few kilobytes, where decoding is what must not happen).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scorer.errors import InputLimitError

MAX_FOOTER_BYTES = 64 * 1024 * 1024
"""A footer larger than this fails its file. The driver holds every file's parsed footer while
it plans, and a parse takes several times the serialized size: a footer of gigabytes would take
the driver down before a row is scored. 64 MiB describes some 20,000 row groups of 20 columns
with statistics; common footers are kilobytes."""

MAX_ROW_GROUPS = 20_000
"""A file of more row groups than this fails alone. A row group is the unit the planner cuts
and the reader decodes: each costs the plan its sizes and the reader a call (and on object
storage a request). 20,000 is 20 billion rows at pyarrow's default row group, 2.4 billion at
DuckDB's; a file beyond is not one a writer made for reading."""

MAX_STRING_BYTES_PER_BATCH = 512 * 1024 * 1024
"""The key and kept string columns of one batch decode to at most this many bytes. A worker holds
a few batches at a time (read, scored, written); 512 MiB is 4 KiB a row at the default 131,072
rows a batch, some 100 times what a session id and a few kept labels take, and still inside the
default memory of an actor. The bound is checked per row group, before it is decoded."""

_BYTE_ARRAY = "BYTE_ARRAY"
_DICTIONARY_PAGE = 2  # parquet.thrift PageType.DICTIONARY_PAGE
_HEADER_READ = 256  # bytes read for a dictionary page header (a few dozen in practice)
# pyarrow codec names of Parquet's compressions; others (LZ4 with Hadoop's framing, LZO) are
# bounded by the page's size instead of its values.
_CODECS = {
    "SNAPPY": "snappy",
    "GZIP": "gzip",
    "BROTLI": "brotli",
    "ZSTD": "zstd",
    "LZ4_RAW": "lz4_raw",
}

ReadAt = Callable[[int, int], bytes]
"""`read(offset, nbytes)`: bytes of the open input file."""


def check_footer_bytes(footer_bytes: int) -> None:
    """`InputLimitError` for a footer longer than `MAX_FOOTER_BYTES` (before it is read)."""
    if footer_bytes > MAX_FOOTER_BYTES:
        raise InputLimitError(
            f"footer of {footer_bytes:,} bytes, beyond the limit of {MAX_FOOTER_BYTES:,} "
            "(docs/limits.md)"
        )


def check_row_groups(metadata: pq.FileMetaData) -> None:
    """`InputLimitError` for a file of more than `MAX_ROW_GROUPS` row groups."""
    if metadata.num_row_groups > MAX_ROW_GROUPS:
        raise InputLimitError(
            f"{metadata.num_row_groups:,} row groups, beyond the limit of {MAX_ROW_GROUPS:,} "
            "(docs/limits.md)"
        )


def string_leaves(metadata: pq.FileMetaData, columns: Iterable[str]) -> list[int]:
    """The leaf indices of the flat `columns` stored as byte arrays (strings, binaries).

    By leaf name first: walking every column's descriptor cost ~130 µs a 19-column footer
    (measured), a tenth of what a small file costs to read in all."""
    wanted = set(columns)
    schema = metadata.schema
    return [
        j
        for j, name in enumerate(schema.names)
        if name in wanted and schema.column(j).physical_type == _BYTE_ARRAY
    ]


def check_string_bytes(
    metadata: pq.FileMetaData,
    group: int,
    leaves: list[int],
    batch_rows: int,
    read_at: ReadAt | None,
    where: str,
) -> None:
    """`InputLimitError` where row group `group`'s `leaves` (`string_leaves`) may decode to
    more than `MAX_STRING_BYTES_PER_BATCH` in a batch of `batch_rows` rows (`string_bound`)."""
    bound, column = string_bound(metadata, group, leaves, batch_rows, read_at)
    if bound > MAX_STRING_BYTES_PER_BATCH:
        raise InputLimitError(
            f"{where}: row group {group}: key and kept strings (most in column {column!r}) may "
            f"decode to {bound:,} bytes a batch, beyond the limit of "
            f"{MAX_STRING_BYTES_PER_BATCH:,} (docs/limits.md)",
            input_path=where,
        )


def string_bound(
    metadata: pq.FileMetaData,
    group: int,
    leaves: list[int],
    batch_rows: int,
    read_at: ReadAt | None,
) -> tuple[int, str]:
    """How many bytes row group `group`'s `leaves` may decode to in a batch, and the column
    that may take most.

    Values written out (plain pages) decode to less than the pages hold: the column chunk's
    uncompressed size bounds them. Dictionary-encoded rows decode to at most the longest
    dictionary value each; that value is read from the dictionary page (`read_at`), or bounded
    by the chunk's size where the page is not read (`read_at` None, an unknown codec).
    """
    row_group = metadata.row_group(group)
    rows = min(row_group.num_rows, batch_rows)
    bound, largest, column = 0, -1, ""
    for j in leaves:
        chunk = row_group.column(j)
        size = chunk.total_uncompressed_size
        if chunk.has_dictionary_page or _dictionary_encoded(chunk):
            size += rows * _longest_dictionary_value(chunk, read_at, rows)
        bound += size
        if size > largest:
            largest, column = size, chunk.path_in_schema
    return bound, column


def _dictionary_encoded(chunk: pq.ColumnChunkMetaData) -> bool:
    return any("DICTIONARY" in encoding for encoding in chunk.encodings)


def _longest_dictionary_value(
    chunk: pq.ColumnChunkMetaData, read_at: ReadAt | None, rows: int
) -> int:
    """The longest value of the chunk's dictionary page, or a bound of it (its size)."""
    ceiling = chunk.total_uncompressed_size  # no value is longer than the pages holding it
    if rows * ceiling <= MAX_STRING_BYTES_PER_BATCH or read_at is None:
        return ceiling  # within the limit even so (small row groups): nothing to read
    offset = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    header = read_at(offset, _HEADER_READ)
    parsed = _page_header(header)
    if parsed is None or parsed[0] != _DICTIONARY_PAGE:
        return ceiling
    _, uncompressed, compressed, count, length = parsed
    ceiling = min(ceiling, uncompressed)
    if rows * ceiling <= MAX_STRING_BYTES_PER_BATCH:
        return ceiling
    data = read_at(offset + length, compressed)
    if chunk.compression != "UNCOMPRESSED":
        codec = _CODECS.get(chunk.compression)
        if codec is None:
            return ceiling
        try:
            data = pa.decompress(data, decompressed_size=uncompressed, codec=codec).to_pybytes()
        except (pa.ArrowException, ValueError):
            return ceiling
    return _longest_plain(data, count, ceiling)


def _longest_plain(page: bytes, count: int, ceiling: int) -> int:
    """The longest of `count` PLAIN byte arrays (each a 4-byte length and its bytes)."""
    if (
        count
        and len(page) >= 4
        and len(page) == count * (4 + (width := int.from_bytes(page[:4], "little")))
    ):
        # Values of one width (zero-padded ids, UUIDs: most keys) are checked in one pass:
        # ~1 ms instead of ~28 ms for the 1 MB page of a 1M-row group of 21-byte keys (measured).
        lengths = np.ndarray((count,), "<u4", page, 0, (4 + width,))
        if (lengths == width).all():
            return width
    longest = position = 0
    unpack = struct.Struct("<I").unpack_from
    for _ in range(count):
        if position + 4 > len(page):
            return ceiling  # not what the header said: bound it instead
        (size,) = unpack(page, position)
        longest = max(longest, size)
        position += 4 + size
    return longest


def _page_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """A Parquet page header (Thrift compact protocol): its type, uncompressed and compressed
    sizes, the dictionary's value count, and the header's own length; None if not parsed."""
    reader = _Compact(data)
    fields: dict[int, int] = {}
    try:
        for field, kind in reader.fields():
            if field in (1, 2, 3) and kind == 5:
                fields[field] = reader.varint_signed()
            elif field == 7 and kind == 12:  # dictionary_page_header: num_values is field 1
                for inner, inner_kind in reader.fields():
                    if inner == 1 and inner_kind == 5:
                        fields[7] = reader.varint_signed()
                    else:
                        reader.skip(inner_kind)
            else:
                reader.skip(kind)
    except IndexError:
        return None
    if not {1, 2, 3, 7} <= fields.keys():
        return None
    return fields[1], fields[2], fields[3], fields[7], reader.position


class _Compact:
    """The few Thrift compact-protocol reads a page header needs."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def byte(self) -> int:
        value = self.data[self.position]
        self.position += 1
        return value

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    def varint_signed(self) -> int:
        value = self.varint()
        return (value >> 1) ^ -(value & 1)

    def fields(self) -> Iterable[tuple[int, int]]:
        """(field id, type) of a struct's fields, up to its stop byte."""
        last = 0
        while True:
            header = self.byte()
            if header == 0:
                return
            delta, kind = header >> 4, header & 0x0F
            last = last + delta if delta else self.varint_signed()
            yield last, kind

    def skip(self, kind: int) -> None:
        if kind in (1, 2):  # booleans live in the type nibble
            return
        if kind == 3:
            self.position += 1
        elif kind in (4, 5, 6):
            self.varint()
        elif kind == 7:
            self.position += 8
        elif kind == 8:
            self.position += self.varint()
        elif kind == 12:
            for _, inner in self.fields():
                self.skip(inner)
        elif kind in (9, 10):
            header = self.byte()
            size = header >> 4 if header >> 4 != 15 else self.varint()
            for _ in range(size):
                self.skip(header & 0x0F)
        else:
            raise IndexError(f"thrift type {kind} not expected in a page header")
