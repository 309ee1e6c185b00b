"""What a run did: one row per shard attempt, the run's counters, calibration and drift per day.

The driver loop tells the ledger what happened to each shard (`skipped`, `committed`, `failed`,
`interrupted`, `failed_input`); the ledger keeps the shard-stats rows, the `RunSummary`
counters and stage seconds, and the calibration and drift states merged per `dt`, and at the end
of the run writes the tables (`layout.SHARD_STATS`, `layout.RUN_STATS`, `layout.CALIBRATION`,
`layout.DRIFT`).
It neither schedules nor reports progress: that is the loop's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from scorer._version import __version__
from scorer.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, exit_code
from scorer.metrics import CalibrationState, calibration_table
from scorer.model.drift import DriftState, drift_table
from scorer.model.reference import Reference
from scorer.partitions import DATE_KEY
from scorer.pipeline.alerts import Alert
from scorer.pipeline.layout import CALIBRATION, DRIFT, RUN_STATS, SHARD_STATS, run_table_relpath
from scorer.pipeline.outcome import ShardOutcome
from scorer.pipeline.plan import FailedInput, Shard
from scorer.pipeline.stats import (
    RUN_STATS_SCHEMA,
    SHARD_STATS_SCHEMA,
    STAGES,
    RunStatus,
    ShardStatus,
    stats_table,
    utc_now,
    write_table,
)
from scorer.storage import Location

StatsRow = dict[str, object]
"""One row of a stats table by column name; `stats.stats_table` fills in the missing ones."""


@dataclass
class RunSummary:
    """What a run did; `exit_code` follows docs/backfills.md."""

    run_id: str
    status: RunStatus
    input: str
    output: str
    rows: int = 0
    rows_read: int = 0  # rows of the row groups read; above `rows` where a day filter cut some
    rows_without_day: int = 0  # of the rows scored from a day column, those with a null day
    row_groups_pruned: int = 0  # by a day filter on a column, from the footers' statistics
    rows_skipped: int = 0
    shards_committed: int = 0
    shards_skipped: int = 0
    shards_failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    wall_seconds: float = 0.0
    setup_seconds: float = 0.0
    work_seconds: float = 0.0
    cpu_seconds: float = 0.0  # the actors' CPU time over committed shards (all their threads)
    rows_per_second: float = 0.0
    work_rows_per_second: float = 0.0
    executor: str = "ray"  # "in-process": scored by the driver, Ray not started (`local`)
    actors: int = 0
    nodes: int = 0
    cpus: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    rows_per_node: dict[str, int] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    plan_text: str | None = None
    drift_path: str | None = None  # the run's drift table (docs/output.md), once written
    drift_skipped: str | None = None  # why there is none, e.g. "model card has no reference"
    delta_version: int | None = None  # --format delta: the scores table's version once published
    iceberg: dict[str, Any] | None = None  # --format iceberg: catalog_uri, table, snapshot_id
    alerts: list[Alert] = field(default_factory=list)  # of the drift and calibration written
    fail_on_alert: bool = field(default=False, repr=False)  # [monitor]: alerts exit EXIT_ALERT

    @property
    def exit_code(self) -> int:
        if self.status == "interrupted":
            return EXIT_INTERRUPTED
        run_exit_code = EXIT_FAILED if self.shards_failed else EXIT_OK
        return exit_code(run_exit_code, self.alerts, self.fail_on_alert)

    def to_dict(self) -> dict[str, Any]:
        summary = dataclasses.asdict(self)
        del summary["fail_on_alert"]  # the config's, not something the run did
        return summary | {"exit_code": self.exit_code}


@dataclass(frozen=True)
class RunInfo:
    """What the run row says about the job itself, known when the run starts."""

    started_at: dt.datetime
    batch_rows: int
    shard_rows: int
    model_name: str
    model_version: str
    model_sha256: str


class Ledger:
    """The bookkeeping of one run; `write` puts it under OUTPUT."""

    def __init__(
        self, summary: RunSummary, info: RunInfo, reference: Reference | None = None
    ) -> None:
        self.summary = summary
        self.info = info
        self.reference = reference
        """The model card's reference; None: drift is skipped."""
        self.shard_stats: list[StatsRow] = []
        self.calibration: dict[str | None, CalibrationState] = {}
        """Calibration states merged per `dt` partition (None: files outside any)."""
        self.drift: dict[str | None, DriftState] = {}
        """Drift states merged per `dt` partition, like `calibration`."""
        self.attempts_failed = 0
        self.written: dict[str, pa.Table] = {}
        """The run tables `write` put under OUTPUT, by folder (`layout.RUN_TABLES`)."""
        if reference is None:
            summary.drift_skipped = "model card has no reference"

    @property
    def run_id(self) -> str:
        return self.summary.run_id

    # -- what happened to a shard -----------------------------------------------------------

    def skipped(self, shard: Shard) -> None:
        """Committed by an earlier run for this input and model."""
        self._row(shard, attempt=0, status="skipped")

    def committed(self, shard: Shard, attempt: int, outcome: ShardOutcome) -> None:
        summary = self.summary
        row = self._row(shard, attempt=attempt, status="committed")
        seconds = outcome.seconds
        row |= {
            "rows": outcome.rows,
            "rows_ok": outcome.rows_ok,
            "rows_invalid": outcome.rows_invalid,
            "rows_unseen_category": outcome.rows_unseen_category,
            "output_bytes": outcome.output_bytes,
            "peak_rss_bytes": outcome.peak_rss_bytes,
            "requests": outcome.requests,
            "bytes_read": outcome.bytes_read,
            **{f"{stage}_seconds": seconds[stage] for stage in STAGES},
            "total_seconds": seconds["total"],
            "cpu_seconds": seconds.get("cpu"),
            "actor_id": outcome.actor_id,
            "node_id": outcome.node_id,
            "node_ip": outcome.node_ip,
            "pid": outcome.pid,
            "started_at": outcome.started_at,
            "ended_at": outcome.ended_at,
        }
        for stage in STAGES:
            summary.stage_seconds[stage] = summary.stage_seconds.get(stage, 0.0) + seconds[stage]
        node = outcome.node_ip or outcome.node_id
        summary.rows_per_node[node] = summary.rows_per_node.get(node, 0) + outcome.rows
        day = dict(shard.partition).get(DATE_KEY)
        # Days from a column come per day (`days`), a folder's with the shard.
        calibration = outcome.calibration_days
        if calibration is None and outcome.calibration is not None:
            calibration = {day: outcome.calibration}
        for key, state in (calibration or {}).items():
            previous = self.calibration.get(key)
            self.calibration[key] = state if previous is None else previous.merge(state)
        drift = outcome.drift_days
        if drift is None and outcome.drift is not None:
            drift = {day: outcome.drift}
        for key, drift_state in (drift or {}).items():
            self.drift[key] = self.drift.get(key, DriftState()).merge(drift_state)
        if outcome.rows_read is not None:
            row["rows_read"] = outcome.rows_read
            summary.rows_read += outcome.rows_read
            summary.rows_without_day += outcome.rows_without_day
        else:
            summary.rows_read += outcome.rows
        summary.shards_committed += 1
        summary.rows += outcome.rows
        summary.cpu_seconds += seconds.get("cpu", 0.0)

    def failed(
        self,
        shard: Shard,
        attempt: int,
        error: str,
        started_at: dt.datetime | None,
        *,
        final: bool,
    ) -> None:
        """A failed attempt; `final`: its shard is not tried again and counts as failed."""
        self._row(shard, attempt=attempt, status="failed", error=error, started_at=started_at)
        self.attempts_failed += 1
        if final:
            self._shard_failed(shard.shard_id, shard.input_path, error)

    def interrupted(self, shard: Shard, attempt: int, started_at: dt.datetime | None) -> None:
        """An attempt in flight when the run was interrupted: abandoned."""
        self._row(
            shard, attempt=attempt, status="interrupted", error="interrupted", started_at=started_at
        )

    def failed_input(self, failed: FailedInput) -> str:
        """A file whose footer cannot be read, failed as one shard; returns the error."""
        now = utc_now()
        error = f"{failed.path}: {failed.reason}"
        status: ShardStatus = "failed"
        self.shard_stats.append(
            {
                "run_id": self.run_id,
                "shard_id": failed.shard_id,
                "input_path": failed.path,
                "input_bytes": failed.size,
                "attempt": 1,
                "status": status,
                "error": error,
                "started_at": now,
                "ended_at": now,
            }
        )
        self._shard_failed(failed.shard_id, failed.path, error)
        return error

    # -- the end of the run -----------------------------------------------------------------

    def close(self, *, started: float, work: tuple[float, float] | None) -> None:
        """Fill in the summary's times and final status. `started`: the run's start and `work`:
        its work window (first dispatch to last result), both `time.perf_counter()` values."""
        summary = self.summary
        ended = time.perf_counter()
        summary.wall_seconds = ended - started
        if work is not None:
            summary.work_seconds = work[1] - work[0]
        summary.rows_per_second = (
            summary.rows / summary.wall_seconds if summary.wall_seconds else 0.0
        )
        summary.work_rows_per_second = (
            summary.rows / summary.work_seconds if summary.work_seconds else 0.0
        )
        if summary.status != "interrupted" and summary.shards_failed:
            summary.status = "failed"

    def write(self, output: Location) -> None:
        """The run's shard stats, run stats, (when labelled) calibration and (when the card has a
        reference and rows were scored) drift, under OUTPUT."""

        def put(folder: str, table: pa.Table) -> str:
            location = output.child(run_table_relpath(folder, self.run_id))
            write_table(output.filesystem, location.path, table)
            self.written[folder] = table
            return location.uri

        put(SHARD_STATS, stats_table(self.shard_stats, SHARD_STATS_SCHEMA))
        put(RUN_STATS, stats_table([self.run_row()], RUN_STATS_SCHEMA))
        if self.calibration:
            put(CALIBRATION, calibration_table(self.run_id, self.calibration, DATE_KEY))
        if self.reference is not None and self.drift:
            table = drift_table(self.run_id, self.drift, self.reference, DATE_KEY)
            self.summary.drift_path = put(DRIFT, table)
        elif self.reference is not None:
            self.summary.drift_skipped = "no rows scored in this run"

    def run_row(self) -> StatsRow:
        import onnxruntime
        import pyarrow

        info = self.info
        return dataclasses.asdict(self.summary) | {
            "started_at": info.started_at,
            "ended_at": utc_now(),
            "attempts_failed": self.attempts_failed,
            "batch_rows": info.batch_rows,
            "shard_rows": info.shard_rows,
            "model_name": info.model_name,
            "model_version": info.model_version,
            "model_sha256": info.model_sha256,
            "scorer_version": __version__,
            "ray_version": importlib.metadata.version("ray"),
            "onnxruntime_version": onnxruntime.__version__,
            "pyarrow_version": pyarrow.__version__,
        }

    # -- rows -------------------------------------------------------------------------------

    def _row(
        self,
        shard: Shard,
        *,
        attempt: int,
        status: ShardStatus,
        error: str | None = None,
        started_at: dt.datetime | None = None,
    ) -> StatsRow:
        row: StatsRow = {
            "run_id": self.run_id,
            "shard_id": shard.shard_id,
            "input_path": shard.input_path,
            "row_group_start": shard.rg_start,
            "row_group_stop": shard.rg_stop,
            "input_files": shard.files,
            "output_path": shard.output_relpath,
            "rows": shard.rows,
            "input_bytes": shard.input_bytes,
            "attempt": attempt,
            "status": status,
            "error": error,
            "started_at": started_at,
            "ended_at": utc_now() if status != "skipped" else None,
        }
        self.shard_stats.append(row)
        return row

    def _shard_failed(self, shard_id: str, input_path: str, error: str) -> None:
        self.summary.shards_failed += 1
        self.summary.failures.append({"shard_id": shard_id, "input": input_path, "error": error})
