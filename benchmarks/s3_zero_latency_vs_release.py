"""Object storage at 0 ms per request: this checkout against an earlier one, s3 -> s3, 2 actors.

Whole `scorer score s3://... s3://... --actors 2 --json` processes, alternating the two
checkouts REPS times on the same sessions in moto's S3 server on loopback; prints each run's
work-window rows/s, the medians and their ratio (issue 16: "at 0 ms no slower than today").

    git worktree add ../scorer-before 68de47f
    python benchmarks/s3_zero_latency_vs_release.py --before ../scorer-before --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs

from scorer.jobs.generate import generate
from scorer.jobs.latency import moto_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout of the earlier release")
    parser.add_argument("--sessions", type=int, default=4_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }.items():
        os.environ.setdefault(name, value)
    trees = {"before": str(Path(args.before).resolve()), "now": str(Path.cwd())}
    results: dict[str, list[float]] = {name: [] for name in trees}
    with moto_server() as upstream:
        fs = pafs.S3FileSystem(
            endpoint_override=upstream, scheme="http", allow_bucket_creation=True
        )
        fs.create_dir("bench")
        query = f"endpoint_override={upstream}&scheme=http"
        sessions = f"s3://bench/sessions?{query}"
        generate(sessions, sessions=args.sessions, files=args.files, days=2, seed=0)
        for rep in range(args.reps):
            for name, tree in trees.items():
                out = f"out-{name}-{rep}"
                command = [sys.executable, "-m", "scorer", "score", sessions]
                command += [f"s3://bench/{out}?{query}", "--actors", "2", "--json"]
                done = subprocess.run(
                    command, env=dict(os.environ, PYTHONPATH=tree), capture_output=True, text=True
                )
                summary = json.loads(done.stdout)
                results[name].append(summary["work_rows_per_second"])
                rate = summary["work_rows_per_second"] / 1e6
                print(f"{name} rep {rep}: {rate:.2f}M rows/s, exit {summary['exit_code']}")
                fs.delete_dir(f"bench/{out}")
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, median in medians.items():
        print(f"{name}: median {median / 1e6:.2f}M rows/s")
    print(f"now / before: {medians['now'] / medians['before']:.2f}")


if __name__ == "__main__":
    main()
