"""`scorer report`: calibration and throughput of one run, read from its Parquet outputs.

Every read is DuckDB SQL over the layout of SPEC §5 (paths from `scorer.pipeline.layout`), the
same SQL an analyst would write:

    OUTPUT/scores/**/*.parquet                   the run's rows carry run_id; dt comes from folders
    OUTPUT/stats/runs/run_id=<ID>/*.parquet      one row per run
    OUTPUT/stats/shards/run_id=<ID>/*.parquet    one row per shard attempt
    OUTPUT/calibration/run_id=<ID>/*.parquet     `scorer.metrics.calibration_table`, if labelled

Stats and calibration files carry ``run_id`` as a column, so they are read by their run folder
without hive partitioning; scores are read with ``hive_partitioning=true`` to see ``dt``.

`read_report` runs the queries into a `Report`, `write_plots` draws its PNGs, `build_report` does
both; `render` turns a report into rich tables. None of them prints: the CLI decides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from scorer.errors import ReportError
from scorer.pipeline import layout
from scorer.pipeline.plan import DATE_KEY
from scorer.pipeline.stats import STAGES

__all__ = ["HISTOGRAM_BINS", "STAGES", "Report", "ReportError", "build_report", "read_report"]

HISTOGRAM_BINS = 50
SCORES = ("raw", "calibrated")
COLOURS = {"raw": "tab:orange", "calibrated": "tab:blue", "observed": "black"}


@dataclass(frozen=True)
class Report:
    """The figures of one run, as read from OUTPUT, and the plots drawn from them."""

    run_id: str
    run: dict
    calibration: list[dict]  # calibration table rows, partitions by dt then overall; [] unlabelled
    stages: dict[str, float]  # seconds per stage, summed over the run's shard attempts
    actors: list[dict]  # per actor: rows, shards, busy seconds, seconds per stage, rows/s
    failed: list[dict]  # failed shard attempts: shard, file, attempt, error
    histogram: dict[str, np.ndarray]  # rows per HISTOGRAM_BINS equal-width bin, per score
    plots: list[Path] = dataclasses.field(default_factory=list)

    @property
    def overall(self) -> dict | None:
        """The calibration table's overall row; None for an unlabelled run."""
        return next((r for r in self.calibration if r["scope"] == "overall"), None)

    @property
    def partitions(self) -> list[dict]:
        return [r for r in self.calibration if r["scope"] == "partition"]


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------

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
    if not any(scores.rglob("*.parquet")):
        return counts
    sql = HISTOGRAM_SQL.format(column=f"intent_{score}")
    params = {"files": str(scores / "**" / "*.parquet"), "run": run_id, "bins": HISTOGRAM_BINS}
    for row in _records(con, sql, params):
        counts[row["bin"]] = row["rows"]
    return counts


def read_report(output: str | Path, run_id: str | None = None) -> Report:
    """The figures of one run (default: the latest by start time), without plots."""
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
        )
    finally:
        con.close()


def write_plots(report: Report, out_dir: str | Path) -> list[Path]:
    """Draw the report's PNGs into out_dir, skipping plots without data (no labels, no shards)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in _plots(report).items():
        paths.append(out / name)
        draw(report).savefig(paths[-1], dpi=110)
    return paths


def build_report(
    output: str | Path, run_id: str | None = None, out_dir: str | Path | None = None
) -> Report:
    """Read one run and write its PNGs (default under OUTPUT/reports/<RUN_ID>/)."""
    report = read_report(output, run_id)
    out = (
        Path(out_dir) if out_dir is not None else Path(output) / layout.report_folder(report.run_id)
    )
    return dataclasses.replace(report, plots=write_plots(report, out))


# --------------------------------------------------------------------------------------------
# Plots (matplotlib's object API renders with Agg; no pyplot, no display, no global state)
# --------------------------------------------------------------------------------------------


def _overall(report: Report) -> dict[str, Any]:
    """The overall calibration row of a labelled run (the callers check there is one)."""
    row = report.overall
    if row is None:
        raise ReportError(f"run {report.run_id}: no calibration table (its input carried no label)")
    return row


def _plots(report: Report) -> dict[str, Callable[[Report], Figure]]:
    plots: dict[str, Callable[[Report], Figure]] = {"score_histogram.png": plot_score_histogram}
    if report.overall is not None:
        plots["reliability.png"] = plot_reliability
        plots["calibration_by_day.png"] = plot_calibration_by_day
    if report.actors:
        plots["throughput.png"] = plot_throughput
    return plots


def _nan(values: Iterable[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_reliability(report: Report) -> Figure:
    """Observed rate against mean prediction per equal-width bin, raw and calibrated, with the
    rows per bin underneath."""
    row = _overall(report)
    fig = Figure(figsize=(8, 8.5), layout="constrained")
    curve, counts = fig.subplots(2, 1, height_ratios=(3, 1.3), sharex=True)
    curve.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for score in SCORES:
        curve.plot(
            _nan(row[f"bin_mean_predicted_{score}"]),
            _nan(row[f"bin_observed_rate_{score}"]),
            marker="o",
            color=COLOURS[score],
            label=f"{score}  (ECE {row[f'ece_width_{score}']:.4f})",
        )
    curve.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed conversion rate")
    curve.set_title(
        f"Reliability diagram, run {report.run_id}\n"
        f"{row['rows']:,} labelled rows, 15 equal-width bins"
    )
    curve.legend(loc="upper left")
    curve.grid(alpha=0.3)

    edges = np.linspace(0, 1, 16)
    width = (edges[1] - edges[0]) / 2
    for offset, score in zip((0.0, width), SCORES):
        bars = counts.bar(
            edges[:-1] + offset,
            row[f"bin_count_{score}"],
            width=width,
            align="edge",
            color=COLOURS[score],
            label=score,
        )
        labels = [f"{c:,}" if c else "" for c in row[f"bin_count_{score}"]]
        counts.bar_label(bars, labels=labels, fontsize=6, rotation=90, padding=2)
    counts.set_yscale("symlog", linthresh=1)
    counts.set_ylim(0, max(2, max(row["bin_count_raw"] + row["bin_count_calibrated"])) * 30)
    counts.set(xlabel="predicted probability (bin)", ylabel="rows per bin")
    counts.legend(loc="upper right", fontsize=8)
    return fig


def plot_score_histogram(report: Report) -> Figure:
    """Distribution of raw and calibrated scores over the run's rows."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    edges = np.linspace(0, 1, HISTOGRAM_BINS + 1)
    for score in SCORES:
        counts = report.histogram[score]
        label = f"{score}  ({counts.sum():,} rows)"
        ax.stairs(counts, edges, color=COLOURS[score], lw=1.5, label=label)
    ax.set_yscale("symlog", linthresh=1)
    ax.set(xlim=(0, 1), xlabel="predicted probability of conversion", ylabel="rows (log scale)")
    ax.set_title(f"Scores of run {report.run_id}, valid rows ({HISTOGRAM_BINS} bins)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_calibration_by_day(report: Report) -> Figure:
    """ECE and mean score against the observed rate per partition, so drift shows."""
    rows = report.partitions
    days = [r[DATE_KEY] if r[DATE_KEY] is not None else "(none)" for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(8, 0.35 * len(rows) + 4), 7.5), layout="constrained")
    ece, rate = fig.subplots(2, 1, sharex=True)
    for score in SCORES:
        colour = COLOURS[score]
        ece.plot(
            x,
            _nan(r[f"ece_width_{score}"] for r in rows),
            marker="o",
            color=colour,
            label=f"{score}, 15 equal-width bins",
        )
        ece.plot(
            x,
            _nan(r[f"ece_mass_{score}"] for r in rows),
            marker=".",
            ls=":",
            color=colour,
            label=f"{score}, 15 equal-mass bins",
        )
        rate.plot(
            x,
            _nan(r[f"mean_{score}"] for r in rows),
            marker="o",
            color=colour,
            label=f"mean {score} score",
        )
    rate.plot(
        x,
        _nan(r["observed_rate"] for r in rows),
        marker="s",
        color=COLOURS["observed"],
        label="observed conversion rate",
    )
    ece.set(ylabel="ECE", ylim=(0, None))
    ece.set_title(f"Calibration per day, run {report.run_id}")
    ece.legend(fontsize=8)
    rate.set(ylabel="probability", xlabel=DATE_KEY, ylim=(0, None))
    rate.legend(fontsize=8)
    # Past a month of days, label every k-th so the dates stay legible.
    step = max(1, len(rows) // 30)
    rate.set_xticks(x[::step], days[::step], rotation=45, ha="right")
    for ax in (ece, rate):
        ax.grid(alpha=0.3)
    return fig


def plot_throughput(report: Report) -> Figure:
    """Seconds per stage over the run, and per actor split by stage, with each actor's rows/s."""
    fig = Figure(figsize=(11, max(4, 0.4 * len(report.actors) + 2)), layout="constrained")
    stages, actors = fig.subplots(1, 2, width_ratios=(1, 2))
    seconds = [report.stages[s] for s in STAGES]
    bars = stages.bar(STAGES, seconds, color=[f"C{i}" for i in range(len(STAGES))])
    stages.bar_label(bars, labels=[f"{s:.1f}" for s in seconds], fontsize=8)
    stages.set(ylabel="seconds (sum over shards)", title="Time per stage")

    names = [f"{a['actor_id']}" for a in report.actors]
    left = np.zeros(len(report.actors))
    for i, stage in enumerate(STAGES):
        width = np.array([a[stage] or 0.0 for a in report.actors])
        actors.barh(names, width, left=left, color=f"C{i}", label=stage)
        left += width
    for y, (a, end) in enumerate(zip(report.actors, left)):
        rate = a["rows_per_second"] or 0.0
        actors.text(end, y, f"  {a['rows']:,} rows, {rate:,.0f} rows/s", va="center", fontsize=8)
    actors.set_xlim(0, left.max() * 1.6 if left.max() > 0 else 1)
    actors.invert_yaxis()
    actors.set(xlabel="seconds", ylabel="actor", title="Time per actor, by stage")
    actors.legend(loc="lower right", fontsize=8)
    run = report.run
    fig.suptitle(
        f"Throughput, run {report.run_id}: {run['rows']:,} rows in {run['wall_seconds']:.1f} s "
        f"= {run['rows_per_second']:,.0f} rows/s"
    )
    return fig


# --------------------------------------------------------------------------------------------
# Terminal tables
# --------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def render(report: Report) -> list[Table | str]:
    """Rich renderables: run summary, calibration (overall, per dt), stages, actors, failures."""
    out: list[Table | str] = [_run_table(report)]
    if report.overall is None:
        out.append("No calibration table for this run (its input carried no label).")
    else:
        out += [_overall_table(report), *_partition_tables(report)]
    if report.actors:
        out += [_stage_table(report), _actor_table(report)]
    if report.failed:
        out.append(_failed_table(report))
    out.append("Plots: " + ", ".join(str(p) for p in report.plots))
    return out


def _run_table(report: Report) -> Table:
    run, overall = report.run, report.overall
    table = Table(title=f"Run {report.run_id}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    shards = (
        f"{run.get('shards_committed', 0)} committed, {run.get('shards_skipped', 0)} skipped, "
        f"{run.get('shards_failed', 0)} failed"
    )
    lines = [
        ("model", f"{run.get('model_version')}"),
        ("started", f"{run.get('started_at')}"),
        ("rows", f"{run['rows']:,}"),
        ("wall seconds", _f(run["wall_seconds"], 1)),
        ("setup seconds", _f(run.get("setup_seconds"), 1)),
        ("rows/s", f"{run['rows_per_second']:,.0f}"),
        ("shards", shards),
        ("actors / CPUs / nodes", f"{run.get('actors')} / {run.get('cpus')} / {run.get('nodes')}"),
    ]
    if overall is not None:
        lines += [
            ("labelled rows", f"{overall['rows']:,}"),
            ("positives (rate)", f"{overall['positives']:,} ({_f(overall['observed_rate'])})"),
        ]
    for name, value in lines:
        table.add_row(name, value)
    return table


def _overall_table(report: Report) -> Table:
    row = _overall(report)
    table = Table(title="Calibration, all labelled rows")
    table.add_column("metric")
    for score in SCORES:
        table.add_column(score, justify="right")
    for label, key in (
        ("mean score", "mean"),
        ("ROC AUC", "roc_auc"),
        ("Brier", "brier"),
        ("log loss", "log_loss"),
        ("ECE, 15 equal-width bins", "ece_width"),
        ("ECE, 15 equal-mass bins", "ece_mass"),
    ):
        table.add_row(label, *(_f(row[f"{key}_{s}"]) for s in SCORES))
    return table


def _partition_tables(report: Report) -> list[Table]:
    """Rates and ECE per dt as two tables, so each fits an 80-column terminal."""
    rates = Table(title=f"Calibration per {DATE_KEY}: mean score against observed rate")
    ece = Table(title=f"Calibration per {DATE_KEY}: ECE over 15 bins")
    for table, names in (
        (rates, (DATE_KEY, "rows", "positives", "observed", "mean raw", "mean calibrated")),
        (ece, (DATE_KEY, "width, raw", "width, calibrated", "mass, raw", "mass, calibrated")),
    ):
        table.add_column(names[0], no_wrap=True)
        for name in names[1:]:
            table.add_column(name, justify="right")
    for r in report.partitions:
        day = r[DATE_KEY] or "(none)"
        rates.add_row(
            day,
            f"{r['rows']:,}",
            f"{r['positives']:,}",
            _f(r["observed_rate"]),
            _f(r["mean_raw"]),
            _f(r["mean_calibrated"]),
        )
        ece.add_row(
            day,
            _f(r["ece_width_raw"]),
            _f(r["ece_width_calibrated"]),
            _f(r["ece_mass_raw"]),
            _f(r["ece_mass_calibrated"]),
        )
    return [rates, ece]


def _stage_table(report: Report) -> Table:
    busy = sum(report.stages.values())
    rows = report.run["rows"]
    table = Table(title="Time per stage (summed over shard attempts)")
    for name in ("stage", "seconds", "share", "rows/s of stage"):
        table.add_column(name, justify="left" if name == "stage" else "right")
    for stage in STAGES:
        seconds = report.stages[stage]
        table.add_row(
            stage,
            _f(seconds, 2),
            f"{seconds / busy:.1%}" if busy else "–",
            f"{rows / seconds:,.0f}" if seconds else "–",
        )
    return table


def _actor_table(report: Report) -> Table:
    table = Table(title="Per actor")
    for name in ("actor", "node", "shards", "rows", "busy s", "rows/s"):
        table.add_column(name, justify="left" if name in ("actor", "node") else "right")
    for a in report.actors:
        table.add_row(
            a["actor_id"],
            a["node_id"] or "",
            str(a["shards"]),
            f"{a['rows']:,}",
            _f(a["busy_seconds"], 2),
            f"{a['rows_per_second'] or 0:,.0f}",
        )
    return table


def _failed_table(report: Report) -> Table:
    table = Table(title="Failed shard attempts", style="red")
    for name in ("shard", "file", "attempt", "error"):
        table.add_column(name)
    for f in report.failed:
        table.add_row(str(f["shard_id"]), str(f["input_path"]), str(f["attempt"]), str(f["error"]))
    return table
