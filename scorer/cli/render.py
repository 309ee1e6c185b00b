"""What the commands print: a result of the library as text for a person or JSON for a program.

The library returns results (`RunSummary`, `Evaluation`, `ModelCard`, ...) and never prints;
the command modules decide when and where to print, and this module how. `--json` output is
the result's own ``to_dict()``; alert lines are each alert's own ``message``, on stderr.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from scorer.partitions import DATE_KEY

if TYPE_CHECKING:
    from rich.console import Console

    from scorer.jobs.evaluate import Evaluation
    from scorer.model.card import InputSpec, ModelCard
    from scorer.pipeline.alerts import Alert
    from scorer.pipeline.ledger import RunSummary


def echo_json(data: object) -> None:
    """``data`` as indented JSON on stdout; what JSON has no type for (dates) as its text."""
    click.echo(json.dumps(data, default=str, indent=2))


def print_alerts(alerts: list[Alert]) -> None:
    """One ``ALERT ...`` line per alert on stderr, whatever else went to stdout."""
    for alert in alerts:
        click.echo(alert.message, err=True)


def wide_console() -> Console:
    """A rich console for the benchmarks' tables, wider than a pipe's 80 columns."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)
    return console


@contextlib.contextmanager
def shown_warnings() -> Iterator[None]:
    """Print library warnings (e.g. isotonic fitted on few rows) as one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        click.echo(f"Warning: {warning.message}", err=True)


# -- scorer score ------------------------------------------------------------------------------


def describe_run(summary: RunSummary) -> str:
    lines = [
        f"run {summary.run_id}: {summary.status}",
        f"  rows scored {summary.rows:,} in {summary.shards_committed:,} shard(s); skipped "
        f"{summary.shards_skipped:,} committed shard(s) ({summary.rows_skipped:,} rows); "
        f"failed {summary.shards_failed:,}",
    ]
    if summary.rows_read != summary.rows or summary.row_groups_pruned:
        lines.append(  # a day filter on a day column (docs/nights-in-a-column.md)
            f"  days: {summary.rows:,} rows selected of {summary.rows_read:,} read; "
            f"{summary.row_groups_pruned:,} row group(s) skipped by their statistics"
        )
    if summary.rows_without_day:
        lines.append(f"  {summary.rows_without_day:,} rows without a day (their own dt: null)")
    if summary.rows:
        lines.append(
            f"  {summary.wall_seconds:.1f} s wall ({summary.setup_seconds:.1f} s setup), "
            f"{summary.work_rows_per_second:,.0f} rows/s in the work window on {summary.actors} "
            f"actor(s), {summary.nodes} node(s)"
        )
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in summary.stage_seconds.items())
        lines.append(f"  time per stage (all actors): {stages}")
        if summary.work_seconds:
            cores = summary.cpu_seconds / summary.work_seconds
            lines.append(
                f"  CPU {summary.cpu_seconds:.2f} s in the actors: {cores:.1f} core(s) busy"
            )
        if len(summary.rows_per_node) > 1:
            per_node = summary.work_seconds or 1.0
            lines += [
                f"  node {node}: {rows / per_node:,.0f} rows/s"
                for node, rows in summary.rows_per_node.items()
            ]
    if summary.drift_path is not None:
        lines.append(f"  drift: {summary.drift_path}")
    elif summary.drift_skipped is not None:
        lines.append(f"  drift: skipped ({summary.drift_skipped})")
    for failure in summary.failures:
        lines.append(f"  FAILED {failure['shard_id']}: {failure['error']}")
    return "\n".join(lines)


# -- scorer evaluate ---------------------------------------------------------------------------

# The per-day table of `scorer evaluate`: (heading, calibration column, width).
_EVALUATION_FIGURES = (
    ("observed", "observed_rate", 10),
    ("mean cal", "mean_calibrated", 10),
    ("ECE cal", "ece_width_calibrated", 9),
    ("AUC", "roc_auc_calibrated", 8),
)


def describe_evaluation(evaluation: Evaluation) -> str:
    e = evaluation
    lines = [
        f"evaluation {e.run_id} of {e.rows_scored:,} committed score rows "
        f"(run(s) {', '.join(e.scored_run_ids)}) against {e.label_rows:,} labels",
        f"  labelled {e.rows_labelled:,} scored rows; {e.scores_unlabelled:,} scored rows without "
        f"a label; {e.labels_unscored:,} labels of sessions never scored",
    ]
    if e.days_without_labels:
        lines.append(f"  days without labels: {', '.join(map(str, e.days_without_labels))}")
    heading = "".join(f"{name:>{width}}" for name, _, width in _EVALUATION_FIGURES)
    lines.append(f"  {'dt':<12}{'rows':>12}{heading}")
    for row in e.calibration.to_pylist():
        day = row[DATE_KEY] if row["scope"] == "partition" else "overall"
        figures = "".join(
            f"{'-' if row[column] is None else format(row[column], '.4f'):>{width}}"
            for _, column, width in _EVALUATION_FIGURES
        )
        lines.append(f"  {day!s:<12}{row['rows']:>12,}{figures}")
    lines.append(
        f"  wrote {e.calibration_path} in {e.seconds:.1f} s ({e.rows_per_second:,.0f} rows/s)"
    )
    return "\n".join(lines)


# -- model cards: train, calibrate, import, inspect --------------------------------------------

_FIGURES = (
    ("ROC AUC", "roc_auc"),
    ("Brier", "brier"),
    ("log loss", "log_loss"),
    ("ECE width", "ece_width"),
    ("ECE mass", "ece_mass"),
    ("mean score", "mean_score"),
)


def describe_written_model(out_dir: Path, card: ModelCard) -> str:
    """The line `train`, `calibrate` and `import` print once the model directory is written."""
    return f"wrote {out_dir}: {card.name} {card.version}, calibration {card.calibration.method}"


def holdout_table(card: ModelCard) -> str:
    holdout = card.holdout
    lines = [
        f"holdout: {holdout.rows:,} rows, {holdout.positives:,} converted ({holdout.evaluated_on})",
        f"  {'':<12}{'raw':>10}{'calibrated':>12}",
    ]
    for label, key in _FIGURES:
        lines.append(f"  {label:<12}{holdout.raw[key]:>10.4f}{holdout.calibrated[key]:>12.4f}")
    return "\n".join(lines)


def card_text(model_dir: Path, card: ModelCard, problem: str | None) -> str:
    def valid_range(spec: InputSpec) -> str:
        if spec.min is not None and spec.max is not None:
            return f"[{spec.min:g}, {spec.max:g}]"
        if spec.min is not None:
            return f">= {spec.min:g}"
        return f"<= {spec.max:g}" if spec.max is not None else ""

    cal, training = card.calibration, card.training
    lines = [
        f"{card.name} {card.version}  (created {card.created})",
        f"directory   {model_dir}",
        f"sha256      {card.sha256}  "
        + ("checksum ok" if problem is None else "CHECKSUM MISMATCH"),
        f"key column  {card.key_column}    label column  {card.label_column}",
        "",
        "inputs (in status precedence order)",
        f"  {'name':<18}{'dtype':<8}{'kind':<13}{'valid':<10}vocabulary",
    ]
    for spec in card.inputs:
        vocabulary = ""
        if spec.vocabulary is not None:
            vocabulary = f"{len(spec.vocabulary)}: " + " ".join(str(v) for v in spec.vocabulary)
        lines.append(
            f"  {spec.name:<18}{spec.dtype:<8}{spec.kind:<13}{valid_range(spec):<10}{vocabulary}"
        )
    lines += ["", "outputs"]
    lines += [f"  {out.name:<18}{out.dtype:<8}{out.description}" for out in card.outputs]
    knots = f", {cal.knots} knots" if cal.method == "isotonic" else ""
    splits = " / ".join(f"{name} {rows:,}" for name, rows in training.splits.items())
    lines += [
        "",
        f"calibration {cal.method}{knots}, fitted on {cal.fitted_rows:,} rows "
        f"({cal.fitted_positives:,} converted): {cal.fitted_on}",
        f"training    {training.rows:,} rows ({training.positives:,} converted) of {training.data}",
        f"            seed {training.seed}, splits {splits}, class weight {training.class_weight}",
        f"            {training.estimator}",
        *_imported_lines(card),
        "",
        holdout_table(card),
        "",
        "history",
    ]
    lines += [f"  {entry.version:<16}{entry.created:<27}{entry.change}" for entry in card.history]
    return "\n".join(lines)


def _imported_lines(card: ModelCard) -> list[str]:
    imported = card.imported
    if imported is None:
        return []
    where = "" if imported.output_index is None else f", column {imported.output_index}"
    lines = [
        f"imported    from {imported.source} (sha256 {imported.source_sha256})",
        f"            by {imported.producer_name} {imported.producer_version}; score: "
        f"{imported.output_kind} of output {imported.output!r}{where}"
        + (" (a ZipMap, cut off at its input)" if imported.zipmap else ""),
    ]
    for graph_input in imported.inputs:
        lines.append(
            f"            input {graph_input.name!r} {graph_input.element_type} "
            f"[{', '.join('N' if d is None else str(d) for d in graph_input.shape)}] <- "
            + ", ".join(graph_input.columns)
        )
    scores = imported.calibration_search.get("log_loss")
    if scores:
        listed = ", ".join(f"{m} {v:.4f}" for m, v in scores.items())
        lines.append(f"            auto calibration (out-of-fold log loss): {listed}")
    return lines
