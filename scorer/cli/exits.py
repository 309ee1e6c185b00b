"""How a command ends: every exit of the `scorer` program goes through here.

A library error becomes one line, ``TypeName: message``, and the error's exit code (the
traceback only with `--verbose`); a command that ended ends with its result's exit code; SIGTERM
is turned into the same clean abandon as Ctrl-C; and the process exits without the
interpreter's teardown once everything is written. The codes themselves are
`scorer.errors`'s.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn, ParamSpec, TypeVar

import click

from scorer.errors import EXIT_FAILED, EXIT_OK, Interrupted, ScorerError, Terminated

_P = ParamSpec("_P")
_R = TypeVar("_R")


def handle_errors(command: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn library errors into `TypeName: message` on stderr and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        ctx = click.get_current_context()
        try:
            return command(*args, **kwargs)
        except ScorerError as exc:
            if ctx.find_root().params.get("verbose"):
                raise
            click.echo(f"{type(exc).__name__}: {exc}", err=True)
            ctx.exit(exc.exit_code)

    return wrapper


def exit_with(code: int) -> NoReturn:
    """End the command with ``code``, its result's `exit_code` (everything is written by now)."""
    sys.exit(code)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) gets the same clean abandon as Ctrl-C, and the
    exit code schedulers read as "stopped by SIGTERM" (`Terminated`), Ctrl-C keeping
    `Interrupted`'s."""
    import signal

    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt  # the library abandons in-flight shards on it, then `Interrupted`

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except Interrupted as exc:
        if received and not isinstance(exc, Terminated):
            raise Terminated(str(exc)) from exc
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_program(program: Callable[[], object]) -> None:
    """Run the `scorer` program, then exit at once with its code.

    Once a command has ended and everything it wrote is closed, the process exits without the
    interpreter's teardown: finalizing pyarrow, onnxruntime, thread pools and a plan of
    thousands of files took 0.15-0.6 s after the summary was printed (measured on 2 cores), with
    nothing left to write. An exception that escapes the command ends it the usual way.
    """
    try:
        program()
    except SystemExit as ended:
        code = ended.code
        if isinstance(code, str):  # sys.exit("message"): what Python would print
            print(code, file=sys.stderr)
            code = EXIT_FAILED
        _exit_now(EXIT_OK if code is None else code)


def _exit_now(code: int) -> NoReturn:
    if "logging" in sys.modules:  # Ray's handlers among them
        import logging

        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
