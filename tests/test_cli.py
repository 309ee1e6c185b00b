"""Every command has help; errors are one line with the type and the exit code."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from scorer.cli import cli

COMMANDS = sorted(cli.commands)


def test_the_spec_commands_exist():
    assert {"score", "generate", "train", "calibrate", "report", "bench", "inspect"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert cli.commands[command].help and len(cli.commands[command].help) > 40
    assert "Usage: " in result.output


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "scorer", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "score" in result.stdout


def test_library_errors_are_one_line_with_exit_code(tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("ModelError: ") and result.output.count("\n") == 1


def test_usage_errors_exit_2():
    result = CliRunner().invoke(cli, ["score", "in", "out", "--actors", "0"])
    assert result.exit_code == 2
