"""What every step of a run needs, resolved once: the config, the run id, the model, the key and
label columns, INPUT and OUTPUT as locations, the options digest and where the days come from.

Its own module because three steps read it and none owns it: ``entry`` resolves it before the
scan, ``executors`` builds the workers' settings from it, ``driver`` drives the run with it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from scorer.config import JobConfig
from scorer.model.runtime import IntentModel
from scorer.pipeline.days import DayPlan
from scorer.pipeline.ledger import RunSummary
from scorer.pipeline.plan import Plan
from scorer.pipeline.stats import RunStatus
from scorer.storage import Location

__all__ = ["RunContext", "new_run_id", "new_summary"]


@dataclass(frozen=True)
class RunContext:
    """What every step of a run needs, resolved once."""

    config: JobConfig
    run_id: str
    model: IntentModel
    key_column: str
    label_column: str | None
    input: Location
    output: Location
    options_digest: str
    # Read before Ray starts: under `ray job submit` joining the cluster can unpack the job's
    # working directory (which holds the bundled model) again, and a read then finds no file.
    model_files: dict[str, bytes] = field(default_factory=dict, repr=False)
    days: DayPlan | None = None
    """Where the files' days come from and what a day filter reads of them (`days`)."""


def new_run_id() -> str:
    """Sortable by start time, unique across concurrent drivers."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def new_summary(context: RunContext, plan: Plan, status: RunStatus) -> RunSummary:
    """The run summary before anything is scored: what the plan skips, where it goes."""
    return RunSummary(
        run_id=context.run_id,
        status=status,
        input=context.input.uri,
        output=context.output.uri,
        rows_skipped=plan.skipped_rows,
        shards_skipped=len(plan.skipped),
        fail_on_alert=context.config.monitor.fail_on_alert,
    )
