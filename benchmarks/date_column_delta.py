"""A day column scored into a Delta table partitioned by day, against plain Parquet output.

With ``--format delta`` a day column's scores go to one ``dt=<day>/`` partition per day: each
row group is planned as pieces of one day each, and each piece reads its row group (or run of
row groups of one day). A file sorted by day has row groups of one day but for the one or two
straddling each midnight, so it reads about one row group more per day; a file whose row groups
each hold every day reads each row group once per day.

Each round, alternating: ``scorer score FILE OUT --json`` and ``scorer score FILE OUT --format
delta --json``, each a whole process into a fresh OUT (wall from start to exit), for a file
sorted by day and one in no order (DuckDB's ``COPY ... ORDER BY hash(session_id)``). Both are
written by DuckDB with its default row groups of 122,880 rows from ``scorer generate``'s rows.
Prints each run, the medians and the ratios, and the rows read (every row of every row group a
shard read).

    python benchmarks/date_column_delta.py [--out bench-days-delta] [--sessions 4000000]
        [--days 8] [--reps 3] [--only sorted|unsorted]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from scorer.jobs.generate import generate
from scorer.jobs.whole_job import scorer_bin
from scorer.pipeline.layout import SHARD_STATS, run_table_relpath


def _inputs(out: Path, sessions: int, days: int) -> dict[str, Path]:
    """The generated rows as one file with a ``dt DATE`` column, sorted by day and not."""
    generated = out / "generated"
    if not generated.exists():
        generate(generated, sessions=sessions, files=days, days=days, seed=28)
    files = {}
    for name, order in (("sorted", "dt, session_id"), ("unsorted", "hash(session_id)")):
        target = out / name / "sessions.parquet"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            duckdb.sql(
                f"""COPY (SELECT * EXCLUDE (dt), CAST(dt AS DATE) AS dt
                          FROM read_parquet('{generated}/**/*.parquet', hive_partitioning = true)
                          ORDER BY {order})
                    TO '{target}' (FORMAT parquet)"""
            )
        files[name] = target
    return files


def _run(source: Path, out: Path, options: list[str]) -> tuple[float, int, int, int]:
    """Wall seconds of one whole `scorer score`, rows scored, rows read and shards."""
    shutil.rmtree(out, ignore_errors=True)
    command = [scorer_bin(), "score", str(source), str(out), *options, "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    summary = json.loads(done.stdout)
    stats = pq.read_table(out / run_table_relpath(SHARD_STATS, summary["run_id"])).to_pylist()
    committed = [r for r in stats if r["status"] == "committed"]
    read = sum(r["rows_read"] if r["rows_read"] is not None else r["rows"] for r in committed)
    return wall, summary["rows"], read, len(committed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-days-delta"))
    parser.add_argument("--sessions", type=int, default=4_000_000)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", choices=["sorted", "unsorted"], default=None)
    args = parser.parse_args()
    files = _inputs(args.out, args.sessions, args.days)
    for name, path in files.items():
        if args.only and name != args.only:
            continue
        meta = pq.read_metadata(path)
        print(f"{name}: {meta.num_rows:,} rows, {meta.num_row_groups} row groups")
        walls: dict[str, list[float]] = {"parquet": [], "delta": []}
        for rep in range(args.reps):
            for fmt in ("parquet", "delta"):
                options = ["--format", fmt]
                wall, rows, read, shards = _run(path, args.out / f"scored-{name}-{fmt}", options)
                walls[fmt].append(wall)
                print(
                    f"  rep {rep + 1} {fmt:7s}: {wall:6.2f} s wall, {rows:,} rows scored, "
                    f"{read:,} rows read, {shards} shard(s)"
                )
        if not args.reps:
            continue
        parquet, delta = (statistics.median(walls[f]) for f in ("parquet", "delta"))
        print(
            f"  median wall: parquet {parquet:.2f} s, delta {delta:.2f} s, "
            f"ratio {delta / parquet:.2f}x"
        )


if __name__ == "__main__":
    main()
