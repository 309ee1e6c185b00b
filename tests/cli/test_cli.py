"""Every command has help; errors are one line with the type and the exit code."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

import scorer.cli
import scorer.cli.score
import scorer.config
from scorer.cli import cli
from scorer.config import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_CPUS_PER_ACTOR,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SHARD_ROWS,
)
from scorer.jobs.bench import DEFAULT_REPS, DEFAULT_SESSIONS
from scorer.model.card import (
    BUNDLED_MODEL,
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION,
    DEFAULT_SEED,
    DEFAULT_VERSION,
)

COMMANDS = sorted(cli.commands)


def walk(command: click.Command, path: tuple[str, ...] = ()):
    """Every command below `command` (itself included), as the argument path that reaches it."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))


def test_the_spec_commands_exist():
    assert {
        "score",
        "generate",
        "train",
        "calibrate",
        "evaluate",
        "report",
        "bench",
        "inspect",
    } <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert cli.commands[command].help and len(cli.commands[command].help) > 40
    assert "Usage: " in result.output


def test_every_command_of_the_group_has_help_text_and_help_exits_0():
    walked = list(walk(cli))
    assert {path for path, _ in walked} >= {(name,) for name in COMMANDS} | {()}
    for path, command in walked:
        assert command.help and command.help.strip(), f"{path} has no help text"
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert result.output.startswith("Usage: "), path
        # The first line of the docstring is the summary in the parent's command list.
        assert command.get_short_help_str(limit=300).rstrip(".") in " ".join(command.help.split())


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "scorer", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "score" in result.stdout


def test_library_errors_are_one_line_with_exit_code(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("ModelError: ") and result.output.count("\n") == 1
    # On stderr, naming the file and what is wrong with it.
    assert result.stderr == f"ModelError: {tmp_path / 'model.json'}: no model card " + (
        f"(is {tmp_path} a model directory?)\n"
    )
    assert result.stdout == ""


def test_verbose_shows_the_traceback_instead(tmp_path):
    result = CliRunner().invoke(cli, ["--verbose", "inspect", str(tmp_path)])
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "ModelError"
    assert "no model card" in str(result.exception)


def test_usage_errors_exit_2():
    result = CliRunner().invoke(cli, ["score", "in", "out", "--actors", "0"])
    assert result.exit_code == 2
    assert "Error: Invalid value for '--actors': 0 is not in the range x>=1." in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["score", "--batch-rows", "x"], "Invalid value for '--batch-rows': 'x' is not a valid"),
        (["score", "--cpus-per-actor", "0"], "Invalid value for '--cpus-per-actor'"),
        (["train", "--help-me"], "No such option '--help-me'. Did you mean '--help'?"),
        (["calibrate", "data"], "Invalid value for 'DATA': Path 'data' does not exist."),
        (["nonsense"], "No such command 'nonsense'."),
    ],
)
def test_usage_errors_say_what_is_wrong(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.stderr and result.stdout == ""


def test_calibration_methods_listed_once_in_one_order(tmp_path):
    choices = "[" + "|".join(CALIBRATION_METHODS) + "]"
    train = CliRunner().invoke(cli, ["train", "--help"]).output
    calibrate = CliRunner().invoke(cli, ["calibrate", "--help"]).output
    assert f"--calibration {choices}" in train and f"--method {choices}" in calibrate
    assert f"[default: {DEFAULT_CALIBRATION}" in train
    assert f"[default: {DEFAULT_VERSION}]" in train
    for text in (train, calibrate):
        assert f"[default: {DEFAULT_SEED};" in text
    data = tmp_path / "data.parquet"
    data.write_bytes(b"")
    result = CliRunner().invoke(cli, ["train", str(data), "--out", "m", "--calibration", "plat"])
    assert result.exit_code == 2
    assert f"'plat' is not one of {', '.join(map(repr, CALIBRATION_METHODS))}" in result.stderr


def _help_text(*args: str) -> str:
    # Click wraps help to the terminal; joined words compare whatever the wrapping.
    return " ".join(CliRunner().invoke(cli, [*args, "--help"]).output.split())


def test_help_shows_the_defaults_of_their_owners():
    score = _help_text("score")
    assert f"Rows per scored batch (default {DEFAULT_BATCH_ROWS});" in score
    assert f"packed together (default {DEFAULT_SHARD_ROWS})." in score
    assert f"Attempts per shard (default {DEFAULT_MAX_ATTEMPTS})." in score
    assert f"per actor (default {DEFAULT_CPUS_PER_ACTOR:g});" in score
    assert f"the bundled {BUNDLED_MODEL}." in score
    bench = _help_text("bench")
    assert f"[default: {DEFAULT_SESSIONS}" in bench and f"[default: {DEFAULT_REPS}" in bench
    assert f"(default {DEFAULT_BATCH_ROWS})" in bench


def test_changing_a_default_changes_the_help(monkeypatch):
    monkeypatch.setattr(scorer.config, "DEFAULT_BATCH_ROWS", 4_096)
    monkeypatch.setattr(scorer.config, "DEFAULT_MAX_ATTEMPTS", 7)
    try:
        importlib.reload(scorer.cli.score)
        reloaded = importlib.reload(scorer.cli).cli
        output = " ".join(CliRunner().invoke(reloaded, ["score", "--help"]).output.split())
        assert "(default 4096)" in output and "Attempts per shard (default 7)." in output
    finally:
        monkeypatch.undo()
        importlib.reload(scorer.cli.score)
        importlib.reload(scorer.cli)


def test_the_command_keeps_blas_to_one_thread_unless_told_otherwise():
    # Set before numpy loads (`scorer.__main__`): OpenBLAS reads it once.
    probe = "import os, sys, scorer.__main__; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    found = []
    for preset in (None, "3"):
        if preset:
            env["OPENBLAS_NUM_THREADS"] = preset
        run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
        found.append(run.stdout.strip())
    assert found == ["1", "3"]
