"""What the drift state costs the scoring thread: `score_batch` with and without it.

Generated sessions are read as an actor reads them (batches of `--batch-rows`, string
categoricals as dictionaries) and scored in-process with the bundled model, alternating
`score_batch(batch)` and `score_batch(batch, drift=True)` over all batches; prints the medians
of `--reps` rounds per million rows, their ratio, and the drift state's own seconds.

    python benchmarks/drift_cost.py [--rows 1048576] [--batch-rows 131072] [--reps 9]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from scorer.config import DEFAULT_BATCH_ROWS
from scorer.jobs.generate import generate
from scorer.model.runtime import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 20)
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS)
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    model = load_model()
    with tempfile.TemporaryDirectory() as data:
        generate(data, sessions=args.rows, files=2, days=2, seed=1)
        batches = [
            batch
            for path in sorted(Path(data).rglob("*.parquet"))
            for batch in pq.ParquetFile(
                path, read_dictionary=model.categorical_string_columns
            ).iter_batches(batch_size=args.batch_rows, columns=list(model.required_columns))
        ]

    def run(drift: bool) -> tuple[float, float]:
        started, drift_seconds = time.perf_counter(), 0.0
        for batch in batches:
            drift_seconds += model.score_batch(batch, drift=drift).drift_seconds
        return time.perf_counter() - started, drift_seconds

    for _ in range(2):  # warm-up: buffers, caches
        run(False), run(True)
    without, with_drift, drift_only = [], [], []
    for _ in range(args.reps):
        without.append(run(False)[0])
        seconds, drift_seconds = run(True)
        with_drift.append(seconds)
        drift_only.append(drift_seconds)
    per_million = 1e9 / args.rows  # seconds -> ms per 1M rows
    off, on = statistics.median(without), statistics.median(with_drift)
    print(
        f"{args.rows:,} rows in batches of {args.batch_rows:,}, medians of {args.reps}: "
        f"score_batch {off * per_million:.1f} ms per 1M rows, with drift {on * per_million:.1f} "
        f"ms (ratio {on / off:.3f}); the drift state alone "
        f"{statistics.median(drift_only) * per_million:.1f} ms"
    )


if __name__ == "__main__":
    main()
