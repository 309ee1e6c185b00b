"""The driver: one run under the OUTPUT lock, from the plan to the run stats. It only drives.

``Run.execute`` dispatches the plan's shards to the workers ``executors`` chose, commits each
result through ``manifest.Manifest`` on a commit thread, asks ``retry`` whether a failed attempt
goes back in line (and what of a packed shard with a poison file), publishes to the run's table
where there is one (``tables``), and tells ``ledger.Ledger`` what happened, which keeps the stats
and writes them at the end. What comes before (config, scan, preflight, lock, plan) is
``entry``'s.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Any

from scorer.errors import Interrupted, LockLostError, ScorerError
from scorer.pipeline.alerts import score_hint, table_alerts
from scorer.pipeline.context import RunContext, new_summary
from scorer.pipeline.executors import score_on_workers
from scorer.pipeline.layout import CALIBRATION, DRIFT
from scorer.pipeline.ledger import Ledger, RunInfo, RunSummary
from scorer.pipeline.manifest import Manifest
from scorer.pipeline.outcome import ShardOutcome
from scorer.pipeline.plan import Plan, Shard
from scorer.pipeline.pool import Workers
from scorer.pipeline.progress import Progress
from scorer.pipeline.retry import Failure, commit_failure, split_poison, will_retry
from scorer.pipeline.stats import utc_now
from scorer.pipeline.tables import ScoresTableFormat, plan_scope

__all__ = ["Run"]

_COMMIT_POLL_S = 0.02  # how often the loop looks at commits in progress while it waits on actors


@dataclass
class _Attempt:
    shard: Shard
    attempt: int
    actor_index: int
    started_at: dt.datetime


class Run:
    """One run under the lock: start the workers, dispatch, retry, commit, publish; the ledger
    records."""

    def __init__(
        self,
        context: RunContext,
        plan: Plan,
        manifest: Manifest,
        progress: Progress,
        started_wall: dt.datetime,
        started: float,
        table: ScoresTableFormat | None = None,
    ) -> None:
        self.context, self.plan, self.manifest, self.progress = context, plan, manifest, progress
        self.table = table
        self.started = started
        card, config = context.model.card, context.config
        info = RunInfo(
            started_at=started_wall,
            batch_rows=config.batch_rows,
            shard_rows=config.shard_rows,
            model_name=card.name,
            model_version=card.version,
            model_sha256=card.sha256,
        )
        self.ledger = Ledger(new_summary(context, plan, "completed"), info, card.reference)
        self.summary = self.ledger.summary
        if context.days is not None:
            self.summary.row_groups_pruned = context.days.row_groups_pruned
        self.work: tuple[float, float] | None = None  # first dispatch to last result
        self.files = {f.identity: f for f in plan.files}

    # -- the run --------------------------------------------------------------------------

    def execute(self) -> RunSummary:
        plan, progress = self.plan, self.progress
        for shard in plan.skipped:
            self.ledger.skipped(shard)
        if plan.skipped:
            progress.message(
                f"resuming: {len(plan.skipped):,} shard(s), {plan.skipped_rows:,} rows already "
                "committed for this input and model are skipped"
            )
        for failed in plan.failed:
            # A file whose footer cannot be read fails as one shard; the rest of the run goes on.
            error = self.ledger.failed_input(failed)
            progress.shard_failed(shard_id=failed.shard_id, error=error, will_retry=False)
        progress.start(
            total_rows=plan.rows, total_shards=len(plan.shards), skipped_rows=plan.skipped_rows
        )
        try:
            if plan.shards and not self._stop_dispatching():
                score_on_workers(
                    self.context, plan, self.summary, progress, self.started, self._run_workers
                )
            elif plan.shards:  # unreadable footers alone reached --max-failed-shards
                self._not_started(len(plan.shards))
            self._publish()
        except KeyboardInterrupt:
            self.summary.status = "interrupted"
        except BaseException:
            self.summary.status = "failed"  # the error goes on; the stats must not say completed
            raise
        finally:
            progress.finish()
            self.ledger.close(started=self.started, work=self.work)
            self.ledger.write(self.context.output)
        if self.summary.status == "interrupted":
            raise Interrupted(
                f"run {self.context.run_id} interrupted: {self.summary.shards_committed} shard(s) "
                f"committed, in-flight shards abandoned; rerun the same command to resume"
            )
        # From the tables just written, so that a library call or a Ray job gets them (and exit 3)
        # as the CLI does.
        written = self.ledger.written
        self.summary.alerts = table_alerts(
            written.get(DRIFT),
            written.get(CALIBRATION),
            self.context.config.monitor,
            score_hint(self.context.input.uri, self.context.config.model),
        )
        return self.summary

    def _publish(self) -> None:
        """With a table format, the run's one commit: everything committed becomes visible at
        once (what an interrupted earlier run committed too); see `tables`."""
        if self.table is None:
            return
        self.manifest.fence()
        publication = self.table.publish(
            self.manifest.records.values(), self.context.run_id, plan_scope(self.plan)
        )
        for name, value in publication.summary.items():
            setattr(self.summary, name, value)
        if publication.added or publication.removed:
            self.progress.message(
                f"published {publication.label}: {publication.added} file(s) "
                f"added, {publication.removed} removed"
            )

    def _run_workers(self, workers: Workers) -> None:
        if self.table is not None:
            self.table.warm_up()
        if not self.summary.setup_seconds:
            self.summary.setup_seconds = time.perf_counter() - self.started
        self.progress.dispatching()
        try:
            self._dispatch(workers)
        finally:
            workers.shutdown()

    def _dispatch(self, workers: Workers) -> None:
        queue: deque[tuple[Shard, int]] = deque((shard, 1) for shard in self.plan.shards)
        in_flight: dict[Any, _Attempt] = {}
        # Commits run on their own thread: their fsyncs (~30 ms per shard on local disk) would
        # otherwise hold up giving the actor, and every other actor back first, its next shard
        # (measured: ~5% of a 1M-row shard's time idle per actor).
        committer = ThreadPoolExecutor(1, thread_name_prefix="commit")
        committing: dict[Future[None], tuple[_Attempt, ShardOutcome]] = {}
        work_started = time.perf_counter()
        try:
            while queue or in_flight or committing:
                self._submit_to_idle(workers, queue, in_flight)
                self._settle_commits(committing, queue, block=False)
                if not in_flight and not (queue and workers.has_starting()):
                    if not committing:
                        break  # done, or dispatch stopped by --max-failed-shards
                    self._settle_commits(committing, queue, block=True)  # may retry a shard
                    continue
                # Replacement actors are waited on too: one that cannot be placed (its node is
                # gone, the rest are full) gets no shard, and fails the run only when no actor is left.
                timeout = _COMMIT_POLL_S if committing else 1.0
                for handle in workers.wait(list(in_flight), timeout):
                    attempt = in_flight.pop(handle)
                    result = workers.fetch(handle, attempt.actor_index)
                    if isinstance(result, Failure):
                        queue.extend(self._failed(attempt, result))
                    else:
                        future = committer.submit(self._commit, attempt.shard, result)
                        committing[future] = (attempt, result)
                workers.poll(busy=len(in_flight))
            if queue:
                self._not_started(len(queue))
        except KeyboardInterrupt:
            self._settle_commits(committing, queue, block=True)  # whole already; a moment each
            for attempt in in_flight.values():
                self.ledger.interrupted(attempt.shard, attempt.attempt, attempt.started_at)
            raise
        finally:
            committer.shutdown(wait=True)  # no commit may run once the lock is released
            self.work = (work_started, time.perf_counter())

    def _submit_to_idle(
        self, workers: Workers, queue: deque[tuple[Shard, int]], in_flight: dict[Any, _Attempt]
    ) -> None:
        while queue and workers.idle and not self._stop_dispatching():
            shard, attempt = queue.popleft()
            index = workers.idle.pop()
            handle = workers.submit(index, shard, attempt, self._has_label(shard))
            in_flight[handle] = _Attempt(shard, attempt, index, utc_now())

    def _commit(self, shard: Shard, outcome: ShardOutcome) -> None:
        """On the commit thread: make the shard's output visible and durable (`Manifest`)."""
        self.manifest.commit_shard(
            shard,
            run_id=self.context.run_id,
            rows=outcome.rows,
            model_sha256=self.context.model.card.sha256,
            options_digest=self.context.options_digest,
            rows_read=outcome.rows_read,
        )

    def _settle_commits(
        self,
        committing: dict[Future[None], tuple[_Attempt, ShardOutcome]],
        queue: deque[tuple[Shard, int]],
        *,
        block: bool,
    ) -> None:
        """Record the commits that ended (all of them if `block`); a refused one is retried."""
        if block:
            futures_wait(committing)
        for future in [future for future in committing if future.done()]:
            attempt, outcome = committing.pop(future)
            try:
                future.result()
            except LockLostError:
                raise  # another run holds OUTPUT now: nothing more may be committed
            except ScorerError as exc:  # the commit refused the shard
                queue.extend(self._failed(attempt, commit_failure(exc)))
                continue
            self.ledger.committed(attempt.shard, attempt.attempt, outcome)
            self.progress.shard_done(shard_id=attempt.shard.shard_id, rows=outcome.rows)

    def _failed(self, attempt: _Attempt, failure: Failure) -> list[tuple[Shard, int]]:
        """Record a failed attempt; what goes back in line (the shard, or a packed shard's
        files but the one that cannot be read)."""
        split = split_poison(attempt.shard, failure)
        if split is not None:
            # A poison file fails alone; the shard's other files are scored in this run.
            poisoned, rest = split
            self._record_failure(
                _Attempt(poisoned, attempt.attempt, 0, attempt.started_at), failure
            )
            return [] if rest is None else [(rest, 1)]
        if self._record_failure(attempt, failure):
            return [(attempt.shard, attempt.attempt + 1)]
        return []

    def _record_failure(self, attempt: _Attempt, failure: Failure) -> bool:
        """Tell the ledger and the progress; True if the shard is tried again."""
        shard = attempt.shard
        retry = will_retry(failure, attempt.attempt, self.context.config.max_attempts)
        self.ledger.failed(
            shard, attempt.attempt, failure.error, attempt.started_at, final=not retry
        )
        self.progress.shard_failed(shard_id=shard.shard_id, error=failure.error, will_retry=retry)
        return retry

    def _stop_dispatching(self) -> bool:
        limit = self.context.config.max_failed_shards
        return limit is not None and self.summary.shards_failed >= limit

    def _not_started(self, shards: int) -> None:
        self.progress.message(
            f"stopped dispatching after {self.summary.shards_failed} failed shard(s) "
            f"(--max-failed-shards {self.context.config.max_failed_shards}): {shards} shard(s) "
            "not started; rerun the same command to score them"
        )

    def _has_label(self, shard: Shard) -> bool:
        label = self.context.label_column
        return bool(label) and all(
            label in self.files[piece.input_id].schema.names for piece in shard.pieces
        )
