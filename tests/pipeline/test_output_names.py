"""Output names have one owner, `scorer.pipeline.layout`: built once, parsed back by the same
module, and a table format's run names on every shard the run writes, the ones cut at
dispatch included."""

from __future__ import annotations

import pytest
from support.inputs import synthetic

from scorer.config import OUTPUT_FORMATS, JobConfig, OutputFormat, load_config
from scorer.errors import ConfigError
from scorer.partitions import HIVE_NULL
from scorer.pipeline.layout import (
    COMMITS,
    TABLE_LOGS,
    commit_record_relpath,
    file_run,
    is_scorer_file,
    partition_folders,
    partition_values,
    shard_output_relpath,
)
from scorer.pipeline.packing import plan_shards, split_off, with_quick_head
from scorer.pipeline.retry import Failure, split_poison


def test_a_shard_name_is_built_and_parsed_back_by_layout():
    plain = shard_output_relpath("dt=2026-11-27/part-0.parquet", 0, 4)
    assert plain == "scores/dt=2026-11-27/part-0-rg00000-00004.parquet"
    assert file_run(plain) is None and is_scorer_file(plain)
    named = shard_output_relpath(
        "dt=2026-11-27/part-0.parquet", 0, 4, run_id="20261127T000000Z-abc"
    )
    assert named == "scores/dt=2026-11-27/part-0-rg00000-00004.run-20261127T000000Z-abc.parquet"
    assert file_run(named) == "20261127T000000Z-abc" and is_scorer_file(named)
    assert not is_scorer_file("scores/dt=2026-11-27/someone-elses.parquet")
    assert partition_values(named) == {"dt": "2026-11-27"}
    assert partition_values(f"scores/dt={HIVE_NULL}/x.parquet") == {"dt": None}
    assert partition_folders("scores/dt=1/region=eu/x.parquet") == ("dt=1", "region=eu")
    assert commit_record_relpath("a.parquet:0-1").startswith(f"{COMMITS}/")


def test_a_table_run_names_every_shard_it_writes_once_the_cut_ones_too():
    """The plan names shards for the run; shards cut from them (the quick head, a poison file
    split off at dispatch) keep the run's name, so no file of a table run has a published
    name. Renaming after planning left the shards cut at dispatch with plain names."""
    files = [synthetic(f"dt=1/f{i}.parquet", [10, 10]) for i in range(3)]
    plan = plan_shards(files, 100, run_id="R1")
    (shard,) = plan.shards
    assert file_run(shard.output_relpath) == "R1"
    alone, rest = split_off(shard, "/in/dt=1/f1.parquet")
    assert rest is not None
    assert file_run(alone.output_relpath) == file_run(rest.output_relpath) == "R1"
    head, tail = with_quick_head(plan, lambda rows, files: rows <= 10).shards
    assert file_run(head.output_relpath) == file_run(tail.output_relpath) == "R1"
    poisoned = split_poison(shard, Failure("bad", retryable=False, input_path=alone.input_path))
    assert poisoned is not None and all(
        s is None or file_run(s.output_relpath) == "R1" for s in poisoned
    )
    assert split_poison(shard, Failure("actor died", retryable=True)) is None
    assert all(file_run(s.output_relpath) is None for s in plan_shards(files, 100).shards)


def test_the_output_format_is_one_enum_that_takes_the_same_words():
    assert OUTPUT_FORMATS == ("parquet", "delta", "iceberg")
    assert JobConfig(format="delta").format is OutputFormat.DELTA
    assert JobConfig().format is OutputFormat.PARQUET and not OutputFormat.PARQUET.is_table
    assert {f for f in OutputFormat if f.is_table} == set(TABLE_LOGS)
    with pytest.raises(ConfigError, match="format: must be one of parquet, delta, iceberg"):
        JobConfig(format="csv")


def test_a_config_file_names_the_format_by_its_word(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('format = "iceberg"\n')
    assert load_config(path).format is OutputFormat.ICEBERG
    path.write_text("format = 3\n")
    with pytest.raises(ConfigError, match="job.toml: 'format' must be a string"):
        load_config(path)
