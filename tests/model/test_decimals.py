"""Decimals as warehouse unloads write them (``NUMBER(38,0)`` counts, ``NUMERIC(18,4)``
durations) score as their int and float twins do; a value that does not fit gets a status, and
a decimal wider than 38 digits is refused before anything is written, naming file and column."""

from __future__ import annotations

import decimal
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from click.testing import CliRunner

from scorer.cli import cli
from scorer.model.sessions import load_bundled_sessions

COUNTS = ("admin_pages", "info_pages", "product_pages")
DURATIONS = ("admin_seconds", "info_seconds", "product_seconds", "page_value")


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _score(*args: str) -> dict:
    code, out, err = _cli("score", *args, "--json")
    assert out, err
    summary = json.loads(out)
    assert code == summary["exit_code"] == 0, err
    return summary


def _twin(path: Path, rows: int = 5_000) -> pa.Table:
    """Bundled sessions with durations at 4 decimals: what a NUMERIC(18,4) column can hold."""
    table = load_bundled_sessions().slice(0, rows)
    for name in DURATIONS:
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pc.round(table[name], 4))
    pq.write_table(table, path)
    return table


def _scores(out: Path) -> pa.Table:
    scores = duckdb.sql(
        f"SELECT session_id, intent_raw, intent_calibrated, status "
        f"FROM read_parquet('{out}/scores/**/*.parquet') ORDER BY session_id"
    )
    return scores.to_arrow_table()


def test_a_warehouse_unload_of_decimals_scores_as_its_float_and_int_twin(tmp_path):
    twin = tmp_path / "twin.parquet"
    _twin(twin)
    unload = tmp_path / "unload.parquet"
    casts = [f"CAST({c} AS DECIMAL(38, 0)) AS {c}" for c in COUNTS]
    casts += [f"CAST({c} AS DECIMAL(18, 4)) AS {c}" for c in DURATIONS]
    duckdb.sql(
        f"COPY (SELECT * REPLACE ({', '.join(casts)}) FROM '{twin}') TO '{unload}' (FORMAT parquet)"
    )
    schema = pq.read_schema(unload)
    assert schema.field("admin_pages").type == pa.decimal128(38, 0)
    assert schema.field("admin_seconds").type == pa.decimal128(18, 4)

    _score(str(twin), str(tmp_path / "from-twin"))
    _score(str(unload), str(tmp_path / "from-unload"))
    assert _scores(tmp_path / "from-unload").equals(_scores(tmp_path / "from-twin"))


def test_a_count_beyond_int64_is_out_of_range_alone(tmp_path):
    table = load_bundled_sessions().slice(0, 100)
    values = [decimal.Decimal(v) for v in table["admin_pages"].to_pylist()]
    values[7] = decimal.Decimal(10**30)
    values[8] = None
    index = table.schema.get_field_index("admin_pages")
    table = table.set_column(index, "admin_pages", pa.array(values, pa.decimal128(38, 0)))
    path = tmp_path / "wide.parquet"
    pq.write_table(table, path)
    _score(str(path), str(tmp_path / "out"))
    statuses = _scores(tmp_path / "out")["status"].to_pylist()
    order = table["session_id"].to_pylist()
    by_key = dict(zip(sorted(order), statuses, strict=True))
    assert by_key[order[7]] == "out_of_range:admin_pages"
    assert by_key[order[8]] == "missing:admin_pages"
    assert sum(s == "ok" for s in statuses) == 98


def test_a_decimal_wider_than_38_digits_exits_2_naming_file_and_column(tmp_path):
    table = load_bundled_sessions().slice(0, 100)
    index = table.schema.get_field_index("admin_pages")
    wide = table["admin_pages"].cast(pa.decimal256(40, 0))
    path = tmp_path / "in" / "bignumeric.parquet"
    path.parent.mkdir()
    pq.write_table(table.set_column(index, "admin_pages", wide), path)
    code, _, err = _cli("score", str(path.parent), str(tmp_path / "out"))
    assert code == 2, err
    assert str(path) in err and "'admin_pages'" in err and "decimal256(40, 0)" in err
    assert not (tmp_path / "out" / "scores").exists()
