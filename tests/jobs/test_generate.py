"""`scorer generate`: layout, schema, determinism, realism and the known ground truth."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from scorer.cli import cli
from scorer.errors import ConfigError, OutputConflictError
from scorer.jobs.generate import (
    METADATA_KEY,
    UNSEEN_INT,
    UNSEEN_STRING,
    Break,
    generate,
    ground_truth_probability,
)
from scorer.model.card import load_card
from scorer.model.runtime import default_model_dir
from scorer.model.sessions import MONTHS, SESSION_SCHEMA, load_bundled_sessions

# 3 days ending on a Sunday: Fri 2026-11-27 .. Sun 2026-11-29.
END = dt.date(2026, 11, 29)
SMALL = dict(sessions=20_000, files=4, days=3, seed=5, end_date=END)


def files_of(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def read(root: Path) -> pa.Table:
    """The whole data set, `dt` included, in session_id order."""
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    return table.sort_by("session_id")


def features_of(table: pa.Table) -> pa.Table:
    return table.drop_columns(["converted"])


def four_sigma(rate: float, n: int) -> float:
    """Four standard errors of a binomial rate over n rows: a flake once in ~16,000 runs."""
    return 4 * np.sqrt(rate * (1 - rate) / n)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A data set big enough for distribution checks: 200k sessions over November days."""
    root = tmp_path_factory.mktemp("history") / "data"
    summary = generate(
        root, sessions=200_000, files=6, days=5, seed=11, end_date=END, row_group_rows=30_000
    )
    return root, summary, read(root)


def test_layout_is_hive_partitioned_by_day(history):
    root, summary, table = history
    days = [(END - dt.timedelta(days=d)).isoformat() for d in range(4, -1, -1)]
    # 6 files over 5 days: the first day holds two.
    assert [p.relative_to(root).as_posix() for p in files_of(root)] == [
        f"dt={days[0]}/part-00000.parquet",
        f"dt={days[0]}/part-00001.parquet",
        *(f"dt={day}/part-00000.parquet" for day in days[1:]),
    ]
    assert (summary.rows, summary.files, summary.days) == (200_000, 6, 5)
    assert (summary.first_day.isoformat(), summary.last_day.isoformat()) == (days[0], days[-1])
    counts = table.group_by("dt").aggregate([("session_id", "count")]).to_pydict()
    assert sorted(counts["dt"]) == days
    assert counts["session_id_count"] == [40_000] * 5


def test_files_have_the_session_schema_and_row_groups(history):
    root, _, _ = history
    for path in files_of(root):
        parquet = pq.ParquetFile(path)
        assert parquet.schema_arrow.equals(SESSION_SCHEMA)
        sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
        assert all(size == 30_000 for size in sizes[:-1]) and 0 < sizes[-1] <= 30_000


def test_session_ids_are_unique_and_dense(history):
    _, _, table = history
    assert table["session_id"].to_numpy().tolist() == list(range(200_000))


def test_month_and_weekend_agree_with_dt(history):
    _, _, table = history
    days = [dt.date.fromisoformat(day) for day in table["dt"].to_pylist()[::1000]]
    sample = table.take(np.arange(0, table.num_rows, 1000))
    assert sample["month"].to_pylist() == [MONTHS[day.month - 1] for day in days]
    assert sample["weekend"].to_pylist() == [day.weekday() >= 5 for day in days]


def test_values_are_in_their_ranges(history):
    _, _, table = history
    for rate in ("bounce_rate", "exit_rate", "special_day"):
        assert pc.min(table[rate]).as_py() >= 0.0 and pc.max(table[rate]).as_py() <= 1.0
    for kind in ("admin", "info", "product"):
        pages = table[f"{kind}_pages"].to_numpy()
        seconds = table[f"{kind}_seconds"].to_numpy()
        assert pages.min() >= 0 and seconds.min() >= 0.0
        assert not seconds[pages == 0].any(), "a kind of page never visited has no duration"
    assert pc.min(table["page_value"]).as_py() >= 0.0
    assert table.drop_columns(["dt"]).validate(full=True) is None
    assert sum(table[name].null_count for name in table.column_names) == 0


def test_ground_truth_mean_equals_the_conversion_rate(history):
    root, summary, table = history
    truth = ground_truth_probability(table, shift=summary.shift)
    assert truth.mean() == pytest.approx(summary.conversion_rate, abs=1e-9)
    # The shift travels with every file, so the data set alone gives back its ground truth.
    for path in files_of(root):
        provenance = json.loads(pq.read_schema(path).metadata[METADATA_KEY])
        assert provenance["shift"] == summary.shift
        assert provenance["conversion_rate"] == summary.conversion_rate


def test_labels_are_drawn_from_the_ground_truth(history):
    _, summary, table = history
    truth = ground_truth_probability(table, shift=summary.shift)
    labels = table["converted"].to_numpy()
    assert summary.positives == labels.sum()
    assert abs(labels.mean() - truth.mean()) < four_sigma(truth.mean(), len(labels))
    # Calibrated by construction: in every decile of the truth, observed rate ≈ mean truth.
    for decile in np.array_split(np.argsort(truth, kind="stable"), 10):
        assert abs(labels[decile].mean() - truth[decile].mean()) < four_sigma(
            truth[decile].mean(), len(decile)
        )


@pytest.mark.parametrize("rate", [0.01, 0.155, 0.6, 0.97])
def test_conversion_rate_is_met(tmp_path, rate):
    summary = generate(tmp_path / "data", **SMALL, conversion_rate=rate)
    table = read(tmp_path / "data")
    truth = ground_truth_probability(table, shift=summary.shift)
    assert truth.mean() == pytest.approx(rate, abs=1e-9)
    assert abs(summary.positive_rate - rate) < four_sigma(rate, summary.rows)
    assert summary.positives == pc.sum(table["converted"]).as_py()


def test_marginals_follow_the_real_sessions_of_the_month(history):
    _, _, table = history
    real = load_bundled_sessions()
    real = real.filter(pc.equal(real["month"], "Nov"))

    def share_zero(t, name):
        return pc.mean(pc.equal(t[name], 0).cast(pa.float64())).as_py()

    for name in ("page_value", "admin_pages", "info_pages", "bounce_rate"):
        assert share_zero(table, name) == pytest.approx(share_zero(real, name), abs=0.015), name
    for name in ("product_pages", "product_seconds", "exit_rate"):
        generated = np.median(table[name].to_numpy())
        assert generated == pytest.approx(np.median(real[name].to_numpy()), rel=0.1), name

    def pages_seconds_correlation(t):
        return np.corrcoef(
            np.log1p(t["product_pages"].to_numpy()), np.log1p(t["product_seconds"].to_numpy())
        )[0, 1]

    expected = pages_seconds_correlation(real)
    assert pages_seconds_correlation(table) == pytest.approx(expected, abs=0.03)
    visitors = pc.value_counts(table["visitor_type"]).to_pylist()
    real_visitors = pc.value_counts(real["visitor_type"]).to_pylist()
    shares = {v["values"]: v["counts"] / table.num_rows for v in visitors}
    for v in real_visitors:
        assert shares[v["values"]] == pytest.approx(v["counts"] / real.num_rows, abs=0.01)


def test_same_seed_gives_identical_bytes_on_any_number_of_threads(tmp_path):
    generate(tmp_path / "a", **SMALL, workers=1)
    generate(tmp_path / "b", **SMALL, workers=3)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(pa_.read_bytes() == pb.read_bytes() for pa_, pb in zip(a, b, strict=True))


def test_different_seed_gives_different_sessions(tmp_path):
    generate(tmp_path / "a", **SMALL)
    generate(tmp_path / "b", **{**SMALL, "seed": 6})
    a, b = read(tmp_path / "a"), read(tmp_path / "b")
    assert a["session_id"].equals(b["session_id"])
    assert not a["product_seconds"].equals(b["product_seconds"])
    assert not a["converted"].equals(b["converted"])


def test_conversion_rate_and_row_groups_change_only_what_they_must(tmp_path):
    base = generate(tmp_path / "base", **SMALL)
    generate(tmp_path / "rate", **SMALL, conversion_rate=0.4)
    generate(tmp_path / "groups", **SMALL, row_group_rows=1_000)
    base_table = read(tmp_path / "base")
    assert features_of(read(tmp_path / "rate")).equals(features_of(base_table))
    assert not read(tmp_path / "rate")["converted"].equals(base_table["converted"])
    assert read(tmp_path / "groups").equals(base_table)
    assert base.positives == pc.sum(base_table["converted"]).as_py()


def test_schema_variants(tmp_path):
    generate(tmp_path / "base", **SMALL)
    generate(tmp_path / "wide", **SMALL, int_type=pa.int64(), string_type=pa.large_string())
    wide_schema = pq.read_schema(files_of(tmp_path / "wide")[0])
    widened = {pa.int32(): pa.int64(), pa.string(): pa.large_string()}
    for field in SESSION_SCHEMA:
        assert wide_schema.field(field.name).type == widened.get(field.type, field.type)
    narrow = read(tmp_path / "base").drop_columns(["dt"])
    wide = read(tmp_path / "wide").drop_columns(["dt"])
    assert wide.cast(narrow.schema).equals(narrow)


def test_months_absent_from_the_real_data_borrow_a_neighbour(tmp_path):
    summary = generate(
        tmp_path / "data", sessions=4_000, files=2, days=2, seed=1, end_date=dt.date(2027, 2, 1)
    )
    table = read(tmp_path / "data")
    assert sorted(set(table["month"].to_pylist())) == ["Feb", "Jan"]
    assert ground_truth_probability(table, shift=summary.shift).mean() == pytest.approx(
        summary.conversion_rate
    )


def test_output_uri(tmp_path):
    summary = generate((tmp_path / "data").as_uri(), sessions=1_000, files=1, days=1, seed=2)
    assert read(tmp_path / "data").num_rows == summary.rows == 1_000


def test_ground_truth_accepts_plain_columns():
    columns = {
        "page_value": [0.0, 50.0],
        "exit_rate": [0.2, 0.01],
        "product_pages": [1, 40],
        "visitor_type": ["Returning_Visitor", "New_Visitor"],
        "month": ["Feb", "Nov"],
        "weekend": [False, True],
    }
    low, high = ground_truth_probability(columns)
    assert 0.0 < low < 0.01 < 0.5 < high < 1.0
    batch = pa.RecordBatch.from_pydict(columns)
    np.testing.assert_array_equal(ground_truth_probability(batch), [low, high])
    with pytest.raises(ValueError, match="month"):
        ground_truth_probability({**columns, "month": ["Feb", "June"]})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(sessions=0), "sessions"),
        (dict(files=0), "files"),
        (dict(days=0), "days"),
        (dict(files=2, days=3), r"files \(2\) must be at least days \(3\)"),
        (dict(sessions=3, files=4, days=1), r"sessions \(3\) must be at least files \(4\)"),
        (dict(seed=-1), "seed"),
        (dict(conversion_rate=0.0), "conversion_rate"),
        (dict(conversion_rate=1.0), "conversion_rate"),
        (dict(row_group_rows=0), "row_group_rows"),
        (dict(int_type=pa.int16()), "int_type"),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path, arguments, message):
    with pytest.raises(ConfigError, match=message):
        generate(tmp_path / "data", **{**SMALL, **arguments})
    assert not (tmp_path / "data").exists()


def test_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "old.parquet").write_bytes(b"")
    with pytest.raises(OutputConflictError, match="not empty"):
        generate(tmp_path / "data", **SMALL)
    generate(tmp_path / "empty", **SMALL)  # an existing empty directory is fine
    with pytest.raises(OutputConflictError, match="not a directory"):
        generate(tmp_path / "data" / "old.parquet", **SMALL)


# Broken days.

FRI, SAT, SUN = "2026-11-27", "2026-11-28", "2026-11-29"


def on_day(table: pa.Table, day: str) -> pa.Table:
    return table.filter(pc.equal(table["dt"], day))


def off_day(table: pa.Table, day: str) -> pa.Table:
    return table.filter(pc.not_equal(table["dt"], day))


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    root = tmp_path_factory.mktemp("unbroken") / "data"
    return generate(root, **SMALL), read(root)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken") / "data"
    breaks = [
        Break.parse(f"{SAT}:zero=page_value"),
        Break.parse(f"{SUN}:unseen=browser:0.3"),
        Break.parse(f"{SUN}:unseen=visitor_type:0.1"),
        Break.parse(f"{SUN}:null=exit_rate:0.2"),
        Break.parse(f"{FRI}:shift=product_pages:2"),
    ]
    return generate(root, **SMALL, breaks=breaks), read(root), root


def test_a_zeroed_column_is_zero_on_its_day_and_untouched_elsewhere(broken, unbroken):
    _, table, _ = broken
    _, clean = unbroken
    assert pc.all(pc.equal(on_day(table, SAT)["page_value"], 0.0)).as_py()
    assert pc.any(pc.greater(on_day(clean, SAT)["page_value"], 0.0)).as_py()
    assert off_day(table, SAT)["page_value"].equals(off_day(clean, SAT)["page_value"])
    # Every other column of the broken day is the unbroken day's.
    others = [name for name in table.column_names if name != "page_value"]
    assert on_day(table, SAT).select(others).equals(on_day(clean, SAT).select(others))


def test_an_unseen_flood_takes_its_share_with_values_outside_the_vocabulary(broken, unbroken):
    _, table, _ = broken
    _, clean = unbroken
    card = {spec.name: spec for spec in load_card(default_model_dir()).inputs}
    real = load_bundled_sessions()
    assert UNSEEN_INT not in {*card["browser"].vocabulary, *real["browser"].to_pylist()}
    assert UNSEEN_STRING not in card["visitor_type"].vocabulary
    sunday, clean_sunday = on_day(table, SUN), on_day(clean, SUN)
    for column, value, share in (
        ("browser", UNSEEN_INT, 0.3),
        ("visitor_type", UNSEEN_STRING, 0.1),
    ):
        flooded = pc.equal(sunday[column], value).to_numpy(zero_copy_only=False)
        assert abs(flooded.mean() - share) < four_sigma(share, len(flooded)), column
        # Rows not flooded keep their value.
        kept = pa.array(~flooded)
        assert sunday[column].filter(kept).equals(clean_sunday[column].filter(kept))
        assert off_day(table, SUN)[column].equals(off_day(clean, SUN)[column])


def test_null_and_shift_breaks(broken, unbroken):
    _, table, _ = broken
    _, clean = unbroken
    exit_rate = on_day(table, SUN)["exit_rate"]
    assert abs(exit_rate.null_count / len(exit_rate) - 0.2) < four_sigma(0.2, len(exit_rate))
    valid = pc.is_valid(exit_rate)
    assert exit_rate.filter(valid).equals(on_day(clean, SUN)["exit_rate"].filter(valid))
    doubled = pc.multiply(on_day(clean, FRI)["product_pages"], 2).cast(pa.int32())
    assert on_day(table, FRI)["product_pages"].equals(doubled)
    assert table.schema.equals(clean.schema)


def test_breaks_keep_the_labels_and_the_truth_of_the_unbroken_generation(broken, unbroken):
    summary, table, root = broken
    clean_summary, clean = unbroken
    assert table["converted"].equals(clean["converted"])
    assert table["session_id"].equals(clean["session_id"])
    assert (summary.positives, summary.shift, summary.conversion_rate) == (
        clean_summary.positives,
        clean_summary.shift,
        clean_summary.conversion_rate,
    )
    # The truth is the unbroken features'; the breaks are recorded beside it.
    provenance = json.loads(pq.read_schema(files_of(root)[0]).metadata[METADATA_KEY])
    assert provenance["breaks"] == [str(b) for b in summary.breaks]
    assert provenance["shift"] == clean_summary.shift


def test_breaks_are_deterministic_on_any_number_of_threads(tmp_path):
    breaks = [Break.parse(f"{SUN}:unseen=traffic_type:0.5"), Break.parse(f"{SAT}:null=month:0.3")]
    generate(tmp_path / "a", **SMALL, breaks=breaks, workers=1)
    generate(tmp_path / "b", **SMALL, breaks=breaks, workers=3)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert all(pa_.read_bytes() == pb.read_bytes() for pa_, pb in zip(a, b, strict=True))


def test_a_break_outside_the_generated_days_names_the_date(tmp_path):
    with pytest.raises(ConfigError, match=r"2026-11-26 is not a generated day \(2026-11-27\.\."):
        generate(tmp_path / "data", **SMALL, breaks=[Break.parse("2026-11-26:zero=page_value")])
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-28:zero=pagevalue", "column 'pagevalue' cannot take a zero break"),
        ("2026-11-28:zero=browser", "column 'browser' cannot take a zero break"),
        ("2026-11-28:unseen=page_value", "column 'page_value' cannot take a unseen break"),
        ("2026-11-28:zap=page_value", "unknown kind 'zap'"),
        ("2026-11-28:shift=exit_rate", "shift needs a factor"),
        ("2026-11-28:shift=exit_rate:0", "shift needs a factor"),
        ("2026-11-28:null=exit_rate:1.5", "share must be in"),
        ("2026-11-28:zero=exit_rate:2", "zero takes no amount"),
        ("2026-11-28:null=exit_rate:lots", "amount 'lots' is not a number"),
        ("2026-11-28:null=exit_rate:nan", "not a finite number"),
        ("28/11/2026:zero=page_value", "'28/11/2026' is not a date"),
        ("2026-11-28", "expected DATE:KIND=COLUMN"),
    ],
)
def test_a_bad_break_is_an_error_naming_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=message):
        Break.parse(text)


def test_parse_and_str_round_trip():
    for text in ("2026-11-20:zero=page_value", "2026-11-21:unseen=browser:0.3"):
        assert str(Break.parse(text)) == text
    assert Break.parse("2026-11-21:null=weekend") == Break(dt.date(2026, 11, 21), "null", "weekend")


# The command line.


def invoke(*args: str):
    return CliRunner().invoke(cli, ["generate", *args])


def test_cli_generates_and_summarises(tmp_path):
    result = invoke(
        str(tmp_path / "data"), "--sessions", "3000", "--files", "3", "--days", "3",
        "--seed", "9", "--conversion-rate", "0.2", "--end-date", "2026-06-30",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3,000 sessions in 3 files over 3 days (2026-06-28..2026-06-30)" in result.output
    assert "ground truth 20.00%" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.parent.name for p in files_of(tmp_path / "data")) == [
        "dt=2026-06-28", "dt=2026-06-29", "dt=2026-06-30",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sessions", "0"], "Invalid value for '--sessions'"),
        (["--files", "0"], "Invalid value for '--files'"),
        (["--days", "0"], "Invalid value for '--days'"),
        (["--seed", "-3"], "Invalid value for '--seed'"),
        (["--conversion-rate", "1"], "Invalid value for '--conversion-rate'"),
        (["--conversion-rate", "0"], "Invalid value for '--conversion-rate'"),
        (["--end-date", "27/11/2026"], "Invalid value for '--end-date'"),
        (["--files", "1", "--days", "2"], "ConfigError: files (1) must be at least days (2)"),
    ],
)
def test_cli_rejects_bad_options(tmp_path, args, message):
    defaults = {"--sessions": "100", "--files": "2", "--days": "2", "--seed": "1"}
    for option, value in zip(args[::2], args[1::2], strict=True):
        defaults[option] = value
    result = invoke(str(tmp_path / "data"), *[item for pair in defaults.items() for item in pair])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "data").exists()


def test_cli_requires_the_size_options(tmp_path):
    result = invoke(str(tmp_path / "data"), "--sessions", "10", "--files", "1", "--days", "1")
    assert result.exit_code == 2
    assert "Missing option '--seed'" in result.output


def test_cli_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x").write_text("")
    result = invoke(
        str(tmp_path / "data"), "--sessions", "10", "--files", "1", "--days", "1", "--seed", "1"
    )
    assert result.exit_code == 2
    assert "OutputConflictError:" in result.output and "not empty" in result.output


def test_cli_breaks_days(tmp_path):
    result = invoke(
        str(tmp_path / "data"), "--sessions", "3000", "--files", "3", "--days", "3", "--seed", "9",
        "--break", "2026-11-26:zero=page_value", "--break", "2026-11-27:unseen=region:0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "broken: 2026-11-26:zero=page_value, 2026-11-27:unseen=region:0.5" in result.output
    table = read(tmp_path / "data")
    assert pc.all(pc.equal(on_day(table, "2026-11-26")["page_value"], 0.0)).as_py()
    assert pc.any(pc.equal(on_day(table, "2026-11-27")["region"], UNSEEN_INT)).as_py()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-12-01:zero=page_value", "ConfigError: break 2026-12-01:zero=page_value: 2026-12-01"),
        ("2026-11-26:zero=nope", "Invalid value for '--break': break 2026-11-26:zero=nope: column"),
        ("nonsense", "Invalid value for '--break': break 'nonsense': expected"),
    ],
)
def test_cli_rejects_a_bad_break(tmp_path, value, message):
    result = invoke(
        str(tmp_path / "data"), "--sessions", "100", "--files", "3", "--days", "3", "--seed", "1",
        "--break", value,
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "data").exists()


def test_cli_help():
    result = invoke("--help")
    assert result.exit_code == 0
    options = ("--sessions", "--files", "--days", "--seed", "--conversion-rate", "--end-date")
    for option in (*options, "--break"):
        assert option in result.output


def test_default_rate_keeps_the_real_stores_monthly_rates(tmp_path):
    """No --conversion-rate: no shift, so November converts like the real November (~25%)."""
    summary = generate(tmp_path / "data", sessions=20_000, files=1, days=1, seed=3)
    assert summary.shift == 0.0
    assert 0.2 < summary.conversion_rate < 0.3  # the real store's November rate
