"""The graph's interface as the runtime sees it: input and output names, and session settings.

Apart from `graph` (which builds graphs with the `onnx` package, ~1 s to import) so that scoring
imports onnxruntime alone: `scorer score` on a small input is done in about that second.
"""

from __future__ import annotations

import onnxruntime

NUMERIC_INPUT = "numeric"
BOOLEAN_INPUT = "boolean"
CATEGORICAL_INPUT = "categorical"
RAW_OUTPUT = "intent_raw"
CALIBRATED_OUTPUT = "intent_calibrated"
ROWS = "rows"


def session_options(threads: int = 1) -> onnxruntime.SessionOptions:
    """The onnxruntime settings the scorer runs these graphs with.

    One intra-op thread per session by default: the scorer parallelises across Ray actors, and
    the graph is a chain of cheap elementwise ops where threading costs more than it gives.
    Sequential execution, for the same reason. Full graph optimisation: the parity tests run
    with these options, so the exactness they check holds under its fusions.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options
