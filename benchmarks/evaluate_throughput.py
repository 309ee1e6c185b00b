"""Throughput and peak memory of `scorer evaluate` over a scored OUTPUT and its late labels.

Generates a labelled history (or takes --data, one made by `scorer generate`), scores it once
with `scorer score` (labels and all), writes the label column with the key as LABELS (same file
layout), then runs `scorer evaluate OUTPUT LABELS --json` --reps times, each a process of its
own, and prints per run the process wall, the evaluation's own seconds and rows/s, and the
process's peak RSS; then the medians.

    python benchmarks/evaluate_throughput.py --work /tmp/eval-bench [--sessions 16000000]
        [--files 32] [--days 2] [--data DIR] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from scorer.jobs.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--sessions", type=int, default=16_000_000)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    data = args.data or args.work / "history"
    if not data.exists():
        generate(data, sessions=args.sessions, files=args.files, days=args.days, seed=0)
    output, labels = args.work / "out", args.work / "labels"
    if not output.exists():
        scorer = [sys.executable, "-m", "scorer"]
        subprocess.run([*scorer, "score", str(data), str(output)], check=True)
    if not labels.exists():
        for path in sorted(data.rglob("*.parquet")):
            target = labels / path.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pq.read_table(path, columns=["session_id", "converted"]), target)

    runs = []
    for rep in range(args.reps):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "scorer", "evaluate", str(output), str(labels), "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        # ru_maxrss of children is the largest child so far: exact for the first, a floor after.
        peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        summary = json.loads(done.stdout)
        runs.append((wall, summary["seconds"], summary["rows_per_second"], peak_mb))
        print(
            f"rep {rep + 1}: {summary['rows_scored']:,} rows, process {wall:.2f} s, evaluate "
            f"{summary['seconds']:.2f} s = {summary['rows_per_second']:,.0f} rows/s, "
            f"peak RSS {peak_mb:,.0f} MB"
        )
    wall, seconds, rate, _ = (statistics.median(column) for column in zip(*runs, strict=True))
    print(
        f"median of {args.reps}: process {wall:.2f} s, evaluate {seconds:.2f} s = {rate:,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
