"""Row groups read from object storage in a few ranged requests (`scorer.pipeline.ranges`): the
ranges planned from a footer cover the columns read, neighbours merged and long ones split, and
a group decoded from them is the group a plain read gives; a read the plan did not foresee is
served and counted. Real Parquet files on local disk stand in for the objects."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from scorer.jobs.generate import generate
from scorer.pipeline.ranges import (
    HOLE_BYTES,
    RANGE_BYTES,
    RangeFile,
    ReadCounts,
    column_indices,
    group_ranges,
)


def test_row_group_ranges_cover_the_columns_read_and_decode_alike(tmp_path):
    generate(tmp_path / "in", sessions=3_000, files=1, days=1, seed=3, row_group_rows=1_000)
    path = str(next((tmp_path / "in").rglob("*.parquet")))
    metadata = pq.read_metadata(path)
    columns = metadata.schema.names[2:9]
    source = pa.OSFile(path)
    size = source.size()
    ranges = group_ranges(metadata, 1, column_indices(metadata, columns), size)
    assert len(ranges) == 1  # the chunks of one group lie together: one request
    counts = ReadCounts()
    fetched = [(offset, source.read_at(n, offset)) for offset, n in ranges]
    view = pa.PythonFile(RangeFile(source, size, fetched, counts), mode="r")
    decoded = pq.ParquetFile(view, metadata=metadata, pre_buffer=False).read_row_group(
        1, columns=columns
    )
    assert decoded.equals(pq.ParquetFile(path).read_row_group(1, columns=columns))
    assert counts.requests == 0  # nothing read outside the planned ranges


def _spread_file(path, gap_bytes: int) -> pq.FileMetaData:
    """One row group: small columns `a` and `c` with `gap_bytes` of incompressible `b` between."""
    rows = 16
    table = pa.table(
        {
            "a": pa.array(range(rows), pa.int64()),
            "b": pa.array([os.urandom(gap_bytes // rows) for _ in range(rows)], pa.binary()),
            "c": pa.array(range(rows), pa.int64()),
        }
    )
    pq.write_table(table, path, compression="none", use_dictionary=False)
    return pq.read_metadata(path)


def test_chunks_further_apart_than_a_hole_are_two_requests_and_closer_ones_one(tmp_path):
    path = tmp_path / "spread.parquet"
    metadata = _spread_file(path, 2 * HOLE_BYTES)
    size = path.stat().st_size
    apart = group_ranges(metadata, 0, column_indices(metadata, ["a", "c"]), size)
    assert len(apart) == 2  # b's 2 MiB between them are not read along
    assert sum(n for _, n in apart) < HOLE_BYTES
    whole = group_ranges(metadata, 0, column_indices(metadata, ["a", "b", "c"]), size)
    assert len(whole) == 1 and whole[0][1] > 2 * HOLE_BYTES

    path = tmp_path / "close.parquet"
    metadata = _spread_file(path, HOLE_BYTES // 2)
    close = group_ranges(metadata, 0, column_indices(metadata, ["a", "c"]), path.stat().st_size)
    assert len(close) == 1  # half a MiB between them is read along: one request, not two


def test_a_range_longer_than_the_limit_is_split_into_contiguous_parts(tmp_path):
    path = tmp_path / "long.parquet"
    metadata = _spread_file(path, RANGE_BYTES + RANGE_BYTES // 2)
    ranges = group_ranges(metadata, 0, column_indices(metadata, ["b"]), path.stat().st_size)
    assert len(ranges) == 2 and ranges[0][1] == RANGE_BYTES
    assert ranges[0][0] + ranges[0][1] == ranges[1][0]  # no byte skipped, none read twice
    column = metadata.row_group(0).column(1)
    assert sum(n for _, n in ranges) == column.total_compressed_size


def test_a_read_outside_the_fetched_ranges_is_served_and_counted(tmp_path):
    path = tmp_path / "bytes.bin"
    path.write_bytes(bytes(range(256)) * 4)
    source = pa.OSFile(str(path))
    counts = ReadCounts()
    view = RangeFile(source, 1024, [(100, source.read_at(50, 100))], counts)
    view.seek(110)
    assert view.read(10) == bytes(range(110, 120)) and counts.requests == 0  # from memory
    view.seek(-4, 2)
    assert view.read() == bytes(range(252, 256))  # beyond the ranges: from the source
    assert (counts.requests, counts.bytes_read) == (1, 4)
    assert view.tell() == 1024
