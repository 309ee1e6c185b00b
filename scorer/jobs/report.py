"""`scorer report`: calibration and throughput of one run, and drift and calibration over time.

Every read is DuckDB SQL over the layout of docs/output.md (paths from `scorer.pipeline.layout`), the
same SQL an analyst would write:

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
import matplotlib
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from rich.table import Table
from rich.text import Text

from scorer.config import DEFAULT_ALERT_ECE, DEFAULT_ALERT_PSI
from scorer.errors import ReportError
from scorer.partitions import DATE_KEY
from scorer.pipeline import layout
from scorer.pipeline.scan import is_hidden
from scorer.pipeline.stats import STAGES

__all__ = [
    "ECE_THRESHOLD",
    "HISTOGRAM_BINS",
    "PSI_THRESHOLD",
    "STAGES",
    "Report",
    "ReportError",
    "build_report",
    "read_report",
]

HISTOGRAM_BINS = 50
SCORES = ("raw", "calibrated")
COLOURS = {"raw": "tab:orange", "calibrated": "tab:blue", "observed": "black"}
# Where the report marks a figure as breached: the alerts' default thresholds (`[monitor]`,
# justified where `scorer.config` defines them). Callers with a config's thresholds pass theirs.
PSI_THRESHOLD = DEFAULT_ALERT_PSI
ECE_THRESHOLD = DEFAULT_ALERT_ECE
MAX_BREACHES_SHOWN = 4  # per dt in the terminal's drift table, one line each
NO_DT = "(none)"  # the label of rows from files outside any dt folder


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
    # Across every run in OUTPUT, the newest run's rows per dt (dt order; drift in table order):
    drift: list[dict]  # per dt and column: DRIFT_SQL's columns; [] without drift tables
    calibration_over_time: list[dict]  # per dt: CALIBRATION_OVER_TIME_SQL's columns
    psi_threshold: float = PSI_THRESHOLD
    ece_threshold: float = ECE_THRESHOLD
    plots: list[Path] = dataclasses.field(default_factory=list)

    @property
    def overall(self) -> dict | None:
        """The calibration table's overall row; None for an unlabelled run."""
        return next((r for r in self.calibration if r["scope"] == "overall"), None)

    @property
    def partitions(self) -> list[dict]:
        return [r for r in self.calibration if r["scope"] == "partition"]

    @property
    def drift_days(self) -> list[str | None]:
        """The dts with drift figures, in order (None, files outside any dt folder, last)."""
        return list(dict.fromkeys(r[DATE_KEY] for r in self.drift))

    @property
    def drift_columns(self) -> list[str]:
        """The columns with drift figures, in the drift tables' order (card order, then score)."""
        return list(dict.fromkeys(r["column"] for r in self.drift))


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
    psi_threshold: float = PSI_THRESHOLD,
    ece_threshold: float = ECE_THRESHOLD,
) -> Report:
    """The figures of one run (default: the latest by start time) and of every run over time,
    without plots. The thresholds only mark figures; they change no number."""
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
            psi_threshold=psi_threshold,
            ece_threshold=ece_threshold,
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
    output: str | Path,
    run_id: str | None = None,
    out_dir: str | Path | None = None,
    *,
    psi_threshold: float = PSI_THRESHOLD,
    ece_threshold: float = ECE_THRESHOLD,
) -> Report:
    """Read one run and write its PNGs (default under OUTPUT/reports/<RUN_ID>/)."""
    report = read_report(output, run_id, psi_threshold=psi_threshold, ece_threshold=ece_threshold)
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
    if report.drift:
        plots["drift_psi.png"] = plot_drift_psi
    if report.calibration_over_time:
        plots["calibration_over_time.png"] = plot_calibration_over_time
    return plots


def _day_label(day: str | None) -> str:
    return NO_DT if day is None else day


def _date_ticks(ax: Any, days: list[str], axis: str = "x") -> None:
    """Every k-th day past a month of them, so that the dates stay legible."""
    step = max(1, len(days) // 30)
    positions = np.arange(len(days))[::step]
    if axis == "x":
        ax.set_xticks(positions, days[::step], rotation=45, ha="right")
    else:
        ax.set_yticks(positions, days[::step])


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


def plot_drift_psi(report: Report) -> Figure:
    """PSI per column (rows) and dt (columns), the newest run's per dt; breached cells labelled.

    The colour scale stops at four times the threshold, so that the clean days' small PSIs
    still differ in shade; a zeroed column's PSI of 5 shows as the darkest colour and its value.
    """
    days, columns = report.drift_days, report.drift_columns
    psi = np.full((len(columns), len(days)), np.nan)
    for r in report.drift:
        psi[columns.index(r["column"]), days.index(r[DATE_KEY])] = _nan([r["psi"]])[0]
    threshold = report.psi_threshold
    fig = Figure(
        figsize=(min(20, max(8, 0.42 * len(days) + 4)), max(4.5, 0.32 * len(columns) + 2.2)),
        layout="constrained",
    )
    ax = fig.subplots()
    cmap = matplotlib.colormaps["YlOrRd"].with_extremes(bad="lightgrey")
    image = ax.imshow(
        np.ma.masked_invalid(psi),
        aspect="auto",
        cmap=cmap,
        norm=Normalize(0.0, 4 * threshold),
        interpolation="nearest",
    )
    bar = fig.colorbar(image, ax=ax, extend="max", pad=0.01)
    bar.set_label("PSI against the model card's reference")
    bar.ax.axhline(threshold, color="black", ls="--", lw=1.2)
    # Values only where they matter: past a month of days every cell would be unreadable.
    for (i, j), value in np.ndenumerate(psi):
        if value >= threshold:
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, weight="bold",
                    color="white" if value >= 2.5 * threshold else "black")  # fmt: skip
    ax.set_yticks(np.arange(len(columns)), columns)
    _date_ticks(ax, [_day_label(d) for d in days])
    # White lines between cells, so that a row or a day can be followed across the map.
    ax.set_xticks(np.arange(len(days) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(columns) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set(xlabel=DATE_KEY, ylabel="model input (then the calibrated score)")
    ax.set_title(
        f"Drift per {DATE_KEY}: PSI per column, newest run per {DATE_KEY}\n"
        f"labelled: PSI ≥ {threshold:g} (dashed on the colour bar); grey: not computed"
    )
    return fig


def plot_calibration_over_time(report: Report) -> Figure:
    """ECE of the calibrated score per dt against the threshold, and mean calibrated score
    against the observed rate, from the newest evaluation of each dt."""
    rows = report.calibration_over_time
    days = [_day_label(r[DATE_KEY]) for r in rows]
    x = np.arange(len(rows))
    ece_width = _nan(r["ece_width_calibrated"] for r in rows)
    threshold = report.ece_threshold
    fig = Figure(figsize=(min(20, max(8, 0.35 * len(rows) + 4)), 7.5), layout="constrained")
    ece, rate = fig.subplots(2, 1, sharex=True)
    colour = COLOURS["calibrated"]
    ece.plot(x, ece_width, marker="o", color=colour, label="ECE, 15 equal-width bins")
    ece.plot(
        x,
        _nan(r["ece_mass_calibrated"] for r in rows),
        marker=".",
        ls=":",
        color=colour,
        label="ECE, 15 equal-mass bins",
    )
    breached = ece_width >= threshold
    if breached.any():
        ece.scatter(x[breached], ece_width[breached], s=120, facecolors="none",
                    edgecolors="red", lw=1.5, zorder=3, label=f"ECE ≥ {threshold:g}")  # fmt: skip
    ece.axhline(threshold, color="red", ls="--", lw=1.2, label=f"threshold {threshold:g}")
    top = np.nanmax(np.append(ece_width, threshold)) if len(rows) else threshold
    ece.set(ylabel="ECE of intent_calibrated", ylim=(0, 1.15 * top))
    ece.set_title(f"Calibration over time: newest evaluation per {DATE_KEY}, every run in OUTPUT")
    ece.legend(fontsize=8, loc="lower left", ncols=2)  # ECE sits high on bad days
    rate.plot(
        x,
        _nan(r["mean_calibrated"] for r in rows),
        marker="o",
        color=colour,
        label="mean predicted (calibrated)",
    )
    rate.plot(
        x,
        _nan(r["observed_rate"] for r in rows),
        marker="s",
        color=COLOURS["observed"],
        label="observed conversion rate",
    )
    highest = np.nanmax(
        np.concatenate([_nan(r[k] for r in rows) for k in ("mean_calibrated", "observed_rate")])
    )
    rate.set(ylabel="probability", xlabel=DATE_KEY, ylim=(0, 1.3 * highest))
    rate.legend(fontsize=8, loc="upper right", ncols=2)
    _date_ticks(rate, days)
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


def render(report: Report) -> list[Table | Text | str]:
    """Rich renderables: run summary, calibration (overall, per dt), stages, actors, failures."""
    out: list[Table | Text | str] = [_run_table(report)]
    if report.overall is None:
        out.append("No calibration table for this run (its input carried no label).")
    else:
        out += [_overall_table(report), *_partition_tables(report)]
    if report.actors:
        out += [_stage_table(report), _actor_table(report)]
    if report.failed:
        out.append(_failed_table(report))
    if report.drift:
        out.append(_drift_table(report))
    else:
        out.append(
            f"No drift tables in OUTPUT/{layout.DRIFT} (runs before drift was recorded, or a "
            "model card without a reference)."
        )
    if report.calibration_over_time:
        out.append(_calibration_over_time_table(report))
    out.append(Text("Plots: " + ", ".join(str(p) for p in report.plots)))
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
        day = Text(r[DATE_KEY] or "(none)")  # a folder name, not markup
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
        # Text, not markup: a file named `bad[/x].parquet` is shown as it is.
        cells = (f["shard_id"], f["input_path"], f["attempt"], f["error"])
        table.add_row(*(Text(str(cell)) for cell in cells))
    return table


def _drift_table(report: Report) -> Table:
    """Per dt: its breached columns by PSI (or, on a clean dt, the highest), and the worst
    unseen and missing + invalid shares; one line per clean dt, so a month fits a screen.

    The run each dt's figures come from goes in the caption, so that the table fits 80 columns.
    """
    threshold = report.psi_threshold
    table = Table(
        title=f"Drift per {DATE_KEY} (! marks PSI ≥ {threshold:g})",
        caption=_runs_caption(report.drift),
    )
    for name in (DATE_KEY, "highest PSI", "unseen", "missing+invalid"):
        table.add_column(name, no_wrap=name == DATE_KEY)
    for day in report.drift_days:
        rows = [r for r in report.drift if r[DATE_KEY] == day]
        ranked = sorted((r for r in rows if r["psi"] is not None), key=lambda r: -r["psi"])
        breached = [r for r in ranked if r["psi"] >= threshold]
        shown = breached[:MAX_BREACHES_SHOWN] or ranked[:1]
        lines = [f"{r['column']} {r['psi']:.3f}{' !' if r in breached else ''}" for r in shown]
        if len(breached) > len(shown):
            lines.append(f"(+{len(breached) - len(shown)} more !)")
        table.add_row(
            Text(_day_label(day)),
            "\n".join(lines) or "–",
            _worst(rows, lambda r: r["share_unseen"]),
            _worst(rows, lambda r: (r["share_missing"] or 0.0) + (r["share_invalid"] or 0.0)),
        )
    return table


def _runs_caption(rows: list[dict]) -> str:
    """``newest run per dt: <run> for <first>..<last> (n), …`` in dt order."""
    days: dict[str, list[str]] = {}
    for r in rows:
        run_days = days.setdefault(r["run_id"], [])
        if not run_days or run_days[-1] != _day_label(r[DATE_KEY]):
            run_days.append(_day_label(r[DATE_KEY]))
    spans = [
        f"{run} for {ds[0]}" if len(ds) == 1 else f"{run} for {ds[0]}..{ds[-1]} ({len(ds)})"
        for run, ds in days.items()
    ]
    return f"newest run per {DATE_KEY}: " + "; ".join(spans)


def _worst(rows: list[dict], share: Callable[[dict], float | None]) -> str:
    """The column with the largest non-zero share, as ``column 12.3%``; "–" when none."""
    shares = [(value, r["column"]) for r in rows if (value := share(r))]
    if not shares:
        return "–"
    value, column = max(shares)
    return f"{column} {value:.1%}"


def _calibration_over_time_table(report: Report) -> Table:
    threshold = report.ece_threshold
    table = Table(
        title=f"Calibration over time (! marks ECE ≥ {threshold:g})",
        caption=_runs_caption(report.calibration_over_time).replace("run", "evaluation", 1),
    )
    for name in (DATE_KEY, "rows", "observed", "mean calibrated", "ECE width", "ECE mass"):
        table.add_column(name, justify="left" if name == DATE_KEY else "right", no_wrap=True)
    for r in report.calibration_over_time:
        ece = r["ece_width_calibrated"]
        table.add_row(
            Text(_day_label(r[DATE_KEY])),
            f"{r['rows']:,}",
            _f(r["observed_rate"]),
            _f(r["mean_calibrated"]),
            _f(ece) + (" !" if ece is not None and ece >= threshold else "  "),
            _f(r["ece_mass_calibrated"]),
        )
    return table
