"""What `--format delta` costs the whole job: `scorer score` processes, Parquet against Delta.

Each round runs `python -m scorer score DATA OUT --format parquet` and then `--format delta`
into fresh OUTPUT folders (alternating, so both see the same machine state), timing the whole
process from start to exit; prints the medians of `--reps` rounds and their ratio. DATA is
generated when it does not exist (16M sessions in 32 files by default, ~20 s).

    python benchmarks/delta_cost.py [--data /work/bench-data/big-32] [--reps 3] [-- FLAGS...]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scorer.jobs.generate import generate


def main(formats: tuple[str, ...] = ("parquet", "delta")) -> None:
    """Time whole jobs of each of `formats` (the first is the baseline of the ratios)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/bench-data/big-32"))
    parser.add_argument("--sessions", type=int, default=16_000_000)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("flags", nargs="*", help="more `scorer score` flags (after --)")
    args = parser.parse_args()
    if not args.data.exists():
        generate(args.data, sessions=args.sessions, files=args.files, days=4, seed=1)
    seconds: dict[str, list[float]] = {f: [] for f in formats}
    with tempfile.TemporaryDirectory() as scratch:
        for rep in range(args.reps):
            for output_format in seconds:
                out = Path(scratch) / f"{output_format}-{rep}"
                command = [sys.executable, "-m", "scorer", "score", str(args.data), str(out)]
                started = time.perf_counter()
                subprocess.run(
                    [*command, "--format", output_format, *args.flags],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                seconds[output_format].append(time.perf_counter() - started)
                shutil.rmtree(out)
                print(f"round {rep + 1} {output_format}: {seconds[output_format][-1]:.1f} s")
    medians = {f: statistics.median(seconds[f]) for f in formats}
    base = medians[formats[0]]
    print(
        f"{args.data}: medians of {args.reps}, "
        + ", ".join(f"{f} {m:.1f} s" for f, m in medians.items())
        + ", ratios to "
        + formats[0]
        + ": "
        + ", ".join(f"{f} {m / base:.3f}" for f, m in medians.items() if f != formats[0])
    )


if __name__ == "__main__":
    main()
