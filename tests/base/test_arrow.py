"""The pandas-free Arrow helpers build exactly what pyarrow's own (pandas-importing) calls do."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pyarrow as pa
import pytest

from scorer.arrow import table_from_rows
from scorer.metrics import calibration_schema
from scorer.pipeline.stats import RUN_STATS_SCHEMA, SHARD_STATS_SCHEMA

NOW = dt.datetime(2026, 12, 1, 12, 30, 1, 123456, tzinfo=dt.UTC)


def _rows(schema: pa.Schema) -> list[dict]:
    """Three rows per schema: every column set, every column null, and a mix."""

    def value(kind: pa.DataType, i: int) -> object:
        if pa.types.is_list(kind):
            return [value(kind.value_type, i + k) for k in range(i + 1)]
        if pa.types.is_struct(kind):
            fields = [kind.field(k) for k in range(kind.num_fields)]
            return {f.name: value(f.type, i + k) for k, f in enumerate(fields)}
        if pa.types.is_dictionary(kind) or pa.types.is_string(kind):
            return f"v{i}-é"
        if pa.types.is_timestamp(kind):
            return NOW + dt.timedelta(seconds=i)
        if pa.types.is_boolean(kind):
            return i % 2 == 0
        if pa.types.is_floating(kind):
            return i + 0.25
        return i * 7

    full = {f.name: value(f.type, 1) for f in schema}
    mixed = {f.name: value(f.type, 2) for k, f in enumerate(schema) if k % 2}
    return [full, {}, mixed]


@pytest.mark.parametrize(
    "schema",
    [SHARD_STATS_SCHEMA, RUN_STATS_SCHEMA, calibration_schema(), pa.schema([("b", pa.bool_())])],
)
def test_table_from_rows_equals_from_pylist(schema):
    rows = _rows(schema)
    expected = pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema)
    assert table_from_rows(rows, schema).equals(expected)
    assert table_from_rows([], schema).equals(schema.empty_table())


def test_table_from_rows_refuses_an_unsupported_type_naming_the_column():
    with pytest.raises(TypeError, match="column 'm' of type"):
        table_from_rows([{"m": {"a": 1}}], pa.schema([("m", pa.map_(pa.string(), pa.int64()))]))


def test_building_stats_tables_does_not_import_pandas():
    code = (
        "import sys; from scorer.arrow import table_from_rows; "
        "from scorer.pipeline.stats import SHARD_STATS_SCHEMA; "
        "table_from_rows([{'run_id': 'r', 'rows': 1}], SHARD_STATS_SCHEMA); "
        "print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
