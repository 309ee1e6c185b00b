"""The TOML job config: typed, every bad key named with its file, flags over file keys."""

from __future__ import annotations

import dataclasses
import datetime as dt
import signal
import types

import pytest
from click.testing import CliRunner

import scorer.pipeline.entry
from scorer.cli import cli
from scorer.config import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_CPUS_PER_ACTOR,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SHARD_ROWS,
    DEFAULT_THREADS_PER_ACTOR,
    JobConfig,
    RayOptions,
    load_config,
)
from scorer.errors import ConfigError
from scorer.partitions import parse_partitions


def write(tmp_path, text: str):
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def config_error(path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.exit_code == 2
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message  # the file, first
    return message


def test_no_file_gives_the_defaults():
    config = load_config(None)
    assert config == JobConfig()
    assert (config.batch_rows, config.shard_rows) == (DEFAULT_BATCH_ROWS, DEFAULT_SHARD_ROWS)
    assert config.max_attempts == DEFAULT_MAX_ATTEMPTS
    assert config.threads_per_actor == DEFAULT_THREADS_PER_ACTOR
    assert config.ray == RayOptions() and config.ray.cpus_per_actor == DEFAULT_CPUS_PER_ACTOR


def test_a_full_file_is_read_with_its_types(tmp_path):
    path = write(
        tmp_path,
        """
        input = "data/sessions"
        output = "scored"
        shard_rows = 1_000
        overwrite = true
        keep = ["visitor_type", "month"]
        since = 2026-11-01
        until = "2026-11-27"

        [partition]
        dt = "2026-11-27"
        region = 3

        [ray]
        actors = 4
        cpus_per_actor = 2

        [storage]
        region = "us-east-1"
        """,
    )
    config = load_config(path)
    assert (config.input, config.output, config.shard_rows) == ("data/sessions", "scored", 1_000)
    assert config.overwrite is True and config.keep == ("visitor_type", "month")
    assert (config.since, config.until) == (dt.date(2026, 11, 1), dt.date(2026, 11, 27))
    assert config.partition == {"dt": ("2026-11-27",), "region": ("3",)}
    assert config.ray.actors == 4
    assert config.ray.cpus_per_actor == 2.0 and isinstance(config.ray.cpus_per_actor, float)
    assert config.storage.region == "us-east-1"


# One wrong value per kind of key: the message names the file, the key (with its section) and
# what the key takes.
@pytest.mark.parametrize(
    "text, message",
    [
        ('batch_rows = "many"', "'batch_rows' must be an integer, got 'many'"),
        ("max_attempts = true", "'max_attempts' must be an integer, got True"),
        ("[ray]\nactors = 2.5", "'ray.actors' must be an integer, got 2.5"),
        ('[ray]\ncpus_per_actor = "one"', "'ray.cpus_per_actor' must be a number, got 'one'"),
        ('overwrite = "yes"', "'overwrite' must be true or false, got 'yes'"),
        ("model = 3", "'model' must be a string, got 3"),
        ("[storage]\nscheme = 1", "'storage.scheme' must be a string, got 1"),
        ('keep = "visitor_type"', "'keep' must be a list of strings, got 'visitor_type'"),
        ("keep = [1, 2]", "'keep' must be a list of strings, got [1, 2]"),
        ('partition = "dt=2026-11-27"', "'partition' must be a table of strings"),
        ("[partition]\ndt = [true]", "'partition' must be a table of strings or lists of strings"),
        ("[partition]\ndt = []", "'partition' must be a table of strings or lists of strings"),
        ("ray = 4", "'ray' must be a table [ray]"),
        ('since = "yesterday"', "'since' must be a date YYYY-MM-DD, got 'yesterday'"),
    ],
    ids=lambda value: value if len(value) < 30 else None,
)
def test_a_wrong_type_names_the_key_and_the_file(tmp_path, text, message):
    assert message in config_error(write(tmp_path, text))


@pytest.mark.parametrize(
    "text, message",
    [
        ("shards = 3", "unknown key 'shards' (known: batch_rows, date_column, date_timezone, "),
        ("[monitor]\npsi_max = 0.2", "unknown key 'monitor.psi_max' (known: ece, fail_on_alert, "),
        ("[cluster]\naddress = 'x'", "unknown key 'cluster' (known: "),
        ("[ray]\nworkers = 2", "unknown key 'ray.workers' (known: actors, address, "),
        ("[storage]\nbucket = 'b'", "unknown key 'storage.bucket' (known: endpoint_override, "),
    ],
)
def test_unknown_keys_and_sections_are_named(tmp_path, text, message):
    assert message in config_error(write(tmp_path, text))


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_rows = 0", "batch_rows: must be at least 1, got 0"),
        ("max_failed_shards = 0", "max_failed_shards: must be at least 1"),
        ("[ray]\nactors = 0", "ray.actors: must be at least 1"),
        ("[ray]\ncpus_per_actor = 0", "ray.cpus_per_actor: must be positive"),
        ("since = 2026-11-02\nuntil = 2026-11-01", "since (2026-11-02) is after until"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path, text, message):
    assert message in config_error(write(tmp_path, text))


def test_unreadable_files_are_config_errors(tmp_path):
    assert "config file not found" in config_error(tmp_path / "missing.toml")
    assert "not valid TOML" in config_error(write(tmp_path, "batch_rows = "))


def test_overrides_win_and_none_leaves_the_file_key(tmp_path):
    config = load_config(write(tmp_path, "batch_rows = 10\nshard_rows = 20\n[ray]\nactors = 2"))
    overridden = config.with_overrides(batch_rows=5, shard_rows=None, keep=(), ray__actors=3)
    assert (overridden.batch_rows, overridden.shard_rows) == (5, 20)
    assert overridden.keep == () and overridden.ray.actors == 3
    assert overridden.ray.cpus_per_actor == config.ray.cpus_per_actor
    with pytest.raises(ConfigError, match="batch_rows: must be at least 1"):
        config.with_overrides(batch_rows=0)


def test_partition_flags_are_key_value_pairs():
    assert parse_partitions(["dt=2026-11-27", "region=3"]) == {
        "dt": ("2026-11-27",),
        "region": ("3",),
    }
    with pytest.raises(ConfigError, match="partition: expected KEY=VALUE, got 'dt'"):
        parse_partitions(["dt"])


@pytest.fixture
def captured_config(monkeypatch):
    """`scorer score` up to the library call: the JobConfig the CLI hands to it, no Ray."""
    seen: dict[str, JobConfig] = {}

    def fake_score(input, output, *, config, progress, dry_run):
        seen["config"] = config
        return types.SimpleNamespace(plan_text="the plan", exit_code=0, alerts=[])

    monkeypatch.setattr(scorer.pipeline.entry, "score", fake_score)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # leave the test's SIGTERM alone
    return seen


def test_flags_override_file_keys(tmp_path, captured_config):
    path = write(
        tmp_path,
        """
        batch_rows = 1000
        shard_rows = 5000
        max_attempts = 5
        keep = ["month"]

        [partition]
        dt = "2026-11-27"

        [ray]
        actors = 2
        cpus_per_actor = 0.5
        """,
    )
    flags = ["--batch-rows", "64", "--actors", "3", "--keep", "region", "--partition", "dt=x"]
    flags.append("--dry-run")
    result = CliRunner().invoke(cli, ["score", "in", "out", "--config", str(path), *flags])
    assert result.exit_code == 0, result.output
    assert result.stdout == "the plan\n"
    config = captured_config["config"]
    assert (config.batch_rows, config.ray.actors, config.keep) == (64, 3, ("region",))
    assert config.partition == {"dt": ("x",)}
    # Keys without a flag keep the file's value.
    assert (config.shard_rows, config.max_attempts, config.ray.cpus_per_actor) == (5000, 5, 0.5)
    # And without a file, the flags apply over the defaults.
    result = CliRunner().invoke(cli, ["score", "in", "out", "--max-attempts", "4", "--dry-run"])
    assert result.exit_code == 0, result.output
    expected = dataclasses.replace(JobConfig(), max_attempts=4)
    assert captured_config["config"] == expected


def test_a_bad_config_file_exits_2_naming_the_key(tmp_path, captured_config):
    path = write(tmp_path, "[ray]\nactors = 'four'")
    result = CliRunner().invoke(cli, ["score", "in", "out", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr == (f"ConfigError: {path}: 'ray.actors' must be an integer, got 'four'\n")
    assert "config" not in captured_config
