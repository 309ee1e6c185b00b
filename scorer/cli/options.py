"""Options that more than one command declares, declared once.

A command module states its own options; the ones here are shared, so that two commands never
word or bound the same option differently: the `[monitor]` thresholds of `score` and
`evaluate`, `--config` and `--json`, and the model-directory options of `train`, `calibrate` and
`import`. Defaults come from their owners (`scorer.config`, `scorer.model.card`), never
restated here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from scorer.config import (
    DEFAULT_ALERT_ECE,
    DEFAULT_ALERT_MIN_ROWS,
    DEFAULT_ALERT_PSI,
    DEFAULT_ALERT_SHARE_INVALID,
    DEFAULT_ALERT_SHARE_MISSING,
    DEFAULT_ALERT_SHARE_UNSEEN,
)
from scorer.errors import EXIT_ALERT, EXIT_FAILED
from scorer.model.card import CALIBRATION_METHODS, DEFAULT_SEED

_R = TypeVar("_R")
_F = TypeVar("_F", bound=Callable[..., object])

# `[monitor]` thresholds as flags of `score` and `evaluate`: (flag, JobConfig override, type, help).
_MONITOR_FLAGS = (
    (
        "--alert-psi",
        "monitor__psi",
        float,
        f"PSI of an input or the score on a day (default {DEFAULT_ALERT_PSI:g}).",
    ),
    (
        "--alert-unseen",
        "monitor__share_unseen",
        float,
        f"Share of a categorical's rows outside the vocabulary (default {DEFAULT_ALERT_SHARE_UNSEEN:g}).",
    ),
    (
        "--alert-invalid",
        "monitor__share_invalid",
        float,
        f"Share of an input's rows invalid (default {DEFAULT_ALERT_SHARE_INVALID:g}).",
    ),
    (
        "--alert-missing",
        "monitor__share_missing",
        float,
        f"Share of an input's rows missing (default {DEFAULT_ALERT_SHARE_MISSING:g}).",
    ),
    (
        "--alert-ece",
        "monitor__ece",
        float,
        f"Equal-width ECE of intent_calibrated on a day (default {DEFAULT_ALERT_ECE:g}).",
    ),
    (
        "--alert-min-rows",
        "monitor__min_rows",
        int,
        f"Rows a day needs for PSI and ECE alerts (default {DEFAULT_ALERT_MIN_ROWS:,}).",
    ),
)


def monitor_options(command: Callable[..., _R]) -> Callable[..., _R]:
    """The alert thresholds and --fail-on-alert; the command gets them as one `monitor` dict of
    `JobConfig.with_overrides` keys (`monitor__psi=0.3`)."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> _R:
        monitor = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("monitor__")}
        return command(*args, monitor=monitor, **kwargs)

    for flag, name, kind, help in reversed(_MONITOR_FLAGS):
        bounds = click.IntRange(min=0) if kind is int else click.FloatRange(min=0)
        wrapper = click.option(
            flag, name, type=bounds, metavar="X", help=f"Alert threshold: {help}"
        )(wrapper)
    return click.option(
        "--fail-on-alert",
        "monitor__fail_on_alert",
        is_flag=True,
        default=None,
        help=f"Exit {EXIT_ALERT} when an alert is raised, once everything is committed and written "
        f"(a failed shard's exit {EXIT_FAILED} wins).",
    )(wrapper)


def config_option(help: str) -> Callable[[_F], _F]:
    """`--config FILE`: the TOML job config; each command says what it takes from it."""
    return click.option(
        "--config",
        "config_file",
        metavar="FILE",
        type=click.Path(dir_okay=False),
        help=help,
    )


def json_option(help: str = "Print a machine-readable summary on stdout.") -> Callable[[_F], _F]:
    """`--json`: what the command prints, as JSON on stdout (`render.echo_json`)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


# Options `train`, `calibrate` and `import` share; each command words the help for what it does
# with them. The defaults and the methods come from `scorer.model.card`, their owner.

data_argument = click.argument("data", type=click.Path(exists=True, path_type=Path))


def out_option(help: str) -> Callable[[_F], _F]:
    """`--out DIR`: the model directory a command writes."""
    return click.option(
        "--out",
        "out_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=help,
    )


def method_option(flag: str, help: str, default: str | None = None) -> Callable[[_F], _F]:
    """A calibration method: one of `CALIBRATION_METHODS`, shown in their order."""
    return click.option(
        flag,
        type=click.Choice(CALIBRATION_METHODS),
        default=default,
        show_default=default is not None,
        help=help,
    )


def seed_option(help: str) -> Callable[[_F], _F]:
    """`--seed S` of the stratified split of DATA."""
    return click.option(
        "--seed", type=click.IntRange(min=0), default=DEFAULT_SEED, show_default=True, help=help
    )
