"""`reading.coalesced`: the batches of consecutive files joined before they are scored (encoding
costs about the same per batch whatever its size), as a pure function over batches."""

import pyarrow as pa

from scorer.pipeline.plan import Piece
from scorer.pipeline.reading import coalesced


def _piece(path: str) -> Piece:
    return Piece(path, path, 0, 1, 0, 0, "fingerprint", path)


def _batch(start: int, rows: int, kind: pa.DataType | None = None) -> pa.RecordBatch:
    values = pa.array(range(start, start + rows), kind or pa.int64())
    return pa.record_batch([values], names=["session_id"])


def test_small_files_are_joined_up_to_the_limit_and_named_by_their_first_rows_file():
    reads = [(_piece(f"f{i}.parquet"), [_batch(10 * i, 10)]) for i in range(5)]
    got = list(coalesced(reads, limit=25))
    assert [b.data.num_rows for b in got] == [20, 20, 10]
    assert [b.input_path for b in got] == ["f0.parquet", "f2.parquet", "f4.parquet"]
    rows = [v for b in got for v in b.data.column("session_id").to_pylist()]
    assert rows == list(range(50))  # every row once, in order


def test_a_batch_over_the_limit_is_never_split():
    reads = [(_piece("big.parquet"), [_batch(0, 40), _batch(40, 40)])]
    assert [b.data.num_rows for b in coalesced(reads, limit=25)] == [40, 40]


def test_a_change_of_schema_between_files_ends_a_batch():
    reads = [
        (_piece("a.parquet"), [_batch(0, 5)]),
        (_piece("b.parquet"), [_batch(5, 5, pa.int32())]),
        (_piece("c.parquet"), [_batch(10, 5, pa.int32())]),
    ]
    got = list(coalesced(reads, limit=100))
    assert [(b.data.num_rows, b.input_path) for b in got] == [(5, "a.parquet"), (10, "b.parquet")]
