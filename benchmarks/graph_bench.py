"""Throughput of the whole model graph on one core, per calibration method.

Realistic sizes (10 numeric, 1 boolean, 6 categorical inputs of 3–20 values), 1M rows,
onnxruntime with the scorer's session options (one thread); prints the median of several
runs as rows/s per variant. The target is >= 10M rows/s (<= 100 ms per 1M rows) for every
variant, isotonic at 500 knots included.

    python benchmarks/graph_bench.py [--rows 1000000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime

from scorer.model.calibration import fit_calibrator
from scorer.model.graph import CalibratorParams, LinearParams, build_graph
from scorer.model.interface import session_options

VOCABULARY_SIZES = (12, 8, 13, 9, 20, 3)  # month, OS, browser, region, traffic, visitor type
N_NUMERIC = 10
TARGET_ROWS_PER_SECOND = 10_000_000


def _linear(rng: np.random.Generator) -> LinearParams:
    return LinearParams(
        numeric_mean=rng.uniform(0.0, 6.0, N_NUMERIC),
        numeric_scale=rng.uniform(0.5, 3.0, N_NUMERIC),
        numeric_coef=rng.normal(0.0, 0.7, N_NUMERIC),
        boolean_coef=rng.normal(0.0, 0.3, 1),
        categorical_coef=tuple(
            np.append(rng.normal(0.0, 0.5, size), 0.0) for size in VOCABULARY_SIZES
        ),
        intercept=-1.0,
    )


def _feed(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    return {
        "numeric": rng.exponential(40.0, (N_NUMERIC, rows)).astype(np.float32),
        "boolean": rng.integers(0, 2, (1, rows)).astype(np.float32),
        "categorical": np.stack([rng.integers(0, size + 1, rows) for size in VOCABULARY_SIZES]),
    }


def _isotonic_with_knots(knots: int, rng: np.random.Generator) -> CalibratorParams:
    """An isotonic fit on enough calibration rows to have about `knots` thresholds."""
    rows = knots * 14
    while True:
        logits = rng.normal(-1.0, 2.0, rows)
        labels = rng.uniform(size=rows) < 1.0 / (1.0 + np.exp(-(0.8 * logits - 1.0)))
        params = fit_calibrator("isotonic", logits, labels)
        if params.knots >= knots:
            return CalibratorParams("isotonic", x=params.x[:knots], y=params.y[:knots])
        rows = rows * 3 // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    linear = _linear(rng)
    feed = _feed(rng, args.rows)
    variants = {
        "none": CalibratorParams("none"),
        "platt": CalibratorParams("platt", a=-0.9, b=0.8),
        "temperature": CalibratorParams("temperature", beta=0.45),
        "isotonic 150 knots": _isotonic_with_knots(150, rng),
        "isotonic 500 knots": _isotonic_with_knots(500, rng),
    }
    print(
        f"{args.rows:,} rows, median of {args.repeats} runs, onnxruntime "
        f"{onnxruntime.__version__}, 1 thread"
    )
    for label, calibrator in variants.items():
        model = build_graph(linear, calibrator, name="bench", version="0")
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"]
        )
        session.run(None, feed)  # warm-up: allocations, first-touch of the arena
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            session.run(None, feed)
            seconds.append(time.perf_counter() - start)
        median = float(np.median(seconds))
        rate = args.rows / median
        verdict = "ok" if rate >= TARGET_ROWS_PER_SECOND else "BELOW TARGET"
        print(f"  {label:<20} {median * 1e3:7.1f} ms  {rate / 1e6:6.1f}M rows/s  {verdict}")


if __name__ == "__main__":
    main()
