"""A shard's stages — read, score, write — and their overlap.

`ShardScorer` is the per-shard work as plain calls a test makes in-process: its rows read
(`reading.ShardReader`), each batch scored by `IntentModel.score_batch` (pure, testable without
Ray), the scores written (`sink.ShardSink`). `stream_shard` overlaps them: while batch *i* is
scored, batch *i+1* is decoded and batch *i-1* is written, each stage on its own thread
(pyarrow and onnxruntime release the GIL, so they really run at once), and it times each stage
(`stats.STAGES`). Being async also lets object-storage latency of one stage hide behind the
others. Memory is bounded by a few batches, not by the file.

Every kind of worker streams its shards through here: a Ray actor (`actor`), the in-process
worker (`local`) and the worker processes (`processes`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from scorer.errors import ShardReadError
from scorer.metrics import CalibrationState
from scorer.model.drift import DriftState
from scorer.pipeline.bulk import BulkReader
from scorer.pipeline.days import DayScores
from scorer.pipeline.memory import peak_rss_bytes
from scorer.pipeline.outcome import Identity, ShardOutcome, StageSeconds
from scorer.pipeline.plan import Shard
from scorer.pipeline.reading import ShardReader, ShardSource, SourcedBatch
from scorer.pipeline.shipping import ActorSettings
from scorer.pipeline.sink import ShardSink
from scorer.pipeline.stats import STAGES, utc_now

if TYPE_CHECKING:
    from scorer.model.runtime import IntentModel, ScoredBatch


class ShardScorer:
    """The per-shard stages without Ray or threads: open, read, score, write.

    Each call runs where it is made; `stream_shard` runs them on a worker's stage threads.
    """

    def __init__(
        self,
        settings: ActorSettings,
        model: IntentModel,
        known_footers: Mapping[str, pq.FileMetaData] | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.reader = ShardReader(
            settings, model.required_columns, model.categorical_string_columns, known_footers
        )

    @property
    def known_footers(self) -> Mapping[str, pq.FileMetaData] | None:
        """Footers already parsed, by digest (`ShardReader.known_footers`)."""
        return self.reader.known_footers

    @known_footers.setter
    def known_footers(self, footers: Mapping[str, pq.FileMetaData] | None) -> None:
        self.reader.known_footers = footers

    @property
    def bulk_reader(self) -> BulkReader:
        """The reader's DuckDB scans (`ShardReader.bulk_reader`)."""
        return self.reader.bulk_reader

    def open(self, shard: Shard, has_label: bool) -> ShardSource:
        """The shard's first file and the columns to read (`ShardReader.open`)."""
        return self.reader.open(shard, has_label)

    def batches(self, source: ShardSource, shard: Shard) -> Iterator[pa.RecordBatch | pa.Table]:
        """The shard's rows in batches of at most `batch_rows` (`ShardReader.batches`)."""
        return self.reader.batches(source, shard)

    def score(
        self, shard: Shard, batch: SourcedBatch | pa.RecordBatch | pa.Table, seconds: StageSeconds
    ) -> ScoredBatch:
        """One batch scored; its encode and infer seconds are added to `seconds`. An input that
        cannot be scored (a column of the wrong type) is named: a `SourcedBatch`'s file of its
        first row, else the shard's first file."""
        settings = self.settings
        if isinstance(batch, SourcedBatch):
            data, path = batch.data, batch.input_path
        else:
            data, path = batch, shard.input_path
        try:
            scored = self.model.score_batch(
                data,
                key_column=settings.key_column,
                keep=settings.keep,
                run_id=settings.run_id,
                drift=True,
            )
        except ShardReadError as exc:
            raise ShardReadError(f"{path}: {exc}", input_path=path) from exc
        # Drift is validation's kin: what the rows look like against the training data.
        seconds["encode"] += scored.encode_seconds + scored.drift_seconds
        seconds["infer"] += scored.infer_seconds
        return scored

    def calibration(
        self, batch: pa.RecordBatch | pa.Table, scored: ScoredBatch
    ) -> CalibrationState:
        """The batch's calibration state against its label column."""
        labels = batch.column(self.settings.label_column)
        return CalibrationState.from_arrays(labels, scored.raw, scored.calibrated)

    def sink(self, shard: Shard) -> ShardSink:
        """Where the shard's scores are written, opened with its first batch."""
        settings = self.settings
        return ShardSink(settings.layout, shard, settings.run_id, settings.compression)


@dataclass(frozen=True)
class StageThreads:
    """One thread per stage: batches stay in order within a stage, stages overlap."""

    reader: ThreadPoolExecutor
    scorer: ThreadPoolExecutor
    writer: ThreadPoolExecutor

    @classmethod
    def start(cls) -> StageThreads:
        return cls(
            ThreadPoolExecutor(1, thread_name_prefix="read"),
            ThreadPoolExecutor(1, thread_name_prefix="score"),
            ThreadPoolExecutor(1, thread_name_prefix="write"),
        )

    def shutdown(self) -> None:
        for executor in (self.reader, self.scorer, self.writer):
            executor.shutdown(wait=True)


async def stream_queued(
    scorer: ShardScorer,
    shard: Shard,
    has_label: bool,
    threads: StageThreads,
    identity: Identity,
    turn: asyncio.Lock,
) -> ShardOutcome:
    """A shard given to a worker that may hold two (`pool.PoolSpec.shards_per_actor`): on
    object storage it is opened and its first row groups fetched at once, while the shard
    before it is scored; its stages wait for `turn`, so one shard is scored at a time and
    memory holds one shard's batches and the next one's read-ahead."""
    opening = scorer.reader.open_ahead(shard, has_label) if scorer.reader.remote else None
    try:
        return await stream_shard(scorer, shard, has_label, threads, identity, opening, turn)
    finally:
        if opening is not None:
            opening.cancel()


async def stream_shard(
    scorer: ShardScorer,
    shard: Shard,
    has_label: bool,
    threads: StageThreads,
    identity: Identity,
    opening: Future[ShardSource] | None = None,
    turn: asyncio.Lock | None = None,
) -> ShardOutcome:
    """Score one shard into its sink, the three stages overlapped on `threads`.

    `opening`: the shard opened ahead (`ShardScorer.open_ahead`). `turn`: held from the first
    read to the last write, so that the next shard's stages start while this one's file is
    still being finished and uploaded.
    """
    held = False

    def let_next_in() -> None:
        nonlocal held
        if turn is not None and held:
            held = False
            turn.release()

    if turn is not None:
        await turn.acquire()
        held = True
    try:
        return await _stream(scorer, shard, has_label, threads, identity, opening, let_next_in)
    finally:
        let_next_in()


async def _stream(
    scorer: ShardScorer,
    shard: Shard,
    has_label: bool,
    threads: StageThreads,
    identity: Identity,
    opening: Future[ShardSource] | None,
    let_next_in: Callable[[], None],
) -> ShardOutcome:
    loop = asyncio.get_running_loop()
    started, clock = utc_now(), time.perf_counter()
    # The process's CPU time, all threads: an actor scores one shard at a time, so this is
    # the shard's. Against the wall time it tells how many cores the overlapped stages used.
    cpu_started = time.process_time()
    seconds: StageSeconds = dict.fromkeys(STAGES, 0.0)
    outcome = ShardOutcome(shard_id=shard.shard_id, **identity)
    if opening is not None:
        source = await asyncio.wrap_future(opening)
    else:
        source = await loop.run_in_executor(threads.reader, scorer.open, shard, has_label)
    batches = scorer.reader.sourced_batches(source, shard)
    shard_days = scorer.reader.shard_days(shard)
    if shard_days is not None:  # its days are a column: rows of the selected days, day by day
        selected = shard_days.select((b.data, b.input_path) for b in batches)
        batches = (SourcedBatch(data, where) for data, where in selected)
        outcome.calibration_days = {} if has_label else None
        outcome.drift_days = {}
    calibration = CalibrationState() if has_label else None
    drift: DriftState | None = None

    def read_next() -> SourcedBatch | None:
        t = time.perf_counter()
        batch = next(batches, None)
        seconds["read"] += time.perf_counter() - t
        return batch

    def score(batch: SourcedBatch) -> tuple[ScoredBatch, CalibrationState | None]:
        # The batch's calibration state is built here, on the scoring thread: ~3 ms per
        # 64k rows that would otherwise stall the event loop and the overlap of the stages.
        scored = scorer.score(shard, batch, seconds)
        return scored, scorer.calibration(batch.data, scored) if has_label else None

    def score_days(batch: SourcedBatch) -> DayScores:
        assert shard_days is not None
        by_day = shard_days.score(
            batch.data,
            batch.input_path,
            lambda part: scorer.score(shard, SourcedBatch(part, batch.input_path), seconds),
        )
        for day, part, scored in by_day.days:
            if outcome.calibration_days is not None:
                state = scorer.calibration(part, scored)
                known = outcome.calibration_days.get(day)
                outcome.calibration_days[day] = state if known is None else known.merge(state)
            if scored.drift is not None and outcome.drift_days is not None:
                known_drift = outcome.drift_days.get(day)
                outcome.drift_days[day] = (
                    scored.drift if known_drift is None else known_drift.merge(scored.drift)
                )
        return by_day

    sink = scorer.sink(shard)
    try:
        pending_read = loop.run_in_executor(threads.reader, read_next)
        pending_write = None
        while (batch := await pending_read) is not None:
            pending_read = loop.run_in_executor(threads.reader, read_next)
            if shard_days is not None:
                by_day = await loop.run_in_executor(threads.scorer, score_days, batch)
                outcome.rows += by_day.table.num_rows
                outcome.rows_invalid += by_day.rows_invalid
                outcome.rows_unseen_category += by_day.rows_unseen
                if pending_write is not None:
                    await pending_write
                pending_write = loop.run_in_executor(
                    threads.writer, sink.write, by_day.table, seconds
                )
                continue
            scored, batch_calibration = await loop.run_in_executor(threads.scorer, score, batch)
            outcome.rows += scored.table.num_rows
            outcome.rows_invalid += scored.rows_invalid
            outcome.rows_unseen_category += scored.rows_unseen
            if calibration is not None and batch_calibration is not None:
                calibration = calibration.merge(batch_calibration)
            if scored.drift is not None:
                drift = scored.drift if drift is None else drift.merge(scored.drift)
            if pending_write is not None:
                await pending_write
            pending_write = loop.run_in_executor(threads.writer, sink.write, scored.table, seconds)
        if pending_write is not None:
            await pending_write
        if not sink.opened:  # a shard of empty row groups still gets its (empty) file
            nothing = scorer.reader.empty(source)
            empty = scorer.score(shard, nothing, seconds).table
            if shard_days is not None:
                empty = shard_days.score(
                    nothing, shard.input_path, lambda _: scorer.score(shard, nothing, seconds)
                ).table
            await loop.run_in_executor(threads.writer, sink.write, empty, seconds)
        let_next_in()  # the next shard reads and scores while this file is uploaded
        outcome.output_bytes = await loop.run_in_executor(threads.writer, sink.close)
    except BaseException:
        await loop.run_in_executor(threads.writer, sink.abort)
        raise
    outcome.rows_ok = outcome.rows - outcome.rows_invalid
    outcome.calibration = calibration
    outcome.drift = drift
    if shard_days is not None:
        outcome.rows_read, outcome.rows_without_day = (
            shard_days.rows_read,
            shard_days.rows_without_day,
        )
    outcome.seconds = dict(
        seconds, total=time.perf_counter() - clock, cpu=time.process_time() - cpu_started
    )
    outcome.started_at, outcome.ended_at = started, utc_now()
    outcome.peak_rss_bytes = peak_rss_bytes()
    if source.counts is not None:
        outcome.requests, outcome.bytes_read = source.counts.requests, source.counts.bytes_read
    return outcome
