"""Nightly backfill: score one `dt` partition (yesterday by default) from a TOML config.

    python jobs/nightly_backfill.py --config configs/nightly.toml [--date 2026-11-27]
    ray job submit --working-dir . -- python jobs/nightly_backfill.py --config configs/nightly.toml

The same library call as `scorer score`. Under `ray job submit` the driver runs on the cluster
and `ray.init()` joins it (RAY_ADDRESS is set by Ray for job drivers); locally a private Ray is
started. It exits as `scorer score` does, with the codes scorer/errors.py names: EXIT_OK (done),
EXIT_FAILED (some shards failed), EXIT_USAGE (config or preflight), EXIT_ALERT (an alert under
[monitor] fail_on_alert), EXIT_INTERRUPTED (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this file from an unpacked copy of the repository, where
# the package is importable from the working directory but not installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scorer import ScorerError, load_config, score
from scorer.partitions import DATE_KEY
from scorer.pipeline.progress import LogProgress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="TOML job config (configs/nightly.toml)")
    parser.add_argument(
        "--date", type=dt.date.fromisoformat, help="dt partition (default: yesterday, UTC)"
    )
    parser.add_argument("--input", help="override the config's input")
    parser.add_argument("--output", help="override the config's output")
    args = parser.parse_args(argv)
    day = args.date or (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1))
    try:
        config = load_config(args.config)
        config = config.with_overrides(
            input=args.input,
            output=args.output,
            partition=config.partition | {DATE_KEY: (day.isoformat(),)},
        )
        # Ray prints cluster events to stdout; stdout carries only the JSON summary.
        with contextlib.redirect_stdout(sys.stderr):
            summary = score(config=config, progress=LogProgress())
    except ScorerError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return exc.exit_code
    for alert in summary.alerts:  # the ALERT lines, as `scorer score` prints them
        print(alert.message, file=sys.stderr)
    print(json.dumps(summary.to_dict(), default=str))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
