"""Preflight checks over the scanned footers: pure functions that refuse a job whose output
would be wrong as a whole, before anything is written.

The score files carry the key column (and every `--keep` column) in the type each input file
has it. Readers of a scores folder take those files as one table, so the types must union. What
unions was measured with pyarrow 26 and DuckDB (tests/test_preflight.py keeps the facts):

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

from collections.abc import Sequence

import pyarrow as pa

from scorer.errors import ColumnTypeConflictError
from scorer.pipeline.plan import InputFile

__all__ = ["check_column_types_agree", "first_file_per_schema"]


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
