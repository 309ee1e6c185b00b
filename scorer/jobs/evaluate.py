"""`scorer evaluate`: late labels joined to the committed scores, calibration per day, no rescoring.

Labels arrive days after the sessions were scored. LABELS is Parquet (a file, or every
``*.parquet`` below a folder, hive ``dt=`` folders or not) with the key and the label; the
scores are the files the commit records of OUTPUT name (``_scorer/commits``, as a resuming run
reads them), never a temporary file. Each score row's day is the ``dt`` folder of its score
file, or, outside one, its ``dt`` column (a run whose days were a column writes it); a label's own folders are not used for the join (a label filed under the day it arrived
still finds its session).

One DuckDB query streams the join: a FULL OUTER JOIN of the scores' key, intent_raw and
intent_calibrated (each score file tagged with the index of its day) with the labels' key and
label. DuckDB builds one hash table, of the smaller side, and spills it to a temporary folder
beyond its memory limit; the score side streams, so memory does not grow with the scores.
Arrow batches of the result are split by day and fed to `CalibrationState.from_arrays`, the
same state a labelled `scorer score` run builds per batch, and the table is
`metrics.calibration_table`: the figures are those a labelled run computes.

Duplicate keys in LABELS would count a session twice, so they are an error, found without a
pass of their own: a duplicated key that matches a score makes the join return more scored rows
than OUTPUT holds, and one that matches nothing shows among the unmatched label keys, which are
checked for repeats. (A label with a null key matches nothing: it counts as unscored.) Either way a second query names the keys and their files, and nothing is
written.

The result is written to ``OUTPUT/calibration/run_id=<EVAL_RUN_ID>/part-0.parquet`` in the
calibration schema plus one column at the end, ``scored_run_ids`` (list of the score runs whose
committed files were evaluated; the overall row lists all), null in a score run's own
calibration files; the file's key-value metadata names the labels
(``scorer.evaluate.labels``). ``read_parquet('OUTPUT/calibration/*/*.parquet',
hive_partitioning=true, union_by_name=true)`` reads both kinds together. The evaluation's run id
has a score run's format; it writes no run-stats row (it scored nothing).

Each day's ECE of intent_calibrated is then checked against the `[monitor]` thresholds, as a
labelled `scorer score` run's is (`alerts.calibration_alerts`): the `Evaluation` carries the
alerts and the exit code they make, so a notebook calling `evaluate` gets what the command
prints.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from scorer.arrow import to_numpy
from scorer.config import MonitorConfig
from scorer.errors import EXIT_OK, EvaluateError, ScorerError, exit_code
from scorer.metrics import CalibrationState, calibration_table
from scorer.model.sessions import KEY_COLUMN, LABEL_COLUMN
from scorer.partitions import DATE_KEY, HIVE_NULL, partition_of
from scorer.pipeline.alerts import (
    Alert,
    RecalibrateHint,
    calibration_alerts,
    read_run_table,
    recalibrated_dir,
)
from scorer.pipeline.context import new_run_id
from scorer.pipeline.layout import (
    CALIBRATION,
    OUTPUT_STATE,
    RUN_STATS,
    read_json,
    run_table_relpath,
)
from scorer.pipeline.manifest import CommitRecord, Manifest
from scorer.pipeline.plan import FailedInput, InputFile
from scorer.pipeline.scan import scan_inputs
from scorer.pipeline.stats import write_table
from scorer.storage import Location, StorageOptions, foreign_errors, resolve

__all__ = ["Evaluation", "evaluate"]

SCORED_RUN_IDS = "scored_run_ids"
_SCORE_COLUMNS = ("intent_raw", "intent_calibrated")
_BATCH_ROWS = 1 << 20
_NAMED_DUPLICATES = 5  # keys a duplicate-key error names


@dataclass
class Evaluation:
    """What `evaluate` did; ``calibration`` is the table it wrote, ``alerts`` its days' breaches
    of the thresholds, and `exit_code` follows docs/backfills.md."""

    run_id: str
    output: str
    labels: str
    calibration_path: str
    scored_run_ids: list[str]
    rows_scored: int  # committed score rows
    rows_labelled: int  # of them, with a label
    scores_unlabelled: int  # committed score rows without a label (or with a null one)
    label_rows: int  # rows of LABELS
    labels_unscored: int  # of them, with a key no committed score has
    days: list[str | None]  # days with at least one labelled row: the table's partition rows
    days_without_labels: list[str | None]
    seconds: float
    rows_per_second: float
    recalibrate_hint: RecalibrateHint = field(repr=False)
    calibration: pa.Table = field(repr=False)
    alerts: list[Alert] = field(default_factory=list)
    fail_on_alert: bool = field(default=False, repr=False)  # [monitor]: alerts exit EXIT_ALERT

    @property
    def exit_code(self) -> int:
        return exit_code(EXIT_OK, self.alerts, self.fail_on_alert)

    def to_dict(self) -> dict[str, Any]:
        skip = {"recalibrate_hint", "calibration", "alerts", "fail_on_alert"}
        summary = {k: v for k, v in self.__dict__.items() if k not in skip}
        alerts = [alert.to_dict() for alert in self.alerts]
        return summary | {"alerts": alerts, "exit_code": self.exit_code}


def evaluate(
    output: str,
    labels: str,
    *,
    key_column: str | None = None,
    label_column: str | None = None,
    storage: StorageOptions | None = None,
    monitor: MonitorConfig | None = None,
) -> Evaluation:
    """Join LABELS to OUTPUT's committed scores and write the calibration per day and overall,
    then check each day's calibration against ``monitor`` (default: the documented thresholds).

    Raises `EvaluateError` (nothing written) when OUTPUT has no committed scores, a key or
    label column is missing or of an unusable type, or LABELS repeats a key.
    """
    started = time.perf_counter()
    key = key_column or KEY_COLUMN
    label = label_column or LABEL_COLUMN
    out = resolve(output, storage)
    source = resolve(labels, storage)
    scores = _committed_scores(out)
    score_schema = _score_schema(out, scores, key)
    column_days = _column_days(out, scores)
    days = sorted({day for day, _ in scores} | set(column_days or ()), key=_day_order)
    label_files = _label_files(source, key, label)
    label_schema = _label_schema(source, label_files, key, label, score_schema.field(key).type)
    rows_scored = sum(record.rows for _, record in scores)

    with tempfile.TemporaryDirectory(prefix="scorer-evaluate-") as spill:
        con = duckdb.connect(config={"temp_directory": spill})
        try:
            # Row order is irrelevant to the states; keeping it would serialize the join's output.
            con.execute("SET preserve_insertion_order = false")
            con.execute("SET enable_progress_bar = false")
            with foreign_errors(source.uri, "cannot read"):
                labels_data = ds.dataset(
                    [f.path for f in label_files],
                    schema=label_schema,
                    format="parquet",
                    filesystem=source.filesystem,
                )
            joined = _Joined(days, f"{source.uri}: label column '{label}'")
            with (
                foreign_errors(
                    out.uri, "cannot read the scores or LABELS", foreign=(duckdb.IOException,)
                ),
                _join(
                    con, out, scores, days, score_schema, labels_data, key, label, column_days
                ) as join,
            ):
                for batch in join:
                    joined.add(batch)
            duplicates = joined.scored_rows > rows_scored or _repeats(con, joined.unscored_keys())
            if duplicates:
                raise EvaluateError(_duplicates_message(con, source, labels_data, key))
        finally:
            con.close()

    run_id = new_run_id()
    by_day = {day: joined.states[i] for i, day in enumerate(days) if joined.labelled[i]}
    runs_by_day: dict[str | None, set[str]] = {}
    for day, record in scores:
        for each in column_days if day is None and column_days is not None else [day]:
            runs_by_day.setdefault(each, set()).add(record.run_id)
    table = _with_scored_runs(calibration_table(run_id, by_day, DATE_KEY), runs_by_day, source.uri)
    target = out.child(run_table_relpath(CALIBRATION, run_id))
    with foreign_errors(target.uri, "cannot write"):
        write_table(out.filesystem, target.path, table)
    seconds = time.perf_counter() - started
    monitor = monitor or MonitorConfig()
    hint = _recalibrate_hint(out, scores, source)
    return Evaluation(
        run_id=run_id,
        output=out.uri,
        labels=source.uri,
        calibration_path=target.uri,
        scored_run_ids=sorted(set().union(*runs_by_day.values())),
        rows_scored=rows_scored,
        rows_labelled=rows_scored - joined.unlabelled,
        scores_unlabelled=joined.unlabelled,
        label_rows=sum(f.rows for f in label_files),
        labels_unscored=joined.unscored,
        days=list(by_day),
        days_without_labels=[day for day in days if day not in by_day],
        seconds=seconds,
        rows_per_second=rows_scored / seconds if seconds else 0.0,
        recalibrate_hint=hint,
        calibration=table,
        alerts=calibration_alerts(table, monitor, hint),
        fail_on_alert=monitor.fail_on_alert,
    )


# -- what is there -------------------------------------------------------------------------


def _committed_scores(out: Location) -> list[tuple[str | None, CommitRecord]]:
    """Each committed score file's record, with the ``dt`` of its folder (None outside one)."""
    records = Manifest.load(out).records.values()
    if not records:
        raise EvaluateError(
            f"{out.uri}: no committed scores (no commit record under _scorer/commits); "
            "score it with scorer score first"
        )
    return sorted(
        ((_day_of(r.output_relpath), r) for r in records), key=lambda p: p[1].output_relpath
    )


def _column_days(
    out: Location, scores: Sequence[tuple[str | None, CommitRecord]]
) -> list[str | None] | None:
    """The days in the ``dt`` column of score files outside ``dt=`` folders, which a run whose
    days were a column writes (docs/nights-in-a-column.md); None where they have none."""
    paths = [out.child(r.output_relpath).path for day, r in scores if day is None]
    if not paths:
        return None
    with foreign_errors(out.uri, "cannot read a committed score file"):
        schema = pq.read_schema(paths[0], filesystem=out.filesystem)
        if DATE_KEY not in schema.names:
            return None
        data = ds.dataset(paths, format="parquet", filesystem=out.filesystem)
        found = pc.unique(data.to_table(columns=[DATE_KEY])[DATE_KEY].combine_chunks())
    return [None if d is None else d.isoformat() for d in found.to_pylist()]


def _day_of(relpath: str) -> str | None:
    day = next((value for key, value in partition_of(relpath) if key == DATE_KEY), None)
    return None if day == HIVE_NULL else day


def _day_order(day: str | None) -> tuple[bool, str]:
    return (day is None, day or "")


def _score_schema(
    out: Location, scores: Sequence[tuple[str | None, CommitRecord]], key: str
) -> pa.Schema:
    """The key and scores of the score files (all of one OUTPUT share its options)."""
    first = out.child(scores[0][1].output_relpath)
    with foreign_errors(first.uri, "cannot read"):
        schema = pq.read_schema(first.path, filesystem=out.filesystem)
    if key not in schema.names:
        raise EvaluateError(
            f"{first.uri}: the scores have no key column '{key}' (columns: "
            f"{', '.join(schema.names)}); pass the key they were scored with as --key-column"
        )
    return pa.schema([schema.field(name) for name in (key, *_SCORE_COLUMNS)])


def _label_files(source: Location, key: str, label: str) -> list[InputFile]:
    files = []
    for item in scan_inputs(source):
        if isinstance(item, FailedInput):
            raise EvaluateError(f"{item.path}: {item.reason}")
        for column in (key, label):
            if column not in item.schema.names:
                raise EvaluateError(
                    f"{item.path}: LABELS file has no column '{column}' (columns: "
                    f"{', '.join(item.schema.names)}); name it with --"
                    f"{'key' if column == key else 'label'}-column"
                )
        files.append(item)
    return files


def _label_schema(
    source: Location, files: Sequence[InputFile], key: str, label: str, key_type: pa.DataType
) -> pa.Schema:
    """One schema for every labels file (int32 and int64 keys unify), checked against the
    scores' key and a label DuckDB and `CalibrationState` read as 0/1."""
    try:
        schema = pa.unify_schemas(
            [pa.schema([f.schema.field(key), f.schema.field(label)]) for f in files],
            promote_options="permissive",
        )
    except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
        raise EvaluateError(
            f"{source.uri}: LABELS files disagree on a column's type: {exc}"
        ) from None
    label_type = _plain(schema.field(label).type)
    if not (pa.types.is_boolean(label_type) or pa.types.is_integer(label_type)):
        raise EvaluateError(
            f"{source.uri}: label column '{label}' is {label_type}; it must be boolean or 0/1"
        )
    if _key_kind(schema.field(key).type) != _key_kind(key_type):
        raise EvaluateError(
            f"{source.uri}: key column '{key}' is {schema.field(key).type} in LABELS but "
            f"{key_type} in the scores"
        )
    return schema


def _plain(kind: pa.DataType) -> pa.DataType:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _key_kind(kind: pa.DataType) -> str:
    kind = _plain(kind)
    if pa.types.is_integer(kind):
        return "integer"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "string"
    return str(kind)


# -- the join --------------------------------------------------------------------------------


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _join(
    con: duckdb.DuckDBPyConnection,
    out: Location,
    scores: Sequence[tuple[str | None, CommitRecord]],
    days: Sequence[str | None],
    score_schema: pa.Schema,
    labels_data: ds.Dataset,
    key: str,
    label: str,
    column_days: Sequence[str | None] | None = None,
) -> pa.RecordBatchReader:
    """Batches of (part, intent_raw, intent_calibrated, label, unscored_key): ``part`` the index
    of the score row's day in ``days`` (null for a label no score has: its key in
    ``unscored_key``), ``label`` null for a score without one. ``column_days``: the score files
    outside ``dt=`` folders give each row's day in their ``dt`` column."""
    k, y = _quoted(key), _quoted(label)
    selects = []
    for part, day in enumerate(days):
        paths = [out.child(r.output_relpath).path for d, r in scores if d == day]
        if not paths:
            continue
        schema = score_schema
        tag = f"{part}::SMALLINT"
        if day is None and column_days is not None:
            schema = pa.schema([*score_schema, pa.field(DATE_KEY, pa.date32())])
            listed = ", ".join("NULL" if d is None else f"'{d}'" for d in days)
            tag = (
                f"COALESCE((list_position([{listed}], CAST({DATE_KEY} AS VARCHAR)) - 1)"
                f"::SMALLINT, {part}::SMALLINT)"
            )
        with foreign_errors(out.uri, "cannot read a committed score file"):
            data = ds.dataset(paths, schema=schema, format="parquet", filesystem=out.filesystem)
        con.register(f"scores_{part}", data)
        selects.append(
            f"SELECT {tag} AS part, {k} AS key, intent_raw, intent_calibrated FROM scores_{part}"
        )
    con.register("labels", labels_data)
    sql = f"""
        SELECT s.part, s.intent_raw, s.intent_calibrated, l.label,
               CASE WHEN s.part IS NULL THEN l.key END AS unscored_key
        FROM ({" UNION ALL ".join(selects)}) AS s
        FULL OUTER JOIN (SELECT {k} AS key, {y} AS label FROM labels) AS l ON s.key = l.key
    """
    return con.sql(sql).to_arrow_reader(_BATCH_ROWS)


class _Joined:
    """The join's batches summed up: calibration states per day, unmatched labels' keys."""

    def __init__(self, days: Sequence[str | None], label: str) -> None:
        self.label = label  # names the label column in errors
        self.states = [CalibrationState() for _ in days]
        self.labelled = np.zeros(len(days), dtype=np.int64)  # per day: score rows with a label
        self.scored_rows = 0  # more than OUTPUT holds: a label key repeats
        self.unlabelled = 0
        self.unscored = 0
        self._unscored_keys: list[pa.Array] = []

    def add(self, batch: pa.RecordBatch) -> None:
        part = batch.column(0)
        if part.null_count:
            unscored = batch.filter(part.is_null())
            self.unscored += unscored.num_rows
            self._unscored_keys.append(unscored.column(4))  # a null key is a label too
            batch = batch.filter(part.is_valid())
            part = batch.column(0)
        self.scored_rows += batch.num_rows
        self.unlabelled += batch.column(3).null_count
        parts = to_numpy(part)
        counts = np.bincount(parts, minlength=len(self.states))
        for index in np.flatnonzero(counts):
            rows = batch if counts[index] == batch.num_rows else batch.filter(parts == index)
            try:
                state = CalibrationState.from_arrays(rows.column(3), rows.column(1), rows.column(2))
            except ValueError as exc:
                raise EvaluateError(f"{self.label}: {exc}") from None
            self.states[index] = self.states[index].merge(state)
            self.labelled[index] += rows.num_rows - rows.column(3).null_count

    def unscored_keys(self) -> pa.Array:
        if not self._unscored_keys:
            return pa.array([], pa.int64())
        return pa.concat_arrays(self._unscored_keys)


def _repeats(con: duckdb.DuckDBPyConnection, keys: pa.Array) -> bool:
    """Whether a non-null key repeats among the labels no score matched."""
    keys = pc.drop_null(keys)
    if len(keys) < 2:
        return False
    con.register("unmatched", pa.table({"key": keys}))
    sql = "SELECT 1 FROM unmatched GROUP BY key HAVING count(*) > 1 LIMIT 1"
    return bool(con.execute(sql).fetchall())


def _duplicates_message(
    con: duckdb.DuckDBPyConnection, source: Location, labels_data: ds.Dataset, key: str
) -> str:
    """Which keys repeat in LABELS and in which files (the error path: one more pass)."""
    k = _quoted(key)
    rows = con.sql(
        f"SELECT {k} AS key, count(*) AS n FROM labels WHERE {k} IS NOT NULL "
        f"GROUP BY {k} HAVING count(*) > 1 ORDER BY {k}"
    ).fetchall()
    named = [row[0] for row in rows[:_NAMED_DUPLICATES]]
    located = labels_data.to_table(
        columns=[key, "__filename"], filter=pc.field(key).isin(named)
    ).to_pylist()
    where: dict[Any, list[str]] = {}
    for row in located:
        files = where.setdefault(row[key], [])
        if row["__filename"] not in files:
            files.append(row["__filename"])
    shown = "; ".join(
        f"{value!r} ({count} times: {', '.join(where.get(value, []))})"
        for value, count in rows[:_NAMED_DUPLICATES]
    )
    more = f"; {len(rows) - len(named):,} more repeated keys" if len(rows) > len(named) else ""
    return (
        f"{source.uri}: LABELS repeats key(s) of column '{key}': {shown}{more}; each session "
        "may have one label"
    )


# -- what is written -------------------------------------------------------------------------


def _with_scored_runs(
    table: pa.Table, runs_by_day: dict[str | None, set[str]], labels_uri: str
) -> pa.Table:
    every = sorted(set().union(*runs_by_day.values()))
    runs = [
        every if scope == "overall" else sorted(runs_by_day.get(day, ()))
        for scope, day in zip(
            table.column("scope").to_pylist(), table.column(DATE_KEY).to_pylist(), strict=True
        )
    ]
    table = table.append_column(SCORED_RUN_IDS, pa.array(runs, pa.list_(pa.string())))
    metadata = {
        "scorer.evaluate.labels": labels_uri,
        "scorer.evaluate.scored_run_ids": json.dumps(every),
    }
    return table.replace_schema_metadata(metadata)


def _recalibrate_hint(
    out: Location, scores: Sequence[tuple[str | None, CommitRecord]], source: Location
) -> RecalibrateHint:
    """`scorer calibrate` of the scored sessions with LABELS joined (`--labels`)."""
    record = scores[0][1]
    piece = record.pieces[0]
    # The relpath is the name its scores go by, which may not end the path (`scan.with_output_names`).
    if piece.input_path.endswith(piece.input_relpath):
        input_root = piece.input_path[: -len(piece.input_relpath)].rstrip("/") or piece.input_path
    else:
        input_root = piece.input_path.rpartition("/")[0] or piece.input_path
    # The run's own INPUT where its stats say it: a single file (a day column's year) is not
    # its folder, which holds other files.
    with contextlib.suppress(ScorerError):
        runs = read_run_table(out, RUN_STATS, record.run_id)
        if runs is not None and runs.num_rows and runs["input"][0].as_py():
            input_root = runs["input"][0].as_py()
    model = _model_dir(out)
    return RecalibrateHint(
        data=input_root, model=model, out=recalibrated_dir(model), labels=source.uri
    )


def _model_dir(out: Location) -> str:
    """The bundled model's directory if it made these scores, else a placeholder naming it."""
    from scorer.model.card import load_card
    from scorer.model.runtime import default_model_dir

    try:
        claim = read_json(out.filesystem, out.child(OUTPUT_STATE).path)
    except (OSError, ValueError):
        return "<model dir>"
    bundled = default_model_dir()
    if load_card(bundled).sha256 == claim.get("model_sha256"):
        return str(bundled)
    return f"<model dir of {claim.get('model_name', 'the scoring model')}>"
