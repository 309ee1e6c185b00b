"""The commit protocol driven by hand (docs/exactly-once.md): a run's steps before scoring, and
an actor's output written into the sink, for the manifest's and the lock's tests."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from scorer.pipeline.manifest import Manifest, options_digest
from scorer.pipeline.packing import plan_shards

SHA_A = "a" * 64
OPTS = options_digest("session_id", ())


def write_sessions(path, rows, row_group_size):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"session_id": pa.array(range(rows), pa.int64())}),
        path,
        row_group_size=row_group_size,
    )
    return path


def write_output(layout, shard, run_id, rows=None):
    """What an actor does: copy the shard's session ids (one row per input row) into the sink."""
    source = pq.ParquetFile(shard.input_path)
    with layout.open_shard_sink(shard, run_id) as sink:
        with pq.ParquetWriter(
            sink, pa.schema([("session_id", pa.int64()), ("intent_raw", pa.float32())])
        ) as writer:
            for rg in shard.row_groups:
                ids = source.read_row_group(rg, columns=["session_id"]).column(0)
                writer.write_table(
                    pa.table({"session_id": ids, "intent_raw": pa.nulls(len(ids), pa.float32())})
                )
    return shard.rows if rows is None else rows


def start_run(out, inputs, shard_rows, run_id, sha=SHA_A, overwrite=False):
    """The driver's sequence before scoring (see Manifest's docstring)."""
    manifest = Manifest.load(out)
    manifest.claim(
        model_name="intent",
        model_sha256=sha,
        options_digest=OPTS,
        run_id=run_id,
        overwrite=overwrite,
    )
    manifest.cleanup(run_id)
    files = [i for i in inputs if hasattr(i, "fingerprint")]
    manifest.adopt_legacy_fingerprints(files)
    manifest.supersede(files)
    ranges = manifest.committed_ranges(files, model_sha256=sha, options_digest=OPTS)
    return manifest, plan_shards(inputs, shard_rows, ranges)
