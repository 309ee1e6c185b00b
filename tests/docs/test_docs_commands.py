"""Every `scorer …` command in the shell examples of README.md and docs/*.md parses.

Each ```bash block's `scorer` commands (lines joined at a trailing backslash, split at `&&` and
`;`, comments dropped) are parsed by the real command line, as the shell would hand them over:
an option that was renamed or removed, a missing required option, a value of the wrong type or
a subcommand that no longer exists fails here, naming the page and the command. Paths are not
required to exist: the examples name the user's files.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

import click
import pytest

from scorer.cli import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def shell_commands() -> list:
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) != "bash":
                continue
            line_no = text[: m.start()].count("\n") + 2
            for offset, line in enumerate(m.group(2).replace("\\\n", " \n").splitlines()):
                code = "" if line.lstrip().startswith("#") else line.split(" #")[0]
                for part in re.split(r"&&|;", code):
                    if part.strip().startswith("scorer "):
                        found.append(
                            pytest.param(part.strip(), id=f"{page.name}:{line_no + offset}")
                        )
    return found


def test_the_docs_have_scorer_commands():
    assert len(shell_commands()) >= 20


@pytest.mark.parametrize("command", shell_commands())
def test_shell_example_parses(command, monkeypatch):
    args = shlex.split(command)[1:]
    while args and args[0] == "--verbose":  # the group's only option besides --help/--version
        args.pop(0)
    assert args and args[0] in cli.commands, f"no such command: {command}"
    sub = cli.commands[args[0]]
    for param in sub.params:  # the examples name the user's files: parse paths as if they existed
        if isinstance(param.type, click.Path):
            monkeypatch.setattr(param.type, "exists", False)
    with contextlib.suppress(click.exceptions.Exit):  # --help
        sub.make_context(args[0], args[1:])
