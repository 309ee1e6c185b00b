"""What a worker hands back for a shard: `ShardOutcome`, and who the worker is (`Identity`).

Separate from the workers themselves because the driver, its commit thread and the ledger read
an outcome without ever running a shard: they need this contract, not the reading, scoring and
writing that produce it (`stages`), nor Ray (`actor`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TypedDict

from scorer.metrics import CalibrationState
from scorer.model.drift import DriftState

StageSeconds = dict[str, float]
"""Seconds per stage (`stats.STAGES`) of one shard, summed over its batches."""


class Identity(TypedDict):
    """Who and where an actor is, as its stats rows name it."""

    actor_id: str
    node_id: str
    node_ip: str
    pid: int


@dataclass
class ShardOutcome:
    """What an actor returns for a written shard; the driver commits it."""

    shard_id: str
    rows: int = 0
    rows_ok: int = 0
    rows_invalid: int = 0
    rows_unseen_category: int = 0
    output_bytes: int = 0
    peak_rss_bytes: int = 0  # the actor process's peak so far: flat as files grow (row-group bound)
    seconds: StageSeconds = field(default_factory=dict)  # STAGES, then total and cpu
    calibration: CalibrationState | None = None
    drift: DriftState | None = None  # when the model's card has a reference
    actor_id: str = ""
    node_id: str = ""
    node_ip: str = ""
    pid: int = 0
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    requests: int | None = None  # object storage: requests made reading the shard
    bytes_read: int | None = None  # object storage: bytes those requests returned
    rows_read: int | None = None  # a shard of day-column files: rows read, `rows` the selected
    rows_without_day: int = 0  # of those, rows whose day column is null
    calibration_days: dict[str | None, CalibrationState] | None = None  # per day of the column
    drift_days: dict[str | None, DriftState] | None = None  # per day of the column
