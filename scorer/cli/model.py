"""The model commands: `train`, `calibrate`, `import` and `inspect` of a model directory.

Each calls one function of `scorer.model` (`train`, `recalibrate`, `import_model`, the card's
checksum) and prints the card it wrote or read (`render`); `import`'s option values
(`--features`, `--input`, `--range`) are parsed here into `ImportOptions`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from scorer.cli.exits import exit_with, handle_errors
from scorer.cli.options import (
    data_argument,
    json_option,
    method_option,
    out_option,
    seed_option,
)
from scorer.cli.render import (
    card_text,
    describe_written_model,
    echo_json,
    holdout_table,
    shown_warnings,
)
from scorer.model.card import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION,
    DEFAULT_VERSION,
    OUTPUT_KINDS,
)
from scorer.model.sessions import KEY_COLUMN, LABEL_COLUMN


@click.command("train")
@data_argument
@out_option("Model directory to write (model.onnx and model.json); created if needed.")
@method_option(
    "--calibration",
    "Calibration stage fitted on the held-out calibration split.",
    default=DEFAULT_CALIBRATION,
)
@seed_option("Seed of the stratified train/calibration/test split.")
@click.option("--name", help="Model name in the card. Default: the --out folder's name.")
@click.option(
    "--model-version", default=DEFAULT_VERSION, show_default=True, help="Model version in the card."
)
@handle_errors
def train_command(
    data: Path, out_dir: Path, calibration: str, seed: int, name: str | None, model_version: str
) -> None:
    """Train the intent model on labelled sessions in DATA and write a model directory.

    DATA is a Parquet file or a folder of them (hive partitions allowed) in the session schema
    with the label column `converted`; the bundled real sessions are
    scorer/data/sessions.parquet. A seeded stratified split gives train (60%), calibration
    (20%) and test (20%) rows: a class-weighted logistic regression is fitted on the first, the
    calibrator on the second, and the holdout metrics of the card come from the third.

    \b
    Example:
      scorer train scorer/data/sessions.parquet --out models/intent-v1 --calibration isotonic
    """
    from scorer.model.train import train

    with shown_warnings():
        card = train(
            data,
            out_dir,
            calibration=calibration,
            seed=seed,
            name=name or out_dir.resolve().name,
            version=model_version,
        )
    click.echo(describe_written_model(out_dir, card))
    click.echo(holdout_table(card))


@click.command("calibrate")
@data_argument
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Model directory to recalibrate. Default: the bundled model.",
)
@out_option("Model directory to write (may be --model itself, replaced atomically).")
@method_option("--method", "Calibration method. Default: the model's current one.")
@seed_option("Seed of the stratified calibration/test halves of DATA.")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Only dt partitions of DATA on or after this day.",
)
@click.option(
    "--until",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Only dt partitions of DATA on or before this day.",
)
@click.option(
    "--labels",
    "labels_from",
    type=click.Path(exists=True, path_type=Path),
    help="Parquet of key and label (late labels, as `scorer evaluate` reads them): DATA's "
    "sessions take their label from here, joined on the card's key column.",
)
@handle_errors
def calibrate_command(
    data: Path,
    model_dir: Path | None,
    out_dir: Path,
    method: str | None,
    seed: int,
    since: dt.datetime | None,
    until: dt.datetime | None,
    labels_from: Path | None,
) -> None:
    """Refit only the calibration stage of a model on newer labelled sessions in DATA.

    Base rates drift; the ranking model need not be retrained for that. Half of DATA
    (stratified, seeded) fits the calibrator, the other half gives the new holdout metrics. The
    logistic model is copied unchanged, so intent_raw stays bit-identical; the version gets a
    +cal.N suffix and the card's history records the change.

    \b
    Example:
      scorer calibrate history/dt=2026-11-27 --model models/intent-v1 --out models/intent-v1-nov
      scorer calibrate funnel/ --since 2026-11-20 --until 2026-11-22 --out models/funnel
      scorer calibrate sessions/ --labels late-labels/ --since 2026-11-20 --out models/nov
    """
    from scorer.model.train import recalibrate

    with shown_warnings():
        card = recalibrate(
            data,
            model_dir,
            out_dir,
            method=method,
            seed=seed,
            since=since.date() if since else None,
            until=until.date() if until else None,
            labels_from=labels_from,
        )
    click.echo(describe_written_model(out_dir, card))
    click.echo(holdout_table(card))


@click.command("import")
@click.argument("onnx_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Labelled sessions (a Parquet file or folder, with the label column): they fit the "
    "calibration, give the vocabularies, the drift reference and the holdout metrics.",
)
@out_option("Model directory to write (model.onnx and model.json); nothing is written on error.")
@click.option(
    "--features",
    metavar="COL,COL,...",
    help="The session columns of the graph's 2-D numeric input, in matrix order (required when "
    "the graph has one).",
)
@click.option(
    "--input",
    "input_map",
    multiple=True,
    metavar="GRAPH_INPUT=COLUMN",
    help="Feed a one-column graph input from this column (repeatable). Default: inputs named "
    "like a session column take it.",
)
@click.option(
    "--output",
    metavar="NAME[:INDEX]",
    help="The output holding the positive-class score, and its column. Default: the one [N, 2] "
    "float output (column 1) or ZipMap (key 1).",
)
@click.option(
    "--output-kind",
    type=click.Choice(OUTPUT_KINDS),
    help="Whether the score is a probability or a logit; required for one float per row.",
)
@click.option(
    "--calibration",
    type=click.Choice(("auto", *CALIBRATION_METHODS)),
    default="auto",
    show_default=True,
    help="Calibration stage; auto: the lowest out-of-fold log loss on the calibration half, "
    "none included.",
)
@click.option(
    "--range",
    "ranges",
    multiple=True,
    metavar="COL=MIN:MAX",
    help="Valid range of a numeric column, either end may be empty (repeatable); rows outside "
    "get status out_of_range:COL.",
)
@click.option("--name", help="Model name in the card. Default: the --out folder's name.")
@click.option(
    "--version",
    "model_version",
    default=DEFAULT_VERSION,
    show_default=True,
    help="Model version in the card.",
)
@click.option(
    "--key-column", default=KEY_COLUMN, show_default=True, help="Row key column of the card."
)
@click.option(
    "--label-column",
    default=LABEL_COLUMN,
    show_default=True,
    help="Label column of DATA (bool or 0/1).",
)
@seed_option("Seed of the stratified calibration/test halves of DATA and of the folds.")
@handle_errors
def import_command(
    onnx_file: Path,
    data: Path,
    out_dir: Path,
    features: str | None,
    input_map: tuple[str, ...],
    output: str | None,
    output_kind: str | None,
    calibration: str,
    ranges: tuple[str, ...],
    name: str | None,
    model_version: str,
    key_column: str,
    label_column: str,
    seed: int,
) -> None:
    """Make a model directory from a binary classifier exported to ONNX elsewhere.

    The graph is kept as it is (a ZipMap output is cut off at its input tensor); the scorer adds
    intent_raw (the model's own positive-class probability, bit for bit; a logit goes through a
    sigmoid) and intent_calibrated (a calibration stage in the same graph). LABELLED (--data) is split in
    stratified halves: the calibration half fits the calibrator (with auto, each method is
    scored by 5-fold out-of-fold log loss and the card records every score), the test half gives
    the holdout metrics. The card also gets the inputs as the graph declares them, string
    vocabularies and the drift reference from LABELLED, and where the file came from (its sha256,
    producer, these flags). Every command then works with the directory as with a trained one.

    Exit 2, with nothing written, for: no probability-like output or two candidates without
    --output, a multi-class model, --features of the wrong count, a graph input without a
    column, a string input over a numeric column, one float output without --output-kind, a
    graph with external data or an operator domain onnxruntime lacks, LABELLED with one class.

    \b
    Examples:
      scorer import lgbm.onnx --data labelled.parquet --out models/lgbm \\
          --features admin_pages,admin_seconds,info_pages,...
      scorer import pipeline.onnx --data labelled.parquet --out models/skl
      scorer import net.onnx --data labelled.parquet --out models/net --output-kind logit \\
          --features ...  --range page_value=0:
    """
    from scorer.model.importer import ImportOptions, import_model

    options = ImportOptions(
        features=_column_list(features) if features is not None else None,
        inputs=_pairs(input_map, "--input", "GRAPH_INPUT=COLUMN"),
        output=output,
        output_kind=output_kind,
        calibration=calibration,
        ranges={
            col: _bounds(col, text)
            for col, text in _pairs(ranges, "--range", "COL=MIN:MAX").items()
        },
        name=name,
        version=model_version,
        key_column=key_column,
        label_column=label_column,
        seed=seed,
    )
    with shown_warnings():
        card = import_model(onnx_file, data, out_dir, options)
    assert card.imported is not None
    search = card.imported.calibration_search
    click.echo(describe_written_model(out_dir, card))
    if "log_loss" in search:
        scores = ", ".join(f"{m} {v:.4f}" for m, v in search["log_loss"].items())
        click.echo(f"auto calibration, {search['folds']}-fold out-of-fold log loss: {scores}")
    click.echo(holdout_table(card))


def _column_list(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(","))
    if not all(columns):
        raise click.BadParameter(f"empty column name in {text!r}", param_hint="--features")
    return columns


def _pairs(items: tuple[str, ...], flag: str, form: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected {form}, got {item!r}", param_hint=flag)
        pairs[key] = value
    return pairs


def _bounds(column: str, text: str) -> tuple[float | None, float | None]:
    low, sep, high = text.partition(":")
    try:
        bounds = (float(low) if low else None, float(high) if high else None)
    except ValueError:
        bounds = None
    if not sep or bounds is None or bounds == (None, None):
        raise click.BadParameter(
            f"expected {column}=MIN:MAX with numbers (one end may be empty), got {column}={text}",
            param_hint="--range",
        )
    return bounds


@click.command("inspect")
@click.argument(
    "model_dir",
    metavar="MODEL",
    required=False,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@json_option("Print the card and the check as JSON.")
@handle_errors
def inspect_command(model_dir: Path | None, as_json: bool) -> None:
    """Show a model's card and check model.onnx against its sha256 (exit 2 on a mismatch).

    MODEL is a model directory; default: the bundled model. Shows inputs with kind, valid range
    and vocabulary, outputs, calibration, training data, holdout metrics raw vs calibrated, and
    the history of the directory.
    """
    from scorer.errors import ChecksumError
    from scorer.model.card import load_card, verify_checksum
    from scorer.model.runtime import default_model_dir

    model_dir = model_dir or default_model_dir()
    card = load_card(model_dir)
    try:
        verify_checksum(model_dir, card)
        problem = None
    except ChecksumError as exc:
        problem = str(exc)
    if as_json:
        check = {"checksum": "ok" if problem is None else "mismatch", "error": problem}
        echo_json({"model_dir": str(model_dir), **card.to_json(), **check})
    else:
        click.echo(card_text(model_dir, card, problem))
    if problem is not None:
        if not as_json:
            click.echo(f"ChecksumError: {problem}", err=True)
        exit_with(ChecksumError.exit_code)
