"""What `--format iceberg` costs the whole job: `scorer score` processes, Parquet, Delta, Iceberg.

The rounds of `delta_cost.py` with a third format: each round runs `--format parquet`, `delta`
and `iceberg` into fresh OUTPUT folders (alternating, so all three see the same machine state),
timing each whole process from start to exit; prints the medians of `--reps` rounds and their
ratios to Parquet. The Iceberg runs use the embedded SQLite catalog (nothing to configure).

    python benchmarks/iceberg_cost.py [--data /work/bench-data/big-32] [--reps 3] [-- FLAGS...]
"""

from __future__ import annotations

from delta_cost import main

if __name__ == "__main__":
    main(("parquet", "delta", "iceberg"))
