"""How fast small files can be scored here: the scorer on the same rows in few and in many files,
against what the fastest readers take only to read the many.

Issue 11 asks the work window of 4,000 small files to reach 0.8x the rows/s of the same rows in
32 files. Each round, alternating: `scorer score FEW OUT --json` and `scorer score MANY OUT --json`
(their work-window rows/s from the summary), then Polars and DuckDB reading every column of MANY
into memory on all cores and doing nothing else (wall and CPU seconds in a process of their own,
imports excluded). Prints medians, and the CPU the target leaves for the many files (the cores
times the work window it allows): what a reader alone takes of it is what the scoring and the
writing of the rows cannot have. Both data sets are generated when
missing (4M sessions: 32 files, ~2 s; 4,000 files, ~10 s).

    python benchmarks/small_files_ceiling.py [--out bench] [--sessions 4000000] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scorer.jobs.bench import bench_data
from scorer.jobs.whole_job import scorer_bin

# Each reader in a process of its own, timed after its import: what reading the files costs.
READ_ONLY = {
    "polars": """
import glob, sys, time
import polars as pl
files = sorted(glob.glob(sys.argv[1] + '/**/*.parquet', recursive=True))
started, cpu = time.perf_counter(), time.process_time()
rows = pl.scan_parquet(files, hive_partitioning=False).collect().height
print(time.perf_counter() - started, time.process_time() - cpu, rows)
""",
    "duckdb": """
import glob, sys, time
import duckdb
files = sorted(glob.glob(sys.argv[1] + '/**/*.parquet', recursive=True))
started, cpu = time.perf_counter(), time.process_time()
relation = duckdb.connect().sql(
    'SELECT * FROM read_parquet($files, hive_partitioning = false)', params={'files': files}
)
rows = relation.to_arrow_table().num_rows
print(time.perf_counter() - started, time.process_time() - cpu, rows)
""",
}
# What reading the few files costs the scorer's own reader (pyarrow, row group by row group, one
# thread): taken from the few-files job's CPU, it leaves what scoring and writing the rows cost.
READ_FEW = """
import glob, sys, time
import pyarrow.parquet as pq
files = sorted(glob.glob(sys.argv[1] + '/**/*.parquet', recursive=True))
started, cpu, rows = time.perf_counter(), time.process_time(), 0
for path in files:
    parquet = pq.ParquetFile(path)
    for group in range(parquet.num_row_groups):
        rows += parquet.read_row_group(group, use_threads=False).num_rows
print(time.perf_counter() - started, time.process_time() - cpu, rows)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--sessions", type=int, default=4_000_000)
    parser.add_argument("--few", type=int, default=32, help="files of the few-files set")
    parser.add_argument("--many", type=int, default=4_000, help="files of the small-files set")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    few, many = (bench_data(args.out, args.sessions, n, 0, print) for n in (args.few, args.many))
    rates: dict[str, list[float]] = {"few": [], "many": []}
    work_cpu: dict[str, list[float]] = {"few": [], "many": []}
    read_few: list[tuple[float, float]] = []
    reads: dict[str, list[tuple[float, float]]] = {name: [] for name in READ_ONLY}
    with tempfile.TemporaryDirectory() as scratch:
        for rep in range(args.reps):
            for name, data in (("few", few), ("many", many)):
                rate, cpu = _scored(data, Path(scratch) / f"{name}-{rep}")
                rates[name].append(rate)
                work_cpu[name].append(cpu)
            read_few.append(_read_seconds(READ_FEW, few, args.sessions))
            for name, script in READ_ONLY.items():
                reads[name].append(_read_seconds(script, many, args.sessions))
            print(
                f"round {rep + 1}: scorer {rates['few'][-1] / 1e6:.2f}M rows/s in {args.few} files, "
                f"{rates['many'][-1] / 1e6:.2f}M in {args.many}; read only: "
                + ", ".join(f"{name} {times[-1][0]:.2f} s" for name, times in reads.items())
            )
    few_rate, many_rate = statistics.median(rates["few"]), statistics.median(rates["many"])
    allowed = args.sessions / (0.8 * few_rate)
    cores = os.cpu_count() or 1
    print(
        f"medians of {args.reps}: {args.few} files {few_rate / 1e6:.2f}M rows/s, {args.many} files "
        f"{many_rate / 1e6:.2f}M rows/s ({many_rate / few_rate:.2f}x); 0.8x allows a work window "
        f"of {allowed:.2f} s for {args.many} files, {cores} cores x {allowed:.2f} s = "
        f"{cores * allowed:.2f} CPU-s"
    )
    score_and_write = statistics.median(work_cpu["few"]) - statistics.median(c for _, c in read_few)
    print(
        f"  the scorer's workers: {statistics.median(work_cpu['few']):.2f} CPU-s on {args.few} "
        f"files, of which reading them {statistics.median(c for _, c in read_few):.2f}: scoring "
        f"and writing the rows {score_and_write:.2f} CPU-s; "
        f"{statistics.median(work_cpu['many']):.2f} CPU-s on {args.many} files"
    )
    for name, times in reads.items():
        wall, cpu = (statistics.median(t[i] for t in times) for i in (0, 1))
        best = args.sessions / ((cpu + score_and_write) / cores) / few_rate
        print(
            f"  {name} reading them and nothing else: {wall:.2f} s "
            f"({args.sessions / wall / few_rate:.2f}x the {args.few}-file scoring rate), "
            f"{cpu:.2f} CPU-s ({cpu / (cores * allowed):.0%} of that budget); with the scoring "
            f"and writing, every core busy all along: at best {best:.2f}x"
        )


def _scored(data: str, out: Path) -> tuple[float, float]:
    """The scorer's work-window rows/s and its workers' CPU seconds on ``data``."""
    done = subprocess.run(
        [scorer_bin(), "score", data, str(out), "--json"], check=True, capture_output=True
    )
    shutil.rmtree(out)
    summary = json.loads(done.stdout)
    return float(summary["work_rows_per_second"]), float(summary["cpu_seconds"])


def _read_seconds(script: str, data: str, sessions: int) -> tuple[float, float]:
    """Wall and CPU seconds of one read-only script over ``data``."""
    done = subprocess.run(
        [sys.executable, "-c", script, data], check=True, capture_output=True, text=True
    )
    wall, cpu, rows = done.stdout.split()
    if int(rows) != sessions:
        raise RuntimeError(f"read {rows} rows of {data}, expected {sessions}")
    return float(wall), float(cpu)


if __name__ == "__main__":
    main()
