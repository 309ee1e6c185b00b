"""Validation and encoding of Arrow batches into the graph feed (scorer.model.encode)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorer.errors import ShardReadError
from scorer.model.card import InputSpec
from scorer.model.encode import encode_inputs, status_codes
from scorer.model.sessions import MONTHS, VISITOR_TYPES
from scorer.model.train import session_inputs

VOCABULARIES = {
    "operating_system": (1, 2, 3, 4, 8),
    "browser": (1, 2, 5, 10),
    "region": (1, 2, 3),
    "traffic_type": (1, 2, 3, 20),
}
INPUTS = session_inputs(VOCABULARIES)
NAMES = [spec.name for spec in INPUTS]


def good_row(**changes) -> dict:
    row = {
        "session_id": 1,
        "admin_pages": 2,
        "admin_seconds": 30.5,
        "info_pages": 0,
        "info_seconds": 0.0,
        "product_pages": 12,
        "product_seconds": 400.0,
        "bounce_rate": 0.02,
        "exit_rate": 0.05,
        "page_value": 3.5,
        "special_day": 0.0,
        "month": "Nov",
        "operating_system": 2,
        "browser": 2,
        "region": 1,
        "traffic_type": 3,
        "visitor_type": "Returning_Visitor",
        "weekend": False,
    }
    row.update(changes)
    return row


SCHEMA = pa.schema(
    [("session_id", pa.int64())]
    + [(n, pa.int32() if n.endswith("pages") else pa.float64()) for n in NAMES[:10]]
    + [("month", pa.string())]
    + [(n, pa.int32()) for n in ("operating_system", "browser", "region", "traffic_type")]
    + [("visitor_type", pa.string()), ("weekend", pa.bool_())]
)


def table_of(rows: list[dict], schema: pa.Schema = SCHEMA) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def statuses(table) -> list[str]:
    return encode_inputs(INPUTS, table).status.to_pylist()


# --- statuses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({}, "ok"),
        ({"page_value": None}, "missing:page_value"),
        ({"exit_rate": math.nan}, "not_finite:exit_rate"),
        ({"exit_rate": math.inf}, "not_finite:exit_rate"),
        ({"admin_seconds": -math.inf}, "not_finite:admin_seconds"),
        ({"bounce_rate": 1.5}, "out_of_range:bounce_rate"),
        ({"bounce_rate": -0.01}, "out_of_range:bounce_rate"),
        ({"special_day": 1.0000001}, "out_of_range:special_day"),
        ({"product_pages": -1}, "out_of_range:product_pages"),
        ({"page_value": 1e300}, "not_finite:page_value"),  # beyond float32: inf in the graph
        ({"bounce_rate": 0.0, "exit_rate": 1.0, "special_day": 1.0}, "ok"),
        ({"month": None}, "missing:month"),
        ({"traffic_type": None}, "missing:traffic_type"),
        ({"weekend": None}, "missing:weekend"),
        ({"month": "Foo", "browser": 99, "visitor_type": "Bot"}, "ok"),
    ],
)
def test_status_of_one_bad_value(change, status):
    assert statuses(table_of([good_row(**change)])) == [status]


def test_first_failing_column_in_card_order_wins():
    row = good_row(weekend=None, bounce_rate=math.nan, admin_seconds=-1.0, month=None)
    assert statuses(table_of([row])) == ["out_of_range:admin_seconds"]
    row = good_row(weekend=None, bounce_rate=2.0, exit_rate=None)
    assert statuses(table_of([row])) == ["out_of_range:bounce_rate"]
    # Column order in the table does not matter: the card's order does.
    table = table_of([row])
    assert statuses(table.select(list(reversed(table.column_names)))) == [
        "out_of_range:bounce_rate"
    ]


def test_counts_mask_and_zero_feed_for_invalid_rows():
    rows = [
        good_row(),
        good_row(page_value=None),
        good_row(exit_rate=math.nan),
        good_row(page_value=None),
    ]
    encoded = encode_inputs(INPUTS, table_of(rows))
    assert encoded.invalid_mask.tolist() == [False, True, True, True]
    assert encoded.invalid_counts == {"missing:page_value": 2, "not_finite:exit_rate": 1}
    assert encoded.rows_invalid == 3
    for array in encoded.feed.values():
        assert not array[:, 1:].any()
        assert np.isfinite(array).all()
    assert encoded.feed["numeric"][:, 0].tolist() == pytest.approx(
        [2, 30.5, 0, 0, 12, 400, 0.02, 0.05, 3.5, 0], rel=1e-6
    )


def test_all_ok_is_the_fast_path():
    encoded = encode_inputs(INPUTS, table_of([good_row()] * 5))
    assert encoded.invalid_mask is None
    assert encoded.invalid_counts == {}
    assert encoded.rows_invalid == 0
    assert encoded.status.type == pa.dictionary(pa.int32(), pa.string())
    assert encoded.status.dictionary.to_pylist() == list(status_codes(INPUTS))


# --- categoricals -----------------------------------------------------------------------------


def test_unseen_values_are_encoded_as_unseen_and_counted():
    rows = [
        good_row(month="Foo"),
        good_row(browser=99, month="Jan"),
        good_row(browser=-5, visitor_type="Bot"),
        good_row(browser=99, page_value=None),  # invalid: not scored, so not counted as unseen
        good_row(),
    ]
    encoded = encode_inputs(INPUTS, table_of(rows))
    categorical = encoded.feed[
        "categorical"
    ]  # month, operating_system, browser, region, traffic, visitor
    assert categorical[0].tolist() == [12, 0, MONTHS.index("Nov"), 0, MONTHS.index("Nov")]
    assert categorical[2].tolist() == [1, 4, 4, 0, 1]
    assert categorical[5].tolist() == [0, 0, 3, 0, 0]
    assert encoded.unseen == {
        "month": 1,
        "operating_system": 0,
        "browser": 2,
        "region": 0,
        "traffic_type": 0,
        "visitor_type": 1,
    }
    assert encoded.rows_unseen == 3
    assert encoded.status.to_pylist() == ["ok", "ok", "ok", "missing:page_value", "ok"]


def test_extreme_integer_codes_are_unseen_not_wrapped():
    extremes = [np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0, 21, 2**40]
    vocab = InputSpec("code", "int", "categorical", vocabulary=(1, 2, 3))
    encoded = encode_inputs([vocab], pa.table({"code": pa.array(extremes + [1, 2, 3], pa.int64())}))
    assert encoded.feed["categorical"][0].tolist() == [3] * 6 + [0, 1, 2]
    wide = InputSpec("code", "int", "categorical", vocabulary=(7, 10**9, -(10**12)))
    encoded = encode_inputs(
        [wide], pa.table({"code": pa.array(extremes + [7, 10**9, -(10**12)], pa.int64())})
    )
    assert encoded.feed["categorical"][0].tolist() == [3] * 6 + [0, 1, 2]
    signed = InputSpec("code", "int", "categorical", vocabulary=(-1, 0, 1))
    # Narrow codes are looked up in int32 arithmetic: extremes must not wrap into the vocabulary,
    # whichever side of zero it sits on (offsets up to 2**30 take that path).
    int32_extremes = [-(2**31), 2**31 - 1, -(2**30) - 5, 2**30 + 5, -1, 0, 21]
    for low in (1, -(2**30) + 2, 2**30 - 2, -(2**31) + 10, 2**31 - 10):
        near = InputSpec("code", "int", "categorical", vocabulary=(low, low + 1, low + 2))
        codes = [c for c in int32_extremes if c not in near.vocabulary] + [low, low + 1, low + 2]
        expected = [3] * (len(codes) - 3) + [0, 1, 2]
        for kind in (pa.int32(), pa.int64()):
            encoded = encode_inputs([near], pa.table({"code": pa.array(codes, kind)}))
            assert encoded.feed["categorical"][0].tolist() == expected, (low, kind)
    small = InputSpec("code", "int", "categorical", vocabulary=(1, 2, 3))
    for kind in (pa.int8(), pa.int16(), pa.uint8(), pa.uint16(), pa.uint32()):
        encoded = encode_inputs([small], pa.table({"code": pa.array([0, 1, 2, 3, 4, 100], kind)}))
        assert encoded.feed["categorical"][0].tolist() == [3, 0, 1, 2, 3, 3], kind
    shifted = InputSpec("code", "int", "categorical", vocabulary=(50, 51))  # offset 49
    for kind in (pa.int8(), pa.uint16(), pa.uint32()):
        encoded = encode_inputs(
            [shifted], pa.table({"code": pa.array([0, 49, 50, 51, 52, 127], kind)})
        )
        assert encoded.feed["categorical"][0].tolist() == [2, 2, 0, 1, 2, 2], kind
    for spec in (vocab, signed, wide):
        unsigned = encode_inputs(
            [spec], pa.table({"code": pa.array([2**64 - 1, 2**63], pa.uint64())})
        )
        assert unsigned.feed["categorical"][0].tolist() == [3, 3]


@pytest.mark.parametrize(
    "string_type",
    [
        pa.string(),
        pa.large_string(),
        pa.string_view(),
        pa.dictionary(pa.int32(), pa.string()),
        pa.dictionary(pa.int8(), pa.large_string()),
    ],
)
def test_string_representations_encode_alike(string_type):
    months = ["Nov", None, "Foo", "Jan", "Dec", "Nov"]
    spec = InputSpec("month", "string", "categorical", vocabulary=MONTHS)
    column = pa.array(months).cast(string_type)
    encoded = encode_inputs([spec], pa.table({"month": column}))
    assert encoded.feed["categorical"][0].tolist() == [10, 0, 12, 0, 11, 10]
    assert encoded.status.to_pylist() == ["ok", "missing:month", "ok", "ok", "ok", "ok"]
    assert encoded.unseen == {"month": 1}


def test_dictionary_with_null_and_unused_entries():
    spec = InputSpec("visitor_type", "string", "categorical", vocabulary=VISITOR_TYPES)
    column = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, None, 2, 1], pa.int16()), pa.array(["Other", None, "Bot", "Unused"])
    )
    encoded = encode_inputs([spec], pa.table({"visitor_type": column}))
    assert encoded.status.to_pylist() == [
        "ok",
        "missing:visitor_type",
        "missing:visitor_type",
        "ok",
        "missing:visitor_type",
    ]
    assert encoded.feed["categorical"][0].tolist() == [2, 0, 0, 3, 0]
    assert encoded.unseen == {"visitor_type": 1}


# --- types, layout ----------------------------------------------------------------------------


def test_integer_widths_float_numbers_extra_columns_and_order_encode_alike():
    rows = [good_row(admin_pages=i, browser=b) for i, b in zip(range(6), (1, 2, 5, 10, 7, 1))]
    base = encode_inputs(INPUTS, table_of(rows))
    wide = table_of(rows)
    for name in (
        "admin_pages",
        "info_pages",
        "product_pages",
        "operating_system",
        "browser",
        "region",
    ):
        wide = wide.set_column(wide.schema.get_field_index(name), name, wide[name].cast(pa.int64()))
    wide = wide.set_column(
        wide.schema.get_field_index("admin_seconds"),
        "admin_seconds",
        wide["admin_seconds"].cast(pa.float32()),
    )
    wide = wide.append_column("extra", pa.array(["x"] * 6)).select(
        ["extra", *reversed(SCHEMA.names)]
    )
    other = encode_inputs(INPUTS, wide)
    for kind in base.feed:
        np.testing.assert_array_equal(base.feed[kind], other.feed[kind])
    assert other.status.to_pylist() == ["ok"] * 6


def test_chunked_tables_and_record_batches_encode_alike():
    rows = [good_row(page_value=v) for v in (1.0, None, 2.0, math.nan, 3.0, -1.0, 4.0)]
    table = table_of(rows)
    chunked = pa.concat_tables(
        [table.slice(0, 2), table.slice(2, 0), table.slice(2, 3), table.slice(5)]
    )
    assert chunked["page_value"].num_chunks > 1
    expected = encode_inputs(INPUTS, table.combine_chunks())
    for data in (chunked, table.to_batches()[0]):
        got = encode_inputs(INPUTS, data)
        assert got.status.to_pylist() == expected.status.to_pylist()
        for kind in expected.feed:
            np.testing.assert_array_equal(got.feed[kind], expected.feed[kind])


def test_empty_batch():
    encoded = encode_inputs(INPUTS, table_of([]))
    assert encoded.rows == 0 and encoded.invalid_mask is None
    assert encoded.feed["numeric"].shape == (10, 0)


@pytest.mark.parametrize(
    ("column", "array", "words"),
    [
        ("page_value", pa.array(["1.0"]), ["'page_value'", "string"]),
        ("month", pa.array([11], pa.int64()), ["'month'", "int64"]),
        ("browser", pa.array(["2"]), ["'browser'", "string"]),
        ("weekend", pa.array([1], pa.int8()), ["'weekend'", "int8"]),
    ],
)
def test_wrong_type_names_column_and_type(column, array, words):
    table = table_of([good_row()])
    table = table.set_column(table.schema.get_field_index(column), column, array)
    with pytest.raises(ShardReadError) as caught:
        encode_inputs(INPUTS, table)
    for word in words:
        assert word in str(caught.value)


def test_missing_column_is_named():
    with pytest.raises(ShardReadError, match="'exit_rate' is missing"):
        encode_inputs(INPUTS, table_of([good_row()]).drop_columns(["exit_rate"]))


def test_feed_buffers_are_filled_in_place():
    table = table_of([good_row(page_value=None), good_row()])
    fresh = encode_inputs(INPUTS, table).feed
    out = {kind: np.full_like(array, 7) for kind, array in fresh.items()}
    encoded = encode_inputs(INPUTS, table, out)
    assert all(encoded.feed[kind] is out[kind] for kind in out)
    assert not out["numeric"][:, 0].any() and out["numeric"][0, 1] == 2
    with pytest.raises(ValueError, match="feed buffers"):
        encode_inputs(INPUTS, table.slice(1), out)


# --- law: the vectorised statuses equal a row-by-row reading of docs/output.md ------------------------


def reference_status(row: dict) -> str:
    for spec in INPUTS:
        value = row[spec.name]
        if value is None:
            return f"missing:{spec.name}"
        if spec.kind == "numeric":
            if not math.isfinite(value):
                return f"not_finite:{spec.name}"
            if (spec.min is not None and value < spec.min) or (
                spec.max is not None and value > spec.max
            ):
                return f"out_of_range:{spec.name}"
    return "ok"


floats = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0, 1e-300]),
    st.floats(min_value=-2, max_value=2),
    st.floats(min_value=0, max_value=1e6),
)
counts = st.one_of(st.none(), st.integers(-3, 1000))


@st.composite
def session_rows(draw):
    row = good_row()
    for name in draw(st.lists(st.sampled_from(NAMES[:10]), max_size=4)):
        row[name] = draw(counts if name.endswith("pages") else floats)
    row["month"] = draw(st.sampled_from([*MONTHS, "Foo", None]))
    row["browser"] = draw(st.one_of(st.none(), st.integers(-3, 30)))
    row["weekend"] = draw(st.sampled_from([True, False, None]))
    return row


@settings(max_examples=60, deadline=None)
@given(st.lists(session_rows(), min_size=1, max_size=30), st.integers(1, 4))
def test_statuses_match_a_row_by_row_reference(rows, pieces):
    table = table_of(rows)
    step = max(1, len(rows) // pieces)
    chunked = pa.concat_tables([table.slice(i, step) for i in range(0, len(rows), step)])
    encoded = encode_inputs(INPUTS, chunked)
    expected = [reference_status(row) for row in rows]
    assert encoded.status.to_pylist() == expected
    assert encoded.rows_invalid == sum(s != "ok" for s in expected)
    unseen_month = sum(r["month"] == "Foo" and s == "ok" for r, s in zip(rows, expected))
    assert encoded.unseen["month"] == unseen_month
