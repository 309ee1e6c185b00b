"""Preflight checks: functions that refuse a job whose output would be wrong as a whole, before
anything is written. Over the scanned footers: a model column missing or mistyped in every file
(``check_model_columns``), key and kept columns of types readers cannot union
(``check_column_types_agree``); over the locations and the records: an OUTPUT inside INPUT
(``check_output_outside``), a table format over a day column's scores a plain Parquet run
committed (``check_day_folders``).

The score files carry the key column (and every `--keep` column) in the type each input file
has it. Readers of a scores folder take those files as one table, so the types must union. What
unions was measured with pyarrow 26 and DuckDB (tests/pipeline/test_preflight.py keeps the facts):

- string, large_string, string_view and dictionaries of strings: read as one string column by
  `pyarrow.dataset`, `pq.read_table` and DuckDB's `read_parquet`, in any file order. Allowed.
- int32 in one file and int64 in another: `pyarrow.dataset`, `pq.read_table` and DuckDB's
  default `read_parquet` take the *first* file's type and fail on the first value of the wider
  file outside its range (only DuckDB's `union_by_name = true` widens). Whether a folder reads
  then depends on file order and values. Refused.
- int64 in one file and string in another: a string value that is not a number fails every
  reader. Refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from scorer.config import OutputFormat
from scorer.errors import ColumnTypeConflictError, MissingColumnError, OutputConflictError
from scorer.model.card import InputSpec, ModelCard
from scorer.partitions import DATE_KEY
from scorer.pipeline.manifest import CommitRecord
from scorer.pipeline.plan import InputFile
from scorer.storage import Location

__all__ = [
    "MAX_DECIMAL_DIGITS",
    "check_column_types_agree",
    "check_day_folders",
    "check_model_columns",
    "check_output_outside",
    "first_file_per_schema",
]

MAX_DECIMAL_DIGITS = 38
"""The widest decimal a numeric model column takes (decimal128): wider ones (decimal256, such as
BigQuery's BIGNUMERIC) hold values no float32 feed can say."""


def check_output_outside(output: Location, input: Location) -> None:
    """Refuse an OUTPUT inside INPUT: its score files would be read as input by the next run."""
    if type(input.filesystem) is type(output.filesystem) and _inside(output, input):
        raise OutputConflictError(
            f"OUTPUT {output.uri} is inside INPUT {input.uri}: its score files would be read as "
            "input by the next run"
        )


def check_model_columns(
    input_uri: str, readable: Sequence[InputFile], card: ModelCard, key: str, keep: Sequence[str]
) -> None:
    """A model column missing (or mistyped) in *every* readable file makes the whole job wrong;
    one bad file only fails its own shards. So do the key and kept columns in types readers
    cannot union (``check_column_types_agree``)."""
    if not readable:
        return  # every footer unreadable: each file fails as its own shard, exit 1
    # Each distinct schema once: the loop cost 0.5 s over 4,000 small files' schemas.
    distinct = first_file_per_schema(readable)
    schemas = [f.schema for f in distinct]
    wanted: list[tuple[str, InputSpec | None]] = [(spec.name, spec) for spec in card.inputs]
    wanted += [(key, None)] + [(name, None) for name in keep]
    for name, spec in wanted:
        types = [schema.field(name).type for schema in schemas if name in schema.names]
        if not types:
            raise MissingColumnError(
                f"{input_uri}: column '{name}' is in none of the {len(readable)} input "
                f"file(s) (the model {card.name} {card.version} needs it)"
                if spec is not None
                else f"{input_uri}: column '{name}' (key or kept) is in none of the input files"
            )
        if spec is not None and not any(_usable(spec, t) for t in types):
            raise MissingColumnError(
                f"{input_uri}: column '{name}' has type {types[0]} in every file; the "
                f"model needs a {spec.kind} column of {spec.dtype}"
            )
    _check_decimals(distinct, card.inputs)
    # Copied into every score file: of two types across files, readers could not union them.
    # The first file of each schema stands for its others there too (`check_column_types_agree`).
    check_column_types_agree(distinct, [key, *keep])


def check_day_folders(
    output: Location,
    records: Iterable[CommitRecord],
    day_column_files: Iterable[str],
    output_format: OutputFormat,
) -> None:
    """A table's day partitions cannot hold scores a plain Parquet run committed of a day
    column's file (the day a column of them, not their folder): refused before any scoring."""
    files = set(day_column_files)
    for record in records:
        if any(p.input_relpath in files for p in record.pieces) and not any(
            folder.startswith(f"{DATE_KEY}=") for folder in record.output_relpath.split("/")[:-1]
        ):
            raise OutputConflictError(
                f"{output.child(record.output_relpath).uri}: scores of the day column "
                f"of {record.pieces[0].input_relpath} committed by a plain Parquet run; "
                f"--format {output_format} partitions them by day: --overwrite rescores"
            )


def check_column_types_agree(files: Sequence[InputFile], columns: Sequence[str]) -> None:
    """Refuse a job whose score files would hold one of `columns` (the key, the kept columns)
    in types readers cannot union; the error names two such files and their types.

    Files without a column are not compared for it: they fail as their own shards.
    """
    # The first file of each schema stands for the others: a file whose type differs from the
    # first file's is the first of its schema to (its schema's earlier files would have it too).
    distinct = first_file_per_schema(files)
    for column in dict.fromkeys(columns):
        first: tuple[InputFile, pa.DataType] | None = None
        for file in distinct:
            if column not in file.schema.names:
                continue
            arrow_type = file.schema.field(column).type
            if first is None:
                first = (file, arrow_type)
            elif _as_read(arrow_type) != _as_read(first[1]):
                other, other_type = first
                raise ColumnTypeConflictError(
                    f"column '{column}' is {other_type} in {other.path} but {arrow_type} in "
                    f"{file.path}: their score files could not be read as one table; rewrite "
                    "the input so that every file has the same type for it"
                )


def first_file_per_schema(files: Sequence[InputFile]) -> list[InputFile]:
    """The first of `files` with each schema *object*, in order. The scan gives the files of
    one schema one object (`plan._SchemaCache`), so this is a file per schema for a few
    microseconds each, where hashing 4,000 schemas cost 0.1 s."""
    first: dict[int, InputFile] = {}
    for file in files:
        first.setdefault(id(file.schema), file)
    return list(first.values())


def _as_read(arrow_type: pa.DataType) -> pa.DataType:
    """The type a union of score files reads the column as: string encodings are one."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return pa.string()
    return arrow_type


def _check_decimals(files: Sequence[InputFile], inputs: Sequence[InputSpec]) -> None:
    for f in files:
        for spec in inputs:
            if spec.kind != "numeric" or spec.name not in f.schema.names:
                continue
            kind = f.schema.field(spec.name).type
            if pa.types.is_decimal(kind) and kind.precision > MAX_DECIMAL_DIGITS:
                raise MissingColumnError(
                    f"{f.path}: column '{spec.name}' has type {kind}, wider than the "
                    f"{MAX_DECIMAL_DIGITS} digits a numeric model column takes; cast it to "
                    "decimal(38, s) or a float in the export"
                )


def _usable(spec: InputSpec, arrow_type: Any) -> bool:  # a pyarrow.DataType
    t = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if spec.kind == "numeric":  # decimals convert exactly where they can (`encode`)
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if spec.kind == "boolean":
        return pa.types.is_boolean(t)
    if spec.dtype == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    return pa.types.is_integer(t)


def _inside(location: Location, parent: Location) -> bool:
    """Whether ``location`` is ``parent`` or below it; locally with symlinks resolved (an OUTPUT
    reached through a link into INPUT is inside it)."""
    path, root = location.path, parent.path
    if location.is_local:
        path, root = os.path.realpath(path), os.path.realpath(root)
    path, root = path.rstrip("/"), root.rstrip("/")
    return path == root or path.startswith(root + "/")
