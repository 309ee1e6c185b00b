"""Scaling benchmark on a Ray cluster: the same library call as `scorer bench`.

    python jobs/scaling_bench.py --out /tmp/bench --actors 1,2,4,8,16
    ray job submit --working-dir . -- python jobs/scaling_bench.py --out /tmp/bench --actors 1,2,4,8

Under `ray job submit`, RAY_ADDRESS is set for the driver and the scorer and Ray Data contestants
join that cluster; locally each scorer run starts its own private Ray. The I/O floor runs as plain
processes on the driver's machine, so floor counts above its CPUs are skipped. Prints the median
table as JSON lines and writes measurements.parquet and the plots under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this file from an unpacked copy of the repository, where
# the package is importable from the working directory but not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scorer import ScorerError
from scorer.config import DEFAULT_BATCH_ROWS
from scorer.jobs.bench import DEFAULT_REPS, DEFAULT_SESSIONS, run_bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for data, measurements and plots")
    parser.add_argument("--data", help="an existing session data set (default: generate one)")
    parser.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS)
    parser.add_argument("--files", type=int, help="files to generate (default: 4 per actor, >= 8)")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS)
    parser.add_argument("--actors", help="actor counts, e.g. 1,2,4,8 (default: 1..CPUs)")
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS)
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster (default: RAY_ADDRESS, else a private local Ray)",
    )
    args = parser.parse_args(argv)
    try:
        result = run_bench(
            args.out,
            data=args.data,
            sessions=args.sessions,
            files=args.files,
            reps=args.reps,
            actors=[int(n) for n in args.actors.split(",")] if args.actors else None,
            batch_rows=args.batch_rows,
            address=args.address,
            on_message=lambda text: print(text, file=sys.stderr, flush=True),
        )
    except ScorerError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    for row in result.medians():
        print(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
