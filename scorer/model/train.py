"""Training and recalibration: labelled sessions -> scikit-learn fit -> ONNX graph -> model dir.

`train` fits the whole model on a seeded stratified split of the labelled sessions:

    train (60%)        log1p + StandardScaler numerics, one-hot categoricals with an explicit
                       vocabulary (unseen -> all-zero), booleans 0/1, logistic regression with
                       balanced class weights (as practitioners do for rare conversions, which
                       is exactly what leaves the raw probabilities overconfident)
    calibration (20%)  the calibrator, on the logistic model's logits
    test (20%)         the holdout metrics of the card, raw and calibrated, computed on the
                       written graph itself

`recalibrate` refits only the calibrator on newer labelled sessions. The linear parameters are
copied from the old card and the graph's raw subgraph is built by the same code, so `intent_raw`
stays bit-identical; the version gets a `+cal.N` suffix and the card's history says what changed.

The pure part, `fit`, does no I/O, so tests can compare the written graph against the very
scikit-learn pipeline it came from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import itertools
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from scorer.arrow import to_numpy
from scorer.errors import ShardReadError, TrainingDataError
from scorer.metrics import summary
from scorer.model.calibration import fit_calibrator
from scorer.model.card import (
    BUNDLED_MODEL,
    DEFAULT_CALIBRATION,
    DEFAULT_SEED,
    DEFAULT_VERSION,
    GRAPH_FILE,
    Calibration,
    HistoryEntry,
    Holdout,
    InputSpec,
    ModelCard,
    OutputSpec,
    Training,
    save_card,
    verify_checksum,
    write_atomic,
)
from scorer.model.encode import encode, encode_inputs
from scorer.model.foreign import LOGIT_OUTPUT, recalibrated
from scorer.model.graph import CalibratorParams, LinearParams, build_graph
from scorer.model.interface import CALIBRATED_OUTPUT, RAW_OUTPUT, session_options
from scorer.model.reference import Reference, build_reference, with_scores
from scorer.model.runtime import IntentModel, load_model
from scorer.model.sessions import (
    CODES,
    KEY_COLUMN,
    LABEL_COLUMN,
    MONTHS,
    VISITOR_TYPES,
    bundled_sessions_path,
)
from scorer.partitions import DATE_KEY
from scorer.storage import foreign_errors

BUNDLED_DESCRIPTION = "bundled real sessions (UCI Online Shoppers Purchasing Intention)"
SPLITS = (("train", 0.6), ("calibration", 0.2), ("test", 0.2))
CLASS_WEIGHT = "balanced"
MAX_ITER = 1000
ESTIMATOR = (
    f"LogisticRegression(class_weight={CLASS_WEIGHT!r}, C=1.0, max_iter={MAX_ITER}) on "
    "log1p+StandardScaler numerics, one-hot categoricals (unseen -> all-zero), 0/1 booleans"
)
HOLDOUT_FIGURES = ("mean_score", "roc_auc", "brier", "log_loss", "ece_width", "ece_mass")

OUTPUTS = (
    OutputSpec(RAW_OUTPUT, "float32", "probability of conversion from the logistic model alone"),
    OutputSpec(CALIBRATED_OUTPUT, "float32", "the raw score after the calibration stage"),
)

# The session schema's model inputs, in card (= status precedence) order: (name, dtype, min, max).
_NUMERIC = (
    ("admin_pages", "int", 0, None),
    ("admin_seconds", "float", 0, None),
    ("info_pages", "int", 0, None),
    ("info_seconds", "float", 0, None),
    ("product_pages", "int", 0, None),
    ("product_seconds", "float", 0, None),
    ("bounce_rate", "float", 0, 1),
    ("exit_rate", "float", 0, 1),
    ("page_value", "float", 0, None),
    ("special_day", "float", 0, 1),
)
_STRING_CATEGORICALS = {"month": MONTHS, "visitor_type": VISITOR_TYPES}
# Integer codes whose meaning the data set does not publish: the vocabulary is what training saw.
INTEGER_CATEGORICALS = CODES
_CATEGORICAL_ORDER = ("month", *INTEGER_CATEGORICALS, "visitor_type")
_BOOLEAN = ("weekend",)
# The reference's season and calendar columns (`scorer.model.reference`): a night's sessions
# hold one month, no special day or all the same one, and a weekend day only weekend rows.
SEASON = "month"
CALENDAR = ("month", "special_day", "weekend")


def session_inputs(integer_vocabularies: dict[str, tuple[int, ...]]) -> tuple[InputSpec, ...]:
    """The model's inputs over the session schema (docs/input.md), given the integer codes seen."""
    numeric = tuple(
        InputSpec(name, dtype, "numeric", low, high) for name, dtype, low, high in _NUMERIC
    )
    categorical = tuple(
        InputSpec(name, "string", "categorical", vocabulary=_STRING_CATEGORICALS[name])
        if name in _STRING_CATEGORICALS
        else InputSpec(name, "int", "categorical", vocabulary=integer_vocabularies.get(name, ()))
        for name in _CATEGORICAL_ORDER
    )
    boolean = tuple(InputSpec(name, "bool", "boolean") for name in _BOOLEAN)
    return numeric + categorical + boolean


@dataclass(frozen=True)
class FittedModel:
    """Everything `fit` learned, before anything is written."""

    inputs: tuple[InputSpec, ...]
    pipeline: Pipeline  # the scikit-learn model the graph reproduces
    linear: LinearParams
    calibrator: CalibratorParams
    splits: dict[str, np.ndarray]  # split name -> row indices into the fitted table


@dataclass(frozen=True)
class ReferenceRows:
    """The rows a model directory's reference is built from (`scorer.model.reference`)."""

    table: pa.Table
    labels: np.ndarray
    data: str
    inputs_from: Reference | None = None  # input counts to keep (recalibration): scores only


def read_labelled(
    data: str | Path | pa.Table | None,
    *,
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> tuple[pa.Table, str]:
    """Labelled sessions and a description of where they came from.

    `data` is a Parquet file, a directory of them (hive partitions allowed), an Arrow table, or
    None for the bundled real sessions. `since`/`until` keep the `dt` partitions in that range
    (inclusive), e.g. the last few days of a history for recalibration.
    """
    if isinstance(data, pa.Table):
        return data, "an in-memory table"
    path = bundled_sessions_path() if data is None else Path(data)
    described = str(path) if data is not None else BUNDLED_DESCRIPTION
    with foreign_errors(
        str(path),
        "cannot read labelled sessions",
        error=TrainingDataError,
        foreign=(pa.ArrowException,),
    ):
        dataset = ds.dataset(path, format="parquet", partitioning="hive")
        table = dataset.to_table(filter=_days_filter(dataset, path, since, until))
    if since or until:
        described += f" (dt {since or '...'} to {until or '...'})"
    if table.num_rows == 0:
        raise TrainingDataError(f"{described}: no rows")
    return table, described


def join_late_labels(
    sessions: pa.Table, source: str, labels_path: str | Path, key: str, label: str
) -> tuple[pa.Table, str]:
    """``sessions`` with ``label`` taken from the Parquet at ``labels_path`` by ``key``: the
    labels that arrive days after scoring. Sessions without a label are left out (a label
    without a session too); a key labelled twice is an error naming it. Rows come out in key
    order, so the seeded splits do not depend on how the join was scheduled."""
    path = Path(labels_path)
    with foreign_errors(
        str(path), "cannot read labels", error=TrainingDataError, foreign=(pa.ArrowException,)
    ):
        table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    for column, of in ((key, path), (label, path)):
        if column not in table.column_names:
            raise TrainingDataError(f"{of}: no column {column!r} in the labels")
    if key not in sessions.column_names:
        raise TrainingDataError(f"{source}: no key column {key!r} to join the labels on")
    labels = table.select([key, label])
    counts = labels.group_by(key).aggregate([([], "count_all")])
    twice = counts.filter(pc.greater(counts["count_all"], 1))
    if twice.num_rows:
        shown = ", ".join(str(k) for k in sorted(twice[key].to_pylist())[:5])
        raise TrainingDataError(f"{path}: {twice.num_rows} key(s) labelled more than once: {shown}")
    unlabelled = sessions.drop_columns([label]) if label in sessions.column_names else sessions
    # Dictionary columns (hive `dt`, categoricals) are decoded: Acero's join carries plain types.
    plain = pa.table(
        {
            name: column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
            for name, column in zip(unlabelled.column_names, unlabelled.columns)
        }
    )
    joined = plain.join(labels, keys=key, join_type="inner").sort_by(key)
    if joined.num_rows == 0:
        raise TrainingDataError(f"{source}: none of its sessions has a label in {path}")
    return joined, f"{source} with the labels of {path} ({joined.num_rows:,} sessions)"


def _days_filter(
    dataset: ds.Dataset, path: Path, since: dt.date | None, until: dt.date | None
) -> ds.Expression | None:
    if since is None and until is None:
        return None
    if DATE_KEY not in dataset.schema.names:
        raise TrainingDataError(f"{path}: --since/--until need a dt=YYYY-MM-DD partition folder")
    # ISO dates order as strings, whatever type the partition was inferred as.
    day = ds.field(DATE_KEY).cast(pa.string())
    bounds = [day >= since.isoformat()] if since else []
    bounds += [day <= until.isoformat()] if until else []
    return functools.reduce(operator.and_, bounds)


def labels_of(
    table: pa.Table, inputs: tuple[InputSpec, ...], label_column: str, source: str
) -> np.ndarray:
    """Validate labelled sessions for fitting and return the 0/1 labels.

    Refused, with a message naming the problem: a missing model or label column, a label of a
    wrong type, with nulls or with one class only, and rows the scorer would mark invalid (a model
    fitted on them would learn from values it never scores).
    """
    if label_column not in table.column_names:
        raise TrainingDataError(f"{source}: the label column {label_column!r} is missing")
    label = table[label_column]
    if not (pa.types.is_boolean(label.type) or pa.types.is_integer(label.type)):
        raise TrainingDataError(
            f"{source}: the label column {label_column!r} has type {label.type}, "
            "expected bool or 0/1"
        )
    if label.null_count:
        raise TrainingDataError(
            f"{source}: the label column {label_column!r} has {label.null_count} null(s)"
        )
    labels = np.asarray(label.to_numpy(), dtype=np.int64)
    if not np.isin(labels, (0, 1)).all():
        raise TrainingDataError(
            f"{source}: the label column {label_column!r} holds values other than 0/1"
        )
    classes = np.unique(labels)
    if len(classes) < 2:
        raise TrainingDataError(
            f"{source}: the label column {label_column!r} has one class only ({bool(classes[0])}); "
            "a model needs converted and unconverted sessions"
        )
    try:
        encoded = encode_inputs(inputs, table)
    except ShardReadError as exc:
        raise TrainingDataError(f"{source}: {exc}") from exc
    if encoded.rows_invalid:
        worst = sorted(encoded.invalid_counts.items(), key=lambda item: -item[1])
        listed = ", ".join(f"{code} ({rows} rows)" for code, rows in worst[:5])
        raise TrainingDataError(
            f"{source}: {encoded.rows_invalid} rows have invalid values: {listed}"
        )
    return labels


def split_rows(
    labels: np.ndarray, seed: int, fractions: tuple[tuple[str, float], ...] = SPLITS
) -> dict[str, np.ndarray]:
    """Seeded stratified split of row indices into the named fractions (sorted within each)."""
    remaining = np.arange(len(labels))
    left = 1.0
    splits = {}
    for name, fraction in fractions[:-1]:
        try:
            taken, remaining = train_test_split(
                remaining, train_size=fraction / left, random_state=seed, stratify=labels[remaining]
            )
        except ValueError as exc:  # too few rows of a class to stratify
            raise TrainingDataError(
                f"cannot split {len(labels)} rows into {fractions}: {exc}"
            ) from exc
        splits[name] = np.sort(taken)
        left -= fraction
    splits[fractions[-1][0]] = np.sort(remaining)
    return splits


def fit(table: pa.Table, labels: np.ndarray, *, calibration: str, seed: int) -> FittedModel:
    """Fit the pipeline on the train split and the calibrator on the calibration split."""
    splits = split_rows(labels, seed)
    train_rows = table.take(splits["train"])
    inputs = session_inputs(
        {
            name: tuple(sorted(pc.unique(train_rows[name]).drop_null().to_pylist()))
            for name in INTEGER_CATEGORICALS
        }
    )
    pipeline = build_pipeline(inputs, seed).fit(train_rows, labels[splits["train"]])
    logits = pipeline.decision_function(table.take(splits["calibration"]))
    calibrator = fit_calibrator(calibration, logits, labels[splits["calibration"]])
    return FittedModel(inputs, pipeline, linear_params(pipeline, inputs), calibrator, splits)


def build_pipeline(inputs: tuple[InputSpec, ...], seed: int) -> Pipeline:
    """The scikit-learn model; it reads the named session columns of an Arrow table."""
    numeric = [s.name for s in inputs if s.kind == "numeric"]
    categorical = [s for s in inputs if s.kind == "categorical"]
    boolean = [s.name for s in inputs if s.kind == "boolean"]
    features = ColumnTransformer(
        [
            (
                "numeric",
                make_pipeline(FunctionTransformer(np.log1p, validate=True), StandardScaler()),
                numeric,
            ),
            (
                "categorical",
                OneHotEncoder(
                    categories=[list(s.vocabulary or ()) for s in categorical],
                    handle_unknown="ignore",
                ),
                [s.name for s in categorical],
            ),
            ("boolean", FunctionTransformer(_as_float, validate=True), boolean),
        ]
    )
    model = LogisticRegression(class_weight=CLASS_WEIGHT, max_iter=MAX_ITER, random_state=seed)
    return Pipeline([("features", features), ("model", model)])


def linear_params(pipeline: Pipeline, inputs: tuple[InputSpec, ...]) -> LinearParams:
    """The fitted pipeline in the graph's terms; the column layout follows `build_pipeline`."""
    features, model = pipeline.named_steps["features"], pipeline.named_steps["model"]
    scaler = features.named_transformers_["numeric"][-1]
    coef = model.coef_[0]
    n_numeric = sum(s.kind == "numeric" for s in inputs)
    sizes = [len(s.vocabulary or ()) for s in inputs if s.kind == "categorical"]
    bounds = np.cumsum([n_numeric, *sizes])
    categorical = tuple(
        np.append(coef[start:stop], 0.0) for start, stop in itertools.pairwise(bounds)
    )
    return LinearParams(
        numeric_mean=scaler.mean_,
        numeric_scale=scaler.scale_,
        numeric_coef=coef[:n_numeric],
        boolean_coef=coef[bounds[-1] :],
        categorical_coef=categorical,
        intercept=float(model.intercept_[0]),
    )


def train(
    data: str | Path | pa.Table | None,
    out_dir: str | Path,
    *,
    calibration: str = DEFAULT_CALIBRATION,
    seed: int = DEFAULT_SEED,
    name: str = BUNDLED_MODEL,
    version: str = DEFAULT_VERSION,
) -> ModelCard:
    """Train a model on labelled sessions (None = the bundled ones) and write it to `out_dir`."""
    table, source = read_labelled(data)
    labels = labels_of(table, session_inputs({}), LABEL_COLUMN, source)
    table = decode_dictionaries(table)
    fitted = fit(table, labels, calibration=calibration, seed=seed)
    splits = fitted.splits
    created = now()
    card = ModelCard(
        name=name,
        version=version,
        sha256="",
        created=created,
        inputs=fitted.inputs,
        outputs=OUTPUTS,
        key_column=KEY_COLUMN,
        label_column=LABEL_COLUMN,
        calibration=calibration_of(
            fitted.calibrator,
            labels[splits["calibration"]],
            f"calibration split of {source} (seed {seed})",
        ),
        training=Training(
            data=source,
            rows=len(labels),
            positives=int(labels.sum()),
            seed=seed,
            splits={split: len(rows) for split, rows in splits.items()},
            class_weight=CLASS_WEIGHT,
            estimator=ESTIMATOR,
        ),
        holdout=Holdout(f"test split of {source} (seed {seed})", 0, 0, {}, {}),
        linear=fitted.linear.to_json(),
        history=(
            HistoryEntry(version, created, f"trained on {source}, calibration {calibration}"),
        ),
    )
    test = splits["test"]
    graph = build_graph(fitted.linear, fitted.calibrator, name=name, version=version)
    return write_model(
        out_dir,
        card,
        graph.SerializeToString(),
        table.take(test),
        labels[test],
        ReferenceRows(table, labels, source),
    )


def recalibrate(
    data: str | Path | pa.Table | None,
    model_dir: str | Path | None,
    out_dir: str | Path,
    *,
    method: str | None = None,
    seed: int = DEFAULT_SEED,
    since: dt.date | None = None,
    until: dt.date | None = None,
    labels_from: str | Path | None = None,
) -> ModelCard:
    """Refit only the calibrator of `model_dir` (None = the bundled model) on newer labelled
    sessions; write to `out_dir`. With `labels_from` (Parquet of key and label, as `scorer
    evaluate` reads them) the sessions of `data` take their labels from there instead.

    Half of the new sessions (stratified, seeded) fit the calibrator, the other half give the
    card's holdout metrics. `method` defaults to the model's current one.
    """
    old_model = load_model(model_dir)
    old = old_model.card
    method = method or old.calibration.method
    table, source = read_labelled(data, since=since, until=until)
    if labels_from is not None:
        table, source = join_late_labels(
            table, source, labels_from, old.key_column, old.label_column
        )
    labels = labels_of(table, old.inputs, old.label_column, source)
    splits = split_rows(labels, seed, (("calibration", 0.5), ("test", 0.5)))
    calibration_rows = splits["calibration"]
    if old.imported is None:
        linear = LinearParams.from_json(old.linear)
        # The calibrator sees the logit the frozen linear model gives, in float64 as
        # scikit-learn's decision_function would: the same parameters, the same encoding as
        # scoring.
        logits = linear.logit(**encode(old, table.take(calibration_rows)).feed)
    else:
        # An imported graph's logit is its own output: the one its calibration stage reads.
        logits = imported_logits(old_model, table.take(calibration_rows))
    calibrator = fit_calibrator(method, logits, labels[calibration_rows])
    version = _next_calibration_version(old.version)
    created = now()
    card = dataclasses.replace(
        old,
        version=version,
        created=created,
        calibration=calibration_of(
            calibrator, labels[calibration_rows], f"calibration half of {source} (seed {seed})"
        ),
        holdout=Holdout(f"test half of {source} (seed {seed})", 0, 0, {}, {}),
        history=old.history
        + (
            HistoryEntry(
                version,
                created,
                f"recalibrated from {old.version}: "
                f"calibration {old.calibration.method} -> {method}, "
                f"refitted on {len(calibration_rows)} rows of {source}; linear model unchanged",
            ),
        ),
    )
    test = splits["test"]
    # The inputs' reference stays the training data's, which the linear model learned from; only
    # the calibrated scores and the base rate are those of the new sessions.
    rows = ReferenceRows(decode_dictionaries(table), labels, source, old.reference)
    if old.imported is None:
        graph = build_graph(linear, calibrator, name=card.name, version=card.version)
    else:
        graph = recalibrated(
            onnx.load_from_string(verify_checksum(old_model.model_dir, old)), calibrator
        )
    return write_model(
        out_dir, card, graph.SerializeToString(), table.take(test), labels[test], rows
    )


def imported_logits(model: IntentModel, rows: pa.Table) -> np.ndarray:
    """The logit z an imported graph's calibration stage reads (float32, as the graph has it),
    in float64 as the calibrators are fitted on it."""
    feed = model.graph_feed(rows)
    (logits,) = model.session.run([LOGIT_OUTPUT], feed)
    return np.asarray(logits, np.float64)


def add_reference(data: str | Path | pa.Table | None, model_dir: str | Path) -> ModelCard:
    """Write the reference of a model directory whose card predates references, from the data
    it was trained on (None = the bundled sessions), as `train` would have; model.onnx is not
    touched, so its scores and checksum stay the same. How models/intent-v1 got its reference:
    ``add_reference("scorer/data/sessions.parquet", "models/intent-v1")``."""
    model = load_model(model_dir)
    card = model.card
    table, source = read_labelled(data)
    labels = labels_of(table, card.inputs, card.label_column, source)
    reference = _reference(model, ReferenceRows(decode_dictionaries(table), labels, source))
    change = f"reference of the training distribution added, from {source}; graph unchanged"
    card = dataclasses.replace(
        card,
        reference=reference,
        history=card.history + (HistoryEntry(card.version, now(), change),),
    )
    save_card(card, model_dir)
    return card


def write_model(
    out_dir: str | Path,
    card: ModelCard,
    graph: bytes,
    test_rows: pa.Table,
    test_labels: np.ndarray,
    reference_rows: ReferenceRows,
) -> ModelCard:
    """Measure the graph on the holdout rows, build the reference, write model.onnx then
    model.json; nothing is written before all of that succeeded."""
    card = dataclasses.replace(card, sha256=hashlib.sha256(graph).hexdigest())
    session = onnxruntime.InferenceSession(
        graph, sess_options=session_options(), providers=["CPUExecutionProvider"]
    )
    model = IntentModel(Path(out_dir), card, session)
    scores = model.score(test_rows)
    raw = summary(test_labels, scores[RAW_OUTPUT].to_numpy())
    calibrated = summary(test_labels, scores[CALIBRATED_OUTPUT].to_numpy())
    card = dataclasses.replace(
        card,
        holdout=dataclasses.replace(
            card.holdout,
            rows=int(raw["rows"]),
            positives=int(raw["positives"]),
            raw={k: raw[k] for k in HOLDOUT_FIGURES},
            calibrated={k: calibrated[k] for k in HOLDOUT_FIGURES},
        ),
        reference=_reference(model, reference_rows),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Graph first: a crash between the two writes leaves a card whose checksum refuses the new
    # graph, never a new card vouching for an old graph.
    write_atomic(out / GRAPH_FILE, graph)
    save_card(card, out)
    return card


def _reference(model: IntentModel, rows: ReferenceRows) -> Reference:
    """The reference of `rows` through `model`: the feed it is given and the scores it gives."""
    inputs = model.card.inputs
    feed = encode_inputs(inputs, rows.table).feed
    calibrated = to_numpy(model.score_batch(rows.table).calibrated)
    if rows.inputs_from is not None:
        return with_scores(rows.inputs_from, inputs, feed, calibrated, rows.labels, data=rows.data)
    names = {spec.name for spec in inputs}
    return build_reference(
        inputs,
        feed,
        calibrated,
        rows.labels,
        data=rows.data,
        season=SEASON if SEASON in names else None,
        calendar=[name for name in CALENDAR if name in names],
    )


def calibration_of(calibrator: CalibratorParams, labels: np.ndarray, fitted_on: str) -> Calibration:
    return Calibration(
        method=calibrator.method,
        fitted_rows=len(labels),
        fitted_positives=int(labels.sum()),
        knots=calibrator.knots,
        fitted_on=fitted_on,
        params=calibrator.to_json(),
    )


def _next_calibration_version(version: str) -> str:
    """1.0.0 -> 1.0.0+cal.1 -> 1.0.0+cal.2: the model is the same, its calibration is not."""
    match = re.fullmatch(r"(.*)\+cal\.(\d+)", version)
    if match:
        return f"{match[1]}+cal.{int(match[2]) + 1}"
    return f"{version}+cal.1"


def decode_dictionaries(table: pa.Table) -> pa.Table:
    # scikit-learn reads Arrow columns, but not dictionary-encoded ones.
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table


def _as_float(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
