"""Preflight over the scanned footers (`scorer.pipeline.preflight`), and the reader facts its
decisions rest on: which key types the score files may carry so that readers union them."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.inputs import make_history

from scorer.cli import cli
from scorer.errors import ColumnTypeConflictError, PreflightError
from scorer.pipeline.plan import InputFile
from scorer.pipeline.preflight import check_column_types_agree, first_file_per_schema
from scorer.pipeline.scan import scan_inputs
from scorer.storage import resolve


def _files(root, types: dict[str, pa.Array]) -> list[InputFile]:
    """One file per entry, named by it, holding `session_id` as the given array; scanned."""
    for name, keys in types.items():
        table = pa.table({"session_id": keys, "page_value": pa.array([1.0] * len(keys))})
        pq.write_table(table, root / f"{name}.parquet")
    scanned = scan_inputs(resolve(str(root)))
    assert all(isinstance(item, InputFile) for item in scanned)
    return sorted(scanned, key=lambda item: item.relpath)  # type: ignore[arg-type, return-value]


def test_a_key_of_int64_in_one_file_and_string_in_another_is_refused_naming_both(tmp_path):
    files = _files(
        tmp_path,
        {
            "a": pa.array([1, 2], pa.int64()),
            "b": pa.array([3, 4], pa.int64()),
            "c": pa.array(["s-5", "s-6"]),
        },
    )
    # a and b share one schema object (the scan's), so a stands for both
    assert first_file_per_schema(files) == [files[0], files[2]]
    with pytest.raises(ColumnTypeConflictError) as caught:
        check_column_types_agree(files, ["session_id"])
    message = str(caught.value)
    assert isinstance(caught.value, PreflightError) and caught.value.exit_code == 2
    assert message.startswith("column 'session_id' is int64 in ")
    assert (
        str(tmp_path / "a.parquet") in message and f"string in {tmp_path / 'c.parquet'}" in message
    )


def test_integer_widths_of_the_key_are_refused(tmp_path):
    files = _files(tmp_path, {"a": pa.array([1], pa.int32()), "b": pa.array([2**40], pa.int64())})
    with pytest.raises(ColumnTypeConflictError, match="is int32 in .* but int64 in "):
        check_column_types_agree(files, ["session_id"])


def test_kept_columns_are_checked_like_the_key(tmp_path):
    files = _files(tmp_path, {"a": pa.array([1]), "b": pa.array([2])})
    pq.write_table(
        pq.read_table(tmp_path / "b.parquet").set_column(
            1, "page_value", pa.array([1], pa.int64())
        ),
        tmp_path / "b.parquet",
    )
    files = scan_inputs(resolve(str(tmp_path)))
    check_column_types_agree(files, ["session_id"])  # type: ignore[arg-type]
    with pytest.raises(ColumnTypeConflictError, match="column 'page_value' is double in "):
        check_column_types_agree(files, ["session_id", "page_value"])  # type: ignore[arg-type]


def test_string_encodings_and_files_without_the_column_pass(tmp_path):
    files = _files(
        tmp_path,
        {
            "a": pa.array(["x", "y"]).dictionary_encode(),
            "b": pa.array(["z"], pa.large_string()),
            "c": pa.array(["w"]),
        },
    )
    assert check_column_types_agree(files, ["session_id", "not_in_any_file"]) is None
    assert check_column_types_agree([], ["session_id"]) is None
    # They pass because each encoding reads as a string, not because the key went unchecked:
    # the same files beside one that holds the key as a number are refused, naming it.
    files = _files(tmp_path, {"d": pa.array([1], pa.int64())})
    with pytest.raises(ColumnTypeConflictError, match=r"column 'session_id' is .* in .*d\.parquet"):
        check_column_types_agree(files, ["session_id", "not_in_any_file"])


# -- the reader facts the decisions rest on: if a release changes one, revisit the rule ------


def _folder(root, *arrays: pa.Array):
    for i, keys in enumerate(arrays):
        pq.write_table(pa.table({"k": keys}), root / f"part-{i}.parquet")
    return root


def _readers(root):
    glob = f"{root}/*.parquet"
    return {
        "pyarrow.dataset": lambda: ds.dataset(root).to_table().num_rows,
        "pq.read_table": lambda: pq.read_table(root).num_rows,
        "duckdb read_parquet": lambda: duckdb.sql(f"SELECT count(k) FROM '{glob}'").fetchall()[0][
            0
        ],
    }


@pytest.mark.parametrize("order", ["dictionary first", "string first"])
def test_readers_union_string_encodings_in_any_order(tmp_path, order):
    arrays = [pa.array(["a", "b"]).dictionary_encode(), pa.array(["c"], pa.large_string())]
    root = _folder(tmp_path, *(arrays if order == "dictionary first" else arrays[::-1]))
    for read in _readers(root).values():
        assert read() == 3


def test_readers_take_the_first_files_integer_width_and_fail_past_it(tmp_path):
    root = _folder(tmp_path, pa.array([1], pa.int32()), pa.array([2**40], pa.int64()))
    for name, read in _readers(root).items():
        with pytest.raises((pa.ArrowInvalid, duckdb.ConversionException), match="range"):
            read()
            pytest.fail(f"{name} read int32 then int64 past int32's range")
    widened = f"SELECT max(k) FROM read_parquet('{root}/*.parquet', union_by_name = true)"
    assert duckdb.sql(widened).fetchall()[0][0] == 2**40  # only when asked to


def test_readers_fail_on_a_key_that_is_a_number_in_one_file_and_text_in_another(tmp_path):
    root = _folder(tmp_path, pa.array([1], pa.int64()), pa.array(["s-2"]))
    for read in _readers(root).values():
        with pytest.raises((pa.ArrowInvalid, duckdb.ConversionException)):
            read()


def test_scorer_score_refuses_a_key_of_two_types_with_exit_2_and_writes_nothing(tmp_path):
    history = make_history(tmp_path / "in", sessions=400, files=2, days=1, row_group_rows=100)
    first, second = sorted(history.rglob("*.parquet"))
    table = pq.read_table(second)
    keys = pa.array([f"s-{key}" for key in table["session_id"].to_pylist()])
    pq.write_table(table.set_column(0, "session_id", keys), second)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["score", str(history), str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("ColumnTypeConflictError: column 'session_id' is int64 in ")
    assert str(first) in result.output and f"string in {second}" in result.output
    assert not out.exists()
