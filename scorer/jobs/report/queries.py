"""The report's reads: DuckDB SQL over OUTPUT's tables into a `Report`.

Every read is the SQL an analyst would write over the layout of docs/output.md (paths from
`scorer.pipeline.layout`):

    OUTPUT/scores/**/*.parquet                   the run's rows carry run_id; dt comes from folders
    OUTPUT/stats/runs/run_id=<ID>/*.parquet      one row per run
    OUTPUT/stats/shards/run_id=<ID>/*.parquet    one row per shard attempt
    OUTPUT/calibration/run_id=<ID>/*.parquet     `scorer.metrics.calibration_table`, if labelled
    OUTPUT/drift/run_id=<ID>/*.parquet           per dt and model input: PSI, shares, means

Stats and calibration files carry ``run_id`` as a column, so they are read by their run folder
without hive partitioning; scores are read with ``hive_partitioning=true`` to see ``dt``.

Over time. Drift and calibration are read across every run in OUTPUT, not only the one asked
for: a night's score run writes its days' drift, a labelled run or a later `scorer evaluate`
their calibration. Where several runs cover a dt, the newest run's figures for that dt win (run
ids begin with their UTC start time, ``20261128T010203Z-…``, so the greatest id is the newest);
calibration tables are read with ``union_by_name`` because evaluate runs add a column naming the
run they evaluated. An OUTPUT from before drift was recorded has no drift tables; the report says
so and goes on.

Separate from the plots and tables so that the SQL, the part an analyst reuses, reads on its own.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np

from scorer.config import MonitorConfig
from scorer.errors import ReportError
from scorer.jobs.report.contents import HISTOGRAM_BINS, SCORES, Report
from scorer.partitions import DATE_KEY
from scorer.pipeline import layout
from scorer.pipeline.scan import is_hidden
from scorer.pipeline.stats import STAGES

LATEST_RUN_SQL = """
SELECT run_id FROM read_parquet($runs, union_by_name = true)
ORDER BY started_at DESC LIMIT 1
"""

RUN_SQL = "SELECT * FROM read_parquet($files, union_by_name = true) WHERE run_id = $run"

STAGES_SQL = """
SELECT sum(read_seconds) AS read, sum(encode_seconds) AS encode,
       sum(infer_seconds) AS infer, sum(write_seconds) AS write
FROM read_parquet($files, union_by_name = true)
WHERE status <> 'skipped'
"""

# Busy seconds are the actor's total seconds over its attempts; rows count committed work only,
# so a retried shard's lost attempt costs time but adds no rows.
ACTORS_SQL = """
SELECT CAST(actor_id AS VARCHAR) AS actor_id, CAST(node_id AS VARCHAR) AS node_id,
       count(*) FILTER (WHERE status = 'committed') AS shards,
       coalesce(sum(rows) FILTER (WHERE status = 'committed'), 0) AS rows,
       sum(total_seconds) AS busy_seconds,
       sum(read_seconds) AS read, sum(encode_seconds) AS encode,
       sum(infer_seconds) AS infer, sum(write_seconds) AS write,
       coalesce(sum(rows) FILTER (WHERE status = 'committed'), 0)
           / nullif(sum(total_seconds), 0) AS rows_per_second
FROM read_parquet($files, union_by_name = true)
WHERE status <> 'skipped'
GROUP BY ALL ORDER BY actor_id
"""

FAILED_SQL = """
SELECT shard_id, input_path, attempt, error
FROM read_parquet($files, union_by_name = true)
WHERE status = 'failed' ORDER BY input_path, shard_id, attempt
"""

CALIBRATION_SQL = f"""
SELECT * FROM read_parquet($files)
ORDER BY scope = 'overall', {DATE_KEY} NULLS LAST
"""

# Both read every run's table; the run id comes from its folder (hive), as layout spells it.
# The newest run per dt wins all of that dt's rows; rows = 0 (nothing of the dt scored or
# labelled by that run) never wins. file_row_number keeps the drift table's column order.
DRIFT_SQL = f"""
SELECT run_id, {DATE_KEY}, "column", kind, rows, psi, share_missing, share_invalid,
       share_unseen, mean, reference_mean
FROM read_parquet($files, hive_partitioning = true, union_by_name = true,
                  file_row_number = true)
WHERE scope = 'partition' AND rows > 0
QUALIFY run_id = max(run_id) OVER (PARTITION BY {DATE_KEY})
ORDER BY {DATE_KEY} NULLS LAST, file_row_number
"""

CALIBRATION_OVER_TIME_SQL = f"""
SELECT run_id, {DATE_KEY}, rows, positives, observed_rate, mean_calibrated,
       ece_width_calibrated, ece_mass_calibrated
FROM read_parquet($files, hive_partitioning = true, union_by_name = true)
WHERE scope = 'partition' AND rows > 0
QUALIFY run_id = max(run_id) OVER (PARTITION BY {DATE_KEY})
ORDER BY {DATE_KEY} NULLS LAST
"""

# The last bin is closed at 1, as for the reliability bins.
HISTOGRAM_SQL = """
SELECT least(floor({column} * $bins), $bins - 1)::INTEGER AS bin, count(*) AS rows
FROM read_parquet($files, hive_partitioning = true)
WHERE run_id = $run AND {column} IS NOT NULL
GROUP BY bin
"""


def _glob(folder: Path) -> str:
    return str(folder / "*.parquet")


def _records(con: duckdb.DuckDBPyConnection, sql: str, params: dict) -> list[dict]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def resolve_run(con: duckdb.DuckDBPyConnection, output: Path, run_id: str | None) -> str:
    """The run asked for, or the latest by start time; a ReportError names what exists."""
    runs = output / layout.RUN_STATS
    if not any(runs.glob(f"{layout.RUN_PARTITION}=*/*.parquet")):
        raise ReportError(f"{output}: no run statistics under {runs}; is this a scorer OUTPUT?")
    if run_id is None:
        latest = con.execute(LATEST_RUN_SQL, {"runs": str(runs / "*" / "*.parquet")}).fetchone()
        if latest is None:
            raise ReportError(f"{output}: no run statistics under {runs}; is this a scorer OUTPUT?")
        return str(latest[0])
    if not any((output / layout.run_folder(layout.RUN_STATS, run_id)).glob("*.parquet")):
        known = sorted(
            p.name.removeprefix(f"{layout.RUN_PARTITION}=")
            for p in runs.glob(f"{layout.RUN_PARTITION}=*")
        )
        raise ReportError(f"--run {run_id}: no such run in {output} (runs: {', '.join(known)})")
    return run_id


def _histogram(con: duckdb.DuckDBPyConnection, output: Path, run_id: str, score: str) -> np.ndarray:
    counts = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    scores = output / layout.SCORES
    # Score files only: a Delta OUTPUT keeps its log (and its Parquet checkpoints) in
    # `scores/_delta_log/`, which a `**/*.parquet` glob would read as scores.
    files = [
        str(path)
        for path in scores.rglob("*.parquet")
        if not is_hidden(path.relative_to(scores).parts)
    ]
    if not files:
        return counts
    sql = HISTOGRAM_SQL.format(column=f"intent_{score}")
    params = {"files": files, "run": run_id, "bins": HISTOGRAM_BINS}
    for row in _records(con, sql, params):
        counts[row["bin"]] = row["rows"]
    return counts


def _over_time(con: duckdb.DuckDBPyConnection, output: Path, table: str, sql: str) -> list[dict]:
    """`sql` over every run's `table` folder; [] where no run wrote one."""
    pattern = f"{layout.RUN_PARTITION}=*/*.parquet"
    if not any((output / table).glob(pattern)):
        return []
    return _records(con, sql, {"files": str(output / table / pattern)})


def read_report(
    output: str | Path,
    run_id: str | None = None,
    *,
    monitor: MonitorConfig | None = None,
) -> Report:
    """The figures of one run (default: the latest by start time) and of every run over time,
    without plots. ``monitor`` (default: the alerts' defaults) only marks the figures that breach
    it; it changes no number."""
    output = Path(output)
    con = duckdb.connect()
    try:
        run_id = resolve_run(con, output, run_id)
        shard_dir = output / layout.run_folder(layout.SHARD_STATS, run_id)
        shards = {"files": _glob(shard_dir)} if any(shard_dir.glob("*.parquet")) else None
        calibration = output / layout.run_folder(layout.CALIBRATION, run_id)
        stages = _records(con, STAGES_SQL, shards)[0] if shards else {}
        run_files = _glob(output / layout.run_folder(layout.RUN_STATS, run_id))
        return Report(
            run_id=run_id,
            run=_records(con, RUN_SQL, {"files": run_files, "run": run_id})[0],
            calibration=(
                _records(con, CALIBRATION_SQL, {"files": _glob(calibration)})
                if any(calibration.glob("*.parquet"))
                else []
            ),
            stages={stage: float(stages.get(stage) or 0.0) for stage in STAGES},
            actors=_records(con, ACTORS_SQL, shards) if shards else [],
            failed=_records(con, FAILED_SQL, shards) if shards else [],
            histogram={s: _histogram(con, output, run_id, s) for s in SCORES},
            drift=_over_time(con, output, layout.DRIFT, DRIFT_SQL),
            calibration_over_time=_over_time(
                con, output, layout.CALIBRATION, CALIBRATION_OVER_TIME_SQL
            ),
            monitor=monitor or MonitorConfig(),
        )
    finally:
        con.close()
