"""The report's PNGs: matplotlib figures of a `Report`, and `write_plots` that saves them.

Separate from the queries and the terminal tables: drawing is the one part that needs matplotlib,
and its layout choices (sizes, ticks, colour scales) are many and only about pictures. The
object API renders with Agg: no pyplot, no display, no global state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from scorer.jobs.report.contents import HISTOGRAM_BINS, SCORES, Report, day_label
from scorer.partitions import DATE_KEY
from scorer.pipeline.stats import STAGES

COLOURS = {"raw": "tab:orange", "calibrated": "tab:blue", "observed": "black"}


def write_plots(report: Report, out_dir: str | Path) -> list[Path]:
    """Draw the report's PNGs into out_dir, skipping plots without data (no labels, no shards)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in _plots(report).items():
        paths.append(out / name)
        draw(report).savefig(paths[-1], dpi=110)
    return paths


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
    row = report.labelled_overall()
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
    days = [day_label(r[DATE_KEY]) for r in rows]
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
    breached = np.zeros(psi.shape, dtype=bool)
    for r in report.drift:
        cell = columns.index(r["column"]), days.index(r[DATE_KEY])
        psi[cell], breached[cell] = _nan([r["psi"]])[0], report.psi_breached(r)
    threshold = report.monitor.psi
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
    for i, j in zip(*np.nonzero(breached)):
        value = psi[i, j]
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, weight="bold",
                color="white" if value >= 2.5 * threshold else "black")  # fmt: skip
    ax.set_yticks(np.arange(len(columns)), columns)
    _date_ticks(ax, [day_label(d) for d in days])
    # White lines between cells, so that a row or a day can be followed across the map.
    ax.set_xticks(np.arange(len(days) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(columns) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set(xlabel=DATE_KEY, ylabel="model input (then the calibrated score)")
    ax.set_title(
        f"Drift per {DATE_KEY}: PSI per column, newest run per {DATE_KEY}\n"
        f"labelled: {report.breach_rule('psi', 'PSI')} (dashed on the colour bar)\n"
        "grey: not computed"
    )
    return fig


def plot_calibration_over_time(report: Report) -> Figure:
    """ECE of the calibrated score per dt against the threshold, and mean calibrated score
    against the observed rate, from the newest evaluation of each dt."""
    rows = report.calibration_over_time
    days = [day_label(r[DATE_KEY]) for r in rows]
    x = np.arange(len(rows))
    ece_width = _nan(r["ece_width_calibrated"] for r in rows)
    threshold = report.monitor.ece
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
    breached = np.array([report.ece_breached(r) for r in rows], dtype=bool)
    if breached.any():
        ece.scatter(x[breached], ece_width[breached], s=120, facecolors="none", edgecolors="red",
                    lw=1.5, zorder=3, label=report.breach_rule("ece", "ECE"))  # fmt: skip
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
