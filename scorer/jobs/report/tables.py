"""The report in the terminal: rich tables of a `Report`, which `render` returns in order.

Separate from the plots: the tables are what a person reads first, kept to an 80-column
terminal, and they print nothing themselves (the CLI decides where they go).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rich.table import Table
from rich.text import Text

from scorer.jobs.report.contents import SCORES, Report, day_label
from scorer.partitions import DATE_KEY
from scorer.pipeline import layout
from scorer.pipeline.stats import STAGES

MAX_BREACHES_SHOWN = 4  # per dt in the terminal's drift table, one line each


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
    row = report.labelled_overall()
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
        day = Text(day_label(r[DATE_KEY]))  # a folder name, not markup
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
    table = Table(
        title=f"Drift per {DATE_KEY} (! marks {report.breach_rule('psi', 'PSI')})",
        caption=_runs_caption(report.drift),
    )
    for name in (DATE_KEY, "highest PSI", "unseen", "missing+invalid"):
        table.add_column(name, no_wrap=name == DATE_KEY)
    for day in report.drift_days:
        rows = [r for r in report.drift if r[DATE_KEY] == day]
        ranked = sorted((r for r in rows if r["psi"] is not None), key=lambda r: -r["psi"])
        breached = [r for r in ranked if report.psi_breached(r)]
        shown = breached[:MAX_BREACHES_SHOWN] or ranked[:1]
        lines = [f"{r['column']} {r['psi']:.3f}{' !' if r in breached else ''}" for r in shown]
        if len(breached) > len(shown):
            lines.append(f"(+{len(breached) - len(shown)} more !)")
        table.add_row(
            Text(day_label(day)),
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
        if not run_days or run_days[-1] != day_label(r[DATE_KEY]):
            run_days.append(day_label(r[DATE_KEY]))
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
    table = Table(
        title=f"Calibration over time (! marks {report.breach_rule('ece', 'ECE')})",
        caption=_runs_caption(report.calibration_over_time).replace("run", "evaluation", 1),
    )
    for name in (DATE_KEY, "rows", "observed", "mean calibrated", "ECE width", "ECE mass"):
        table.add_column(name, justify="left" if name == DATE_KEY else "right", no_wrap=True)
    for r in report.calibration_over_time:
        table.add_row(
            Text(day_label(r[DATE_KEY])),
            f"{r['rows']:,}",
            _f(r["observed_rate"]),
            _f(r["mean_calibrated"]),
            _f(r["ece_width_calibrated"]) + (" !" if report.ece_breached(r) else "  "),
            _f(r["ece_mass_calibrated"]),
        )
    return table
