"""Peak memory of an actor scoring one file written as a single row group of N rows.

pandas' `to_parquet` and many Spark jobs write a small file as one row group, and a row group
is one shard: the actor's memory must stay bounded by a batch, not grow with the group. The
file is generated in a process of its own (its memory is not this one's), then scored here with
`ShardScorer` on the actor's stage threads, as `tests/pipeline/test_actor.py` does; the process's peak
resident memory (VmHWM) is printed after the model is loaded and after the shard.

    python benchmarks/row_group_memory.py [--rows 2000000] [--batch-rows 65536] [--data DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from pathlib import Path

from scorer.model.runtime import load_model
from scorer.pipeline.layout import OutputLayout
from scorer.pipeline.memory import peak_rss_bytes
from scorer.pipeline.outcome import Identity
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.scan import scan_inputs
from scorer.pipeline.shipping import ActorSettings
from scorer.pipeline.stages import ShardScorer, StageThreads, stream_shard
from scorer.storage import resolve

MB = 1_000_000


def _write(where: str, rows: int) -> None:
    from scorer.jobs.generate import generate

    generate(where, sessions=rows, files=1, days=1, seed=7, row_group_rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch-rows", type=int, default=65_536)
    parser.add_argument("--data", type=Path, help="where the file is (written if absent)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="row-group-memory-"))
    data = args.data or work / "in"
    if not data.exists():
        writer = multiprocessing.get_context("spawn").Process(
            target=_write, args=(str(data), args.rows)
        )
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise SystemExit(f"generating {args.rows:,} rows failed")

    model = load_model()
    settings = ActorSettings(
        model_files={},
        threads=1,
        batch_rows=args.batch_rows,
        key_column=model.card.key_column,
        keep=(),
        label_column=model.card.label_column,
        run_id="row-group-memory",
        input_location=resolve(data),
        layout=OutputLayout(resolve(work / "out")),
    )
    (shard,) = plan_shards(scan_inputs(resolve(data)), shard_rows=args.rows).shards
    loaded = peak_rss_bytes()
    threads = StageThreads.start()
    identity = Identity(actor_id="bench", node_id="", node_ip="127.0.0.1", pid=0)
    started = time.perf_counter()
    try:
        outcome = asyncio.run(
            stream_shard(ShardScorer(settings, model), shard, True, threads, identity)
        )
    finally:
        threads.shutdown()
    seconds = time.perf_counter() - started
    print(
        f"{outcome.rows:,} rows in one row group ({shard.input_bytes / MB:.0f} MB compressed): "
        f"peak RSS {peak_rss_bytes() / MB:.0f} MB (model loaded: {loaded / MB:.0f} MB), "
        f"{seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
