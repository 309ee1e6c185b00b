"""The partition facts' one owner (`scorer.partitions`): the KEY=VALUE grammar of options, config
and folders, the day key, and the since/until rule, for the CLI, the config file and the library."""

from datetime import date

import pytest

from scorer.errors import ConfigError, PreflightError
from scorer.partitions import (
    DATE_KEY,
    PartitionFilter,
    check_day_range,
    folder_pair,
    hive_tail,
    parse_partitions,
    partition_of,
    split_pair,
)


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("dt=2026-11-27", ("dt", "2026-11-27")),
        ("expr=a=b", ("expr", "a=b")),  # split at the first '='
        ("dt", None),
        ("=2026-11-27", None),
        ("dt=", None),
        ("", None),
    ],
)
def test_one_grammar_for_a_pair(text, pair):
    assert split_pair(text) == pair


def test_repeated_key_gives_alternatives_in_order_once_each():
    parsed = parse_partitions(["dt=2026-11-28", "region=3", "dt=2026-11-27", "dt=2026-11-28"])
    assert parsed == {"dt": ("2026-11-28", "2026-11-27"), "region": ("3",)}
    selection = PartitionFilter.parse([f"{k}={v}" for k, values in parsed.items() for v in values])
    assert selection.matches((("dt", "2026-11-27"), ("region", "3")), "a.parquet")
    assert selection.matches((("dt", "2026-11-28"), ("region", "3")), "b.parquet")
    assert not selection.matches((("dt", "2026-11-29"), ("region", "3")), "c.parquet")
    assert not selection.matches((("dt", "2026-11-27"),), "d.parquet")  # keys must all match


@pytest.mark.parametrize("token", ["dt", "=x", "dt="])
def test_bad_token_is_refused_by_config_and_by_the_filter_alike(token):
    with pytest.raises(ConfigError, match=f"partition: expected KEY=VALUE, got {token!r}"):
        parse_partitions([token])
    with pytest.raises(ConfigError, match=f"--partition {token!r}: expected KEY=VALUE"):
        PartitionFilter.parse([token])


def test_since_after_until_is_refused_as_option_and_as_config_key():
    late, early = date(2026, 11, 28), date(2026, 11, 27)
    with pytest.raises(ConfigError, match=r"^--since 2026-11-28 is after --until 2026-11-27$"):
        PartitionFilter.parse((), "2026-11-28", "2026-11-27")
    with pytest.raises(ConfigError, match=r"^since \(2026-11-28\) is after until \(2026-11-27\)$"):
        check_day_range(late, early, flags=False)
    check_day_range(early, early, flags=True)  # one day: both bounds are inclusive
    check_day_range(None, early, flags=True)
    assert PartitionFilter.parse((), early, early).matches(((DATE_KEY, "2026-11-27"),), "x")


def test_days_select_only_files_with_a_date_key():
    selection = PartitionFilter.parse((), "2026-11-27", None)
    assert not selection.matches((("region", "eu"),), "x.parquet")
    with pytest.raises(PreflightError, match="x.parquet: partition dt='latest'"):
        selection.matches(((DATE_KEY, "latest"),), "x.parquet")


def test_folders_follow_the_same_grammar_and_unquote_values():
    assert folder_pair("region=eu%2Fwest") == ("region", "eu/west")
    assert folder_pair("region=") is None and folder_pair("2026") is None
    assert partition_of("dt=2026-11-27/region=eu/notes=/part-0.parquet") == (
        ("dt", "2026-11-27"),
        ("region", "eu"),
    )
    assert partition_of("dt=2026-11-27.parquet") == ()  # a file name is not a folder
    assert hive_tail("/data/sessions/dt=2026-11-27/region=eu/") == ["dt=2026-11-27", "region=eu"]
    assert hive_tail("/data/dt=2026-11-27/sessions") == []
