"""`scorer bench`: how fast the scorer goes, where the time goes, and how it scales.

One run measures, on the same data and alternating the contestants so that a noisy machine hurts
them alike, several repetitions each of:

- ``floor``: the I/O floor. N plain processes (multiprocessing, no Ray, no model) read the
  columns the scorer reads and write the columns it writes, with the same Parquet settings.
  Nothing that reads and writes these files can go faster; the scorer is judged against it.
- ``scorer``: `scorer.score(...)` with N actors, for each N asked (1, 2, ... up to the CPUs).
  Its own private local Ray each time, so setup (Ray + actors ready) is measured every time and
  reported apart from the work window (first shard dispatched to last shard done).
- ``scorer_joined``: the scorer with the largest N on a Ray started before the clock starts,
  the same one `ray_data` then runs on: its wall time is the whole job (plan, actors ready,
  work, stats and commits) without the start of Ray, to compare with `ray_data`'s.
- ``ray_data``: what a user would otherwise write, `ray.data.read_parquet → map_batches(
  load_model().score) → write_parquet` with the largest N actors and the same batch size, on
  that pre-started Ray ("scorer ×" in the table: scorer_joined's wall-time speed over this
  one's). Its actors get fractional CPUs: on a 2-CPU local Ray,
  `map_batches(concurrency=2)` with the default one CPU per actor hangs forever (the actors hold
  every CPU and the read tasks never get one). Needs the `bench` extra (`ray[data]`); skipped
  with a message if it is missing.
- ``model:*``: the model alone, in-process on one thread: `load_model().score(table)` on a
  1M-row table already in memory, onnxruntime inference on the encoded batch, and single-row
  latency (one row per call, p50 and p99), the online number.

`run_bench` returns every measurement as an Arrow table (also written as Parquet) and draws the
plots; `render` turns a result into rich tables. Nothing here prints: callers pass `on_message`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scorer.config import DEFAULT_BATCH_ROWS
from scorer.errors import ConfigError
from scorer.pipeline.cluster import ray_session
from scorer.pipeline.stats import STAGES

DEFAULT_SESSIONS = 4_000_000
DEFAULT_REPS = 3
MODEL_ROWS = 1_000_000  # the in-process table of the model contestants
LATENCY_CALLS = 5_000
RUN_ID = "bench"
# The scorer on a Ray that is already running, the one Ray Data runs on: its wall time is the
# whole job (plan, actors, work, stats) without starting Ray, the fair comparison with Ray Data.
JOINED = "scorer_joined"
# The scorer as a user types it on one machine, no --actors: the in-process worker and its
# worker processes (`pipeline.processes`); its actor count is the workers it had.
DEFAULT_PATH = "scorer_default"

MEASUREMENTS_SCHEMA = pa.schema(
    [
        ("contestant", pa.string()),  # floor, scorer, ray_data, model:score, model:infer, ...
        ("actors", pa.int32()),  # processes / actors / Ray Data actors; 1 for the model
        ("repetition", pa.int32()),
        ("rows", pa.int64()),
        ("seconds", pa.float64()),  # wall, setup included
        ("setup_seconds", pa.float64()),  # processes, Ray or actors ready
        ("work_seconds", pa.float64()),  # the work window
        ("rows_per_second", pa.float64()),  # over the wall time
        ("work_rows_per_second", pa.float64()),  # over the work window: compare these
        *[(f"{stage}_seconds", pa.float64()) for stage in STAGES],  # summed over workers
        ("cpu_seconds", pa.float64()),  # workers' CPU time, summed: / work_seconds = cores used
        ("peak_rss_mb", pa.float64()),  # the largest worker's peak resident memory
        ("latency_p50_us", pa.float64()),  # single-row contestants only
        ("latency_p99_us", pa.float64()),
    ]
)


@dataclass(frozen=True)
class BenchResult:
    """Every measurement of one bench run, and where its files are."""

    measurements: pa.Table  # MEASUREMENTS_SCHEMA
    data: str
    out_dir: Path
    cpus: int
    files: dict[str, Path]  # measurements.parquet and the plots
    skipped: tuple[str, ...] = ()  # contestants left out, with the reason

    def medians(self) -> list[dict]:
        """One row per (contestant, actors): medians over repetitions, and same-run ratios."""
        rows: dict[tuple[str, int], list[dict]] = {}
        for row in self.measurements.to_pylist():
            rows.setdefault((row["contestant"], row["actors"]), []).append(row)
        summary: dict[tuple[str, int], dict[str, Any]] = {}
        for key, runs in rows.items():
            summary[key] = {"contestant": key[0], "actors": key[1], "runs": len(runs)}
            for name in MEASUREMENTS_SCHEMA.names[3:]:
                values = [r[name] for r in runs if r[name] is not None]
                summary[key][name] = statistics.median(values) if values else None
        one = summary.get(("scorer", 1), {}).get("work_rows_per_second")
        for (contestant, actors), row in summary.items():
            rate = row["work_rows_per_second"]
            # Cores busy in the work window: a scorer actor overlaps three stages on threads.
            cpu, work = row["cpu_seconds"], row["work_seconds"]
            row["cores"] = (
                cpu / work if cpu and work and not contestant.startswith("model") else None
            )
            floor = summary.get(("floor", actors), {}).get("work_rows_per_second")
            compared = contestant in ("scorer", JOINED, DEFAULT_PATH, "ray_data")
            row["vs_floor"] = rate / floor if compared and rate and floor else None
            row["scaling_efficiency"] = (
                rate / (actors * one) if contestant == "scorer" and rate and one else None
            )
            scorer = summary.get((JOINED, actors), {})
            row["scorer_speedup"] = (
                scorer["rows_per_second"] / row["rows_per_second"]
                if contestant == "ray_data" and scorer.get("rows_per_second")
                else None
            )
        return list(summary.values())


def run_bench(
    out_dir: str | os.PathLike,
    *,
    data: str | None = None,
    sessions: int = DEFAULT_SESSIONS,
    files: int | None = None,
    reps: int = DEFAULT_REPS,
    actors: Sequence[int] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    address: str | None = None,
    seed: int = 0,
    model_dir: str | Path | None = None,
    on_message: Callable[[str], None] = lambda text: None,
) -> BenchResult:
    """Run the benchmark into `out_dir` (data, measurements.parquet, PNGs) and return it.

    `data`: an existing session data set to use; default: generate `sessions` rows in `files`
    files (default 4 per actor of the largest count, at least 8) under `out_dir`, or reuse that
    set from an earlier run. `actors`: the counts to measure (default 1, 2, ... CPUs).
    `address`: a Ray cluster to run the scorer and Ray Data on (the floor runs here).
    `model_dir`: the model every contestant scores with (default: the bundled one).
    """
    out_dir = Path(out_dir)
    cpus = os.cpu_count() or 1
    actors = sorted(set(actors or range(1, cpus + 1)))
    if actors[0] < 1 or reps < 1 or sessions < 1 or batch_rows < 1:
        raise ConfigError("actors, reps, sessions and batch_rows must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = data or bench_data(out_dir, sessions, files or max(8, 4 * actors[-1]), seed, on_message)
    plan = _Plan.of(data, batch_rows, model_dir)
    work = out_dir / "work"
    skipped = []
    floor_actors = [n for n in actors if n <= cpus]
    if floor_actors != actors:
        skipped.append(f"floor above {cpus} processes: it runs on this machine only")

    rows = []
    for repetition in range(reps):
        # The model alone first: right after a Ray contestant, Ray's processes are still exiting
        # on the same cores (measured in-process score: median 7.6M rows/s after Ray Data,
        # 7.8-8.5M in a fresh process on the same data).
        for row in _measure_model(plan):
            rows.append(row | {"repetition": repetition})
            on_message(_line(rows[-1]))
        for n in actors:
            if n in floor_actors:
                rows.append(
                    _measure_floor(plan, n, work / f"floor-{n}") | _tag("floor", n, repetition)
                )
                on_message(_line(rows[-1]))
            rows.append(
                _measure_scorer(plan, n, work / f"scorer-{n}", address)
                | _tag("scorer", n, repetition)
            )
            on_message(_line(rows[-1]))
        if address is None:
            measured = _measure_scorer(plan, None, work / DEFAULT_PATH, None)
            workers = measured.pop("workers")
            rows.append(measured | _tag(DEFAULT_PATH, workers, repetition))
            on_message(_line(rows[-1]))
        # The whole-job comparison with Ray Data runs both on one Ray started beforehand (or
        # the --address cluster): neither pays for starting Ray, each for its own actors.
        n = actors[-1]
        with ray_session(address):
            rows.append(
                _measure_scorer(plan, n, work / f"{JOINED}-{n}", address)
                | _tag(JOINED, n, repetition)
            )
            on_message(_line(rows[-1]))
            if not any(reason.startswith("ray_data") for reason in skipped):
                try:
                    measured = _measure_ray_data(plan, n, work / f"ray_data-{n}", address)
                except _RayDataMissing as exc:
                    skipped.append(f"ray_data: {exc}")
                    on_message(f"skipping ray_data: {exc}")
                else:
                    rows.append(measured | _tag("ray_data", n, repetition))
                    on_message(_line(rows[-1]))
    shutil.rmtree(work, ignore_errors=True)

    table = pa.Table.from_pylist(
        [{name: row.get(name) for name in MEASUREMENTS_SCHEMA.names} for row in rows],
        MEASUREMENTS_SCHEMA,
    )
    written = {"measurements": out_dir / "measurements.parquet"}
    pq.write_table(table, written["measurements"])
    result = BenchResult(table, data, out_dir, cpus, written, tuple(skipped))
    written.update(write_plots(result, out_dir))
    return result


# -- the data and what every contestant reads -------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """The files, and the columns read and written, shared by every contestant."""

    data: str
    paths: tuple[str, ...]
    rows: int
    columns: tuple[str, ...]  # what the scorer reads: the model's inputs, key and label
    dictionary_columns: tuple[str, ...]
    key_column: str
    batch_rows: int
    model_dir: Path

    @classmethod
    def of(cls, data: str, batch_rows: int, model_dir: str | Path | None) -> _Plan:
        from scorer.model.runtime import load_model

        model = load_model(model_dir)
        card = model.card
        paths = tuple(sorted(str(p) for p in Path(data).rglob("*.parquet")))
        if not paths:
            raise ConfigError(f"{data}: no *.parquet files to benchmark on")
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        columns = [*model.required_columns, card.key_column]
        if card.label_column and card.label_column in pq.read_schema(paths[0]).names:
            columns.append(card.label_column)  # the scorer reads it for calibration metrics
        return cls(
            data,
            paths,
            rows,
            tuple(dict.fromkeys(columns)),
            tuple(model.categorical_string_columns),
            card.key_column,
            batch_rows,
            model.model_dir,
        )


def bench_data(
    out_dir: Path, sessions: int, files: int, seed: int, on_message: Callable[[str], None]
) -> str:
    """`sessions` generated sessions in `files` files under `out_dir`, reused when there."""
    from scorer.jobs.generate import generate

    path = out_dir / f"data-{sessions}-{files}-seed{seed}"
    if any(path.rglob("*.parquet")):
        on_message(f"reusing {path}")
        return str(path)
    shutil.rmtree(path, ignore_errors=True)  # a half-written set from an interrupted run
    summary = generate(path, sessions=sessions, files=files, days=min(2, files), seed=seed)
    on_message(
        f"generated {sessions:,} sessions in {files} files in {summary.seconds:.1f} s: {path}"
    )
    return str(path)


def _tag(contestant: str, actors: int, repetition: int) -> dict:
    return {"contestant": contestant, "actors": actors, "repetition": repetition}


def _line(row: dict) -> str:
    text = f"{row['contestant']:<13} x{row['actors']:<3} rep {row['repetition']}: "
    if row.get("latency_p50_us") is not None:
        return text + f"p50 {row['latency_p50_us']:.0f} us, p99 {row['latency_p99_us']:.0f} us"
    return text + (
        f"{row['work_rows_per_second'] / 1e6:.2f}M rows/s in its work window, "
        f"{row['seconds']:.1f} s wall ({row['setup_seconds']:.1f} s setup)"
    )


def _rates(rows: int, seconds: float, setup: float, work: float) -> dict:
    return {
        "rows": rows,
        "seconds": seconds,
        "setup_seconds": setup,
        "work_seconds": work,
        "rows_per_second": rows / seconds,
        "work_rows_per_second": rows / work,
    }


# -- the I/O floor ----------------------------------------------------------------------------


def _measure_floor(plan: _Plan, processes: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    # spawn, not fork: this process may hold Ray's threads.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_floor_warm, range(processes), chunksize=1)
        ready = time.perf_counter()
        tasks = [(path, str(out / f"{i:05d}.parquet"), plan) for i, path in enumerate(plan.paths)]
        results = list(pool.imap_unordered(_floor_file, tasks, chunksize=1))
        ended = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    row = _rates(sum(r["rows"] for r in results), ended - started, ready - started, ended - ready)
    row |= {
        f"{stage}_seconds": sum(r[stage] for r in results) for stage in ("read", "write", "cpu")
    }
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    return row


def _floor_warm(_: int) -> None:
    time.sleep(0.2)  # every process takes one, so all of them are up before the clock starts


def _floor_file(task: tuple[str, str, _Plan]) -> dict:
    """Read the scorer's columns of one file and write its output columns: no model."""
    from scorer.pipeline.sink import writer_options

    path, out, plan = task
    seconds = {"read": 0.0, "write": 0.0}
    cpu_started = time.process_time()
    reader = pq.ParquetFile(path, read_dictionary=list(plan.dictionary_columns))
    batches = reader.iter_batches(
        batch_size=plan.batch_rows, columns=list(plan.columns), use_threads=False
    )
    constant = pa.array(["ok"], pa.string())
    writer, rows = None, 0
    while True:
        clock = time.perf_counter()
        batch = next(batches, None)
        seconds["read"] += time.perf_counter() - clock
        if batch is None:
            break
        clock = time.perf_counter()
        zeros = pa.array(np.zeros(batch.num_rows, np.int32))
        constant_column = pa.DictionaryArray.from_arrays(zeros, constant)
        # Two float32 columns of real values, so they compress like scores do.
        table = pa.table(
            {
                plan.key_column: batch.column(plan.key_column),
                "intent_raw": batch.column("exit_rate").cast(pa.float32()),
                "intent_calibrated": batch.column("bounce_rate").cast(pa.float32()),
                "status": constant_column,
                "model_version": constant_column,
                "run_id": constant_column,
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(
                out + ".tmp", table.schema, write_statistics=True, **writer_options(table.schema)
            )
        writer.write_table(table)
        rows += batch.num_rows
        seconds["write"] += time.perf_counter() - clock
    clock = time.perf_counter()
    if writer is None:
        raise ConfigError(f"{path}: no rows to benchmark on")
    writer.close()
    os.replace(out + ".tmp", out)
    seconds["write"] += time.perf_counter() - clock
    seconds["cpu"] = time.process_time() - cpu_started
    return seconds | {"rows": rows, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    from scorer.pipeline.memory import peak_rss_bytes

    return peak_rss_bytes() / 2**20


# -- the scorer -------------------------------------------------------------------------------


def _measure_scorer(plan: _Plan, actors: int | None, out: Path, address: str | None) -> dict:
    """`scorer score` on the bench data; with `actors` None, the default path (no Ray here)."""
    from scorer.pipeline.entry import score

    shutil.rmtree(out, ignore_errors=True)
    summary = score(
        plan.data,
        str(out),
        actors=actors,
        model=str(plan.model_dir),
        batch_rows=plan.batch_rows,
        overwrite=True,
        address=address,
    )
    if summary.exit_code:
        raise ConfigError(f"the scorer failed on the bench data: {summary.failures[:1]}")
    stats = pq.read_table(out / "stats" / "shards" / f"run_id={summary.run_id}")
    peak = max(v for v in stats.column("peak_rss_bytes").to_pylist() if v is not None)
    shutil.rmtree(out, ignore_errors=True)
    row = _rates(summary.rows, summary.wall_seconds, summary.setup_seconds, summary.work_seconds)
    row |= {f"{stage}_seconds": summary.stage_seconds.get(stage) for stage in STAGES}
    row["cpu_seconds"] = summary.cpu_seconds
    row["peak_rss_mb"] = peak / 2**20
    if actors is None:
        row["workers"] = summary.actors
    return row


# -- Ray Data ---------------------------------------------------------------------------------


class _RayDataMissing(ConfigError):
    """ray[data] is not installed (the `bench` extra)."""


class _RayDataScore:
    """The batch function a user would write: the scorer's model, one per Ray Data actor."""

    def __init__(self, model_dir: str, key_column: str) -> None:
        from scorer.model.runtime import load_model

        self.model = load_model(model_dir)
        self.key_column = key_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.model.score(batch, key_column=self.key_column, run_id=RUN_ID)


def _measure_ray_data(plan: _Plan, actors: int, out: Path, address: str | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    # Ray is imported only once ray_session has set its environment (scorer.pipeline.cluster).
    with ray_session(address) as cluster:
        try:
            import ray.data
        except ImportError as exc:
            raise _RayDataMissing(
                f"ray[data] is not installed ({exc}): pip install -e '.[bench]'"
            ) from exc

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ready = time.perf_counter()
        # Half the CPUs for the actors, the rest for read and write tasks: with a whole CPU per
        # actor and as many actors as CPUs the read tasks never get one and the job hangs.
        per_actor = min(1.0, cluster.cpus / (2 * actors))
        dataset = ray.data.read_parquet(list(plan.paths), columns=list(plan.columns))
        dataset = dataset.map_batches(
            _RayDataScore,
            fn_constructor_args=(str(plan.model_dir), plan.key_column),
            batch_size=plan.batch_rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=per_actor,
        )
        dataset.write_parquet(str(out))
        ended = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    # Ray Data's actors start inside its work window: that is part of the job it does.
    return _rates(plan.rows, ended - started, ready - started, ended - ready)


# -- the model alone --------------------------------------------------------------------------


def _measure_model(plan: _Plan, repeats: int = 7) -> list[dict]:
    """In-process, one thread: score(table) and inference on 1M rows; single-row latency."""
    from scorer.model.runtime import load_model

    model = load_model(plan.model_dir)
    table = _first_rows(plan, MODEL_ROWS)
    rows = table.num_rows
    model.score(table, key_column=plan.key_column, run_id=RUN_ID)  # warm: buffers, caches
    score_seconds = _median_seconds(
        lambda: model.score(table, key_column=plan.key_column, run_id=RUN_ID), repeats
    )
    feed = model.graph_feed(table)
    names = [o.name for o in model.session.get_outputs()]
    infer_seconds = _median_seconds(lambda: model.session.run(names, feed), repeats)

    one_row = table.slice(0, 1)
    one_feed = model.graph_feed(one_row)
    latency = {
        "model:latency_onnx": lambda: model.session.run(names, one_feed),
        "model:latency_score": lambda: model.score(one_row, key_column=plan.key_column),
    }
    measured = [
        _model_row("model:score", rows, score_seconds),
        _model_row("model:infer", rows, infer_seconds),
    ]
    for name, call in latency.items():
        for _ in range(100):
            call()
        times = np.empty(LATENCY_CALLS)
        for i in range(LATENCY_CALLS):
            clock = time.perf_counter()
            call()
            times[i] = time.perf_counter() - clock
        p50, p99 = np.percentile(times, [50, 99]) * 1e6
        row = _model_row(name, LATENCY_CALLS, float(times.sum()))
        measured.append(row | {"latency_p50_us": p50, "latency_p99_us": p99})
    return measured


def _model_row(name: str, rows: int, seconds: float) -> dict:
    return _tag(name, 1, 0) | _rates(rows, seconds, 0.0, seconds) | {"peak_rss_mb": _peak_rss_mb()}


def _first_rows(plan: _Plan, rows: int) -> pa.Table:
    """Up to `rows` rows read as the actors read them (dictionary strings), in one chunk."""
    tables, have = [], 0
    for path in plan.paths:
        table = pq.read_table(
            path, columns=list(plan.columns), read_dictionary=list(plan.dictionary_columns)
        )
        tables.append(table.slice(0, rows - have))
        have += tables[-1].num_rows
        if have >= rows:
            break
    return pa.concat_tables(tables).combine_chunks()


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        clock = time.perf_counter()
        call()
        times.append(time.perf_counter() - clock)
    return statistics.median(times)


# -- presenting -------------------------------------------------------------------------------


def render(result: BenchResult):
    """The medians as a rich table (the CLI prints it)."""
    from rich.table import Table

    table = Table(title=f"scorer bench: {result.cpus} CPUs, data {result.data}, medians")
    table.add_column("contestant", no_wrap=True)
    for heading in (
        "actors",
        "runs",
        "rows",
        "wall s",
        "setup s",
        "work rows/s",
        "cores",
        "× floor",
        "scaling",
        "scorer ×",
        "RSS MB",
        "p50/p99 µs",
    ):
        table.add_column(heading, justify="right")
    for row in result.medians():
        latency = row["latency_p50_us"] is not None
        table.add_row(
            row["contestant"],
            str(row["actors"]),
            str(row["runs"]),
            f"{row['rows']:,.0f}",
            "" if latency else f"{row['seconds']:.2f}",
            f"{row['setup_seconds']:.2f}" if row["setup_seconds"] else "",
            f"{row['work_rows_per_second'] / 1e6:.2f}M" if not latency else "",
            _ratio(row["cores"]),
            _ratio(row["vs_floor"]) if row["contestant"] != "floor" else "",
            _ratio(row["scaling_efficiency"]),
            _ratio(row["scorer_speedup"]),
            f"{row['peak_rss_mb']:.0f}" if row["peak_rss_mb"] else "",
            f"{row['latency_p50_us']:.0f}/{row['latency_p99_us']:.0f}" if latency else "",
        )
    return table


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def write_plots(result: BenchResult, out_dir: Path) -> dict[str, Path]:
    """scaling.png (rows/s against actors) and stages.png (time per stage per contestant)."""
    medians = result.medians()
    return {
        "scaling": _plot_scaling(medians, out_dir / "scaling.png"),
        "stages": _plot_stages(medians, out_dir / "stages.png"),
    }


def _series(medians: list[dict], contestant: str) -> tuple[list[int], list[float]]:
    rows = sorted(
        (r["actors"], r["work_rows_per_second"] / 1e6)
        for r in medians
        if r["contestant"] == contestant
    )
    return [a for a, _ in rows], [v for _, v in rows]


def _plot_scaling(medians: list[dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=100)
    axes = figure.add_subplot()
    actors, scorer = _series(medians, "scorer")
    if actors:
        one = dict(zip(actors, scorer)).get(1)
        if one:
            axes.plot(
                actors,
                [one * n for n in actors],
                "--",
                color="grey",
                label="ideal: linear from 1 actor",
            )
        axes.plot(actors, scorer, "o-", color="tab:blue", lw=2, label="scorer (work window)")
    floor_actors, floor = _series(medians, "floor")
    if floor_actors:
        axes.plot(
            floor_actors, floor, "s-", color="black", label="I/O floor (read + write, no model)"
        )
    ray_actors, ray_data = _series(medians, "ray_data")
    if ray_actors:
        axes.plot(ray_actors, ray_data, "D", color="tab:red", ms=8, label="Ray Data map_batches")
    ticks = sorted(set(actors + floor_actors + ray_actors))
    axes.set_xticks(ticks)
    axes.set_xlabel("actors (processes for the floor)")
    axes.set_ylabel("million rows / s")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.set_title("Throughput against actors (medians)")
    axes.legend(loc="upper left", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _plot_stages(medians: list[dict], path: Path) -> Path:
    """Worker-seconds per million rows, split by stage, at the largest actor count measured.
    Ray Data is left out: it does not say where its time goes (the table has its total)."""
    from matplotlib.figure import Figure

    colours = {
        "read": "tab:green",
        "encode": "tab:orange",
        "infer": "tab:purple",
        "write": "tab:blue",
    }
    bars = []
    for contestant in ("floor", "scorer"):
        rows = [r for r in medians if r["contestant"] == contestant]
        if not rows:
            continue
        row = max(rows, key=lambda r: r["actors"])
        per_million = 1e6 / row["rows"]
        parts = {stage: (row[f"{stage}_seconds"] or 0.0) * per_million for stage in STAGES}
        bars.append((f"{contestant}\n×{row['actors']}", parts))
    figure = Figure(figsize=(7, 3.2), dpi=100)
    axes = figure.add_subplot()
    labelled = set()
    for y, (_label, parts) in enumerate(bars):
        left = 0.0
        for stage, seconds in parts.items():
            if not seconds:
                continue
            axes.barh(
                y,
                seconds,
                left=left,
                color=colours[stage],
                label=None if stage in labelled else stage,
            )
            axes.text(
                left + seconds / 2,
                y,
                f"{seconds:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white",
            )
            labelled.add(stage)
            left += seconds
    axes.set_yticks(range(len(bars)), [label for label, _ in bars])
    axes.invert_yaxis()
    axes.set_xlabel("worker-seconds per million rows (summed over actors)")
    axes.set_title("Where the time goes (medians, largest actor count)")
    axes.grid(axis="x", alpha=0.3)
    handles = dict(zip(*reversed(axes.get_legend_handles_labels())))
    stages = [stage for stage in STAGES if stage in handles]
    axes.legend(
        [handles[s] for s in stages],
        stages,
        loc="upper center",
        fontsize=9,
        ncol=len(stages),
        bbox_to_anchor=(0.5, -0.3),
        frameon=False,
    )
    figure.tight_layout()
    figure.savefig(path)
    return path


__all__ = ["MEASUREMENTS_SCHEMA", "BenchResult", "render", "run_bench", "write_plots"]
