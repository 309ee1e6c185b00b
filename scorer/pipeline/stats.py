"""Throughput statistics: one row per shard attempt and one row per run (docs/output.md).

Both are written as Parquet under OUTPUT (``layout.SHARD_STATS``, ``layout.RUN_STATS``), one
``run_id=<RUN_ID>`` folder per run, so that DuckDB, Polars or pandas read every run at once with
hive partitioning. What goes into the rows is kept by ``ledger.Ledger``.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorer.arrow import RUN_ID_TYPE, table_from_rows

ShardStatus = Literal["committed", "skipped", "failed", "interrupted"]
"""The ``status`` of a shard attempt (``skipped``: committed by an earlier run)."""
RunStatus = Literal["completed", "failed", "interrupted", "dry-run"]
"""The ``status`` of a run."""

Stage = Literal["read", "encode", "infer", "write"]
STAGES: tuple[Stage, ...] = get_args(Stage)
"""The stages of a shard in an actor, in order; each has a ``<stage>_seconds`` stats column."""

_TS = pa.timestamp("us", tz="UTC")

SHARD_STATS_SCHEMA = pa.schema(
    [
        ("run_id", RUN_ID_TYPE),
        ("shard_id", pa.string()),
        ("input_path", pa.string()),
        ("row_group_start", pa.int32()),
        ("row_group_stop", pa.int32()),
        ("input_files", pa.int32()),
        ("output_path", pa.string()),
        ("rows", pa.int64()),
        ("rows_read", pa.int64()),
        ("rows_ok", pa.int64()),
        ("rows_invalid", pa.int64()),
        ("rows_unseen_category", pa.int64()),
        ("input_bytes", pa.int64()),
        ("output_bytes", pa.int64()),
        ("peak_rss_bytes", pa.int64()),
        ("requests", pa.int64()),
        ("bytes_read", pa.int64()),
        ("read_seconds", pa.float64()),
        ("encode_seconds", pa.float64()),
        ("infer_seconds", pa.float64()),
        ("write_seconds", pa.float64()),
        ("total_seconds", pa.float64()),
        ("cpu_seconds", pa.float64()),
        ("actor_id", pa.string()),
        ("node_id", pa.string()),
        ("node_ip", pa.string()),
        ("pid", pa.int64()),
        ("attempt", pa.int32()),
        ("started_at", _TS),
        ("ended_at", _TS),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)
"""`status`: committed, skipped (committed by an earlier run), failed, interrupted.
`input_path`, `row_group_start/stop`: the shard's first file and its row groups; `input_files`:
how many files the shard read (a shard packs the small files of one folder; null in the rows of
runs before shards packed files, which DuckDB reads alongside with ``union_by_name``).
`rows_read`: a shard of some days of a row group (a day filter on a day column): the rows of its
row groups read, of which `rows` were selected and scored; null otherwise.
`peak_rss_bytes`: the actor process's peak resident memory when it finished the shard.
`requests`, `bytes_read`: on object storage, the requests the actor made reading the shard (its
files' HEADs, footers and ranged reads) and the bytes they returned; null for local input and in
the rows of runs before they were counted.
`*_seconds` of a stage: the wall time of that stage's thread (the stages overlap, so they add up
to more than `total_seconds`). `cpu_seconds`: the actor process's CPU time, all threads, while
it scored the shard; `cpu_seconds / total_seconds` is the cores the actor used."""

RUN_STATS_SCHEMA = pa.schema(
    [
        ("run_id", RUN_ID_TYPE),
        ("status", pa.string()),
        ("started_at", _TS),
        ("ended_at", _TS),
        ("wall_seconds", pa.float64()),
        ("setup_seconds", pa.float64()),
        ("work_seconds", pa.float64()),
        ("cpu_seconds", pa.float64()),
        ("rows", pa.int64()),
        ("rows_read", pa.int64()),
        ("rows_without_day", pa.int64()),
        ("row_groups_pruned", pa.int64()),
        ("rows_per_second", pa.float64()),
        ("work_rows_per_second", pa.float64()),
        ("rows_skipped", pa.int64()),
        ("shards_committed", pa.int64()),
        ("shards_skipped", pa.int64()),
        ("shards_failed", pa.int64()),
        ("attempts_failed", pa.int64()),
        ("actors", pa.int64()),
        ("cpus", pa.float64()),
        ("nodes", pa.int64()),
        ("batch_rows", pa.int64()),
        ("shard_rows", pa.int64()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("model_sha256", pa.string()),
        ("scorer_version", pa.string()),
        ("ray_version", pa.string()),
        ("onnxruntime_version", pa.string()),
        ("pyarrow_version", pa.string()),
        ("delta_version", pa.int64()),
        (
            "iceberg",
            pa.struct(
                [("catalog_uri", pa.string()), ("table", pa.string()), ("snapshot_id", pa.int64())]
            ),
        ),
    ]
)
"""`rows_per_second` is over the wall time; `work_rows_per_second` over the work window (first
shard dispatched to last shard finished), the figure that compares with the I/O floor.
`cpu_seconds`: the actors' CPU time over the shards committed in this run. `delta_version`: with
`--format delta`, the version of the scores table once this run published (null otherwise, and
for a run interrupted before publishing). `iceberg`: with `--format iceberg`, the catalog (its
secrets redacted), the table and the snapshot current once this run published (docs/iceberg.md)."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def stats_table(rows: Sequence[Mapping[str, object]], schema: pa.Schema) -> pa.Table:
    """Rows as dicts → a table of exactly `schema` (missing keys become nulls)."""
    return table_from_rows(rows, schema)


def write_table(filesystem: pafs.FileSystem, path: str, table: pa.Table) -> int:
    """Write a small table as one Parquet file in one put (whole or absent on object storage)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    payload = buffer.getvalue()
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(payload)
    return len(payload)
