"""What the driver ships to each worker once, as it starts: `ActorSettings` (the model's bytes
and the run's settings), and the loading of that model in the worker (`load_shipped_model`).

Separate from the shard work: a worker's start-up is the one place the model crosses a process
or node boundary (nodes need not share a disk), and where it is checked against the sha256 the
driver verified before a worker scores anything with it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from scorer.config import DEFAULT_READ_AHEAD, DEFAULT_REQUESTS_IN_FLIGHT
from scorer.pipeline.days import DaySource
from scorer.pipeline.layout import OutputLayout
from scorer.storage import Location

if TYPE_CHECKING:
    from scorer.model.runtime import IntentModel


@dataclass(frozen=True)
class ActorSettings:
    """Shipped once when an actor starts."""

    model_files: dict[str, bytes]  # model.onnx and model.json: nodes need not share a disk
    threads: int
    batch_rows: int
    key_column: str
    keep: tuple[str, ...]
    label_column: str | None
    run_id: str
    input_location: Location  # pickles as a secret-free URI; credentials come from the env
    layout: OutputLayout
    compression: str = "zstd"
    read_ahead: int = DEFAULT_READ_AHEAD
    """Object storage: row groups of a shard fetched ahead of the one decoded."""
    requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT
    """Object storage: ranged reads an actor has in flight at most."""
    model_sha256: str | None = None
    """The sha256 of the model the driver verified (the run's): a worker loads `model_files`
    only if they are that model (`load_shipped_model`). The driver always sets it."""
    days: DaySource = field(default_factory=lambda: DaySource(None))
    """The day column of files outside ``dt=`` folders (`days`); their scores get ``dt``."""


def load_shipped_model(settings: ActorSettings) -> IntentModel:
    """The model the settings carry, loaded in this process (an actor's, a worker process's):
    its files written to a temporary folder first, as the loader checks them there (against
    their card and against the sha256 the driver verified), and the folder removed once the
    session holds the graph (one was left behind per actor)."""
    from scorer.model.runtime import load_model

    with tempfile.TemporaryDirectory(prefix="scorer-model-") as folder:
        model_dir = Path(folder)
        for name, payload in settings.model_files.items():
            (model_dir / name).write_bytes(payload)
        return load_model(
            model_dir, threads=settings.threads, expected_sha256=settings.model_sha256
        )
