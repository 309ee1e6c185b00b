"""What staging shards under _scorer/tmp/ and the leased lock cost on s3://: this checkout
against an earlier one, at chosen per-request latencies (docs/exactly-once.md).

Whole `scorer score s3://... s3://... --json` processes through the loopback latency proxy
(`scorer.jobs.latency`) in front of moto's S3 server, alternating the two checkouts REPS
times per latency on the same sessions; prints each run's whole-process seconds, requests by
method through the proxy, the medians and their ratio.

    git archive main | tar -x -C /tmp/scorer-before
    python benchmarks/s3_staging_cost.py --before /tmp/scorer-before --delays 0,20 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs

from scorer.jobs.generate import generate
from scorer.jobs.latency import latency_proxy, moto_server

# `python -m scorer` from the checkout named first, even where an editable install of another
# one puts its own finder ahead of PYTHONPATH.
_RUN_FROM = """
import runpy, sys
tree = sys.argv.pop(1)
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, tree)
runpy.run_module("scorer", run_name="__main__")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="checkout of the earlier version")
    parser.add_argument("--sessions", type=int, default=400_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--shard-rows", type=int, default=25_000, help="one shard per file")
    parser.add_argument("--delays", default="0,20", help="milliseconds per request")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    trees = {"before": str(Path(args.before).resolve()), "now": str(Path.cwd())}
    delays = [float(ms) for ms in args.delays.split(",")]
    seconds: dict[tuple[float, str], list[float]] = {}
    with moto_server() as upstream:
        fs = pafs.S3FileSystem(
            endpoint_override=upstream, scheme="http", allow_bucket_creation=True
        )
        fs.create_dir("bench")
        direct = f"endpoint_override={upstream}&scheme=http"
        generate(
            f"s3://bench/sessions?{direct}",
            sessions=args.sessions,
            files=args.files,
            days=2,
            seed=0,
        )
        for rep in range(args.reps):
            for delay in delays:
                for name, tree in trees.items():
                    with latency_proxy(upstream, delay) as proxy:
                        query = f"endpoint_override={proxy.address}&scheme=http"
                        out = f"out-{name}-{delay:g}-{rep}"
                        command = [sys.executable, "-c", _RUN_FROM, tree, "score"]
                        command += [f"s3://bench/sessions?{query}", f"s3://bench/{out}?{query}"]
                        started = time.perf_counter()
                        done = subprocess.run(
                            [*command, "--shard-rows", str(args.shard_rows), "--json"],
                            env=dict(os.environ),
                            capture_output=True,
                            text=True,
                        )
                        took = time.perf_counter() - started
                        counts = proxy.reset()
                    summary = json.loads(done.stdout)
                    seconds.setdefault((delay, name), []).append(took)
                    print(
                        f"{delay:g} ms {name} rep {rep}: {took:.2f} s, {summary['shards_committed']}"
                        f" shards, exit {summary['exit_code']}, requests {counts.requests}"
                        f" {dict(sorted(counts.methods.items()))}",
                        flush=True,
                    )
                    fs.delete_dir(f"bench/{out}")
    for delay in delays:
        before, now = (statistics.median(seconds[delay, name]) for name in trees)
        print(
            f"{delay:g} ms: before {before:.2f} s, now {now:.2f} s, now / before {now / before:.3f}"
        )


if __name__ == "__main__":
    main()
