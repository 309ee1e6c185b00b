"""`scorer bench`: throughput against the I/O floor and Ray Data (`scorer.jobs.bench`), or
instead whole processes against their peers (`--whole-job`, `scorer.jobs.whole_job`) or object
storage at real latency (`--s3-latency`, `scorer.jobs.latency`).
"""

from __future__ import annotations

from pathlib import Path

import click

from scorer.cli.exits import handle_errors
from scorer.cli.render import wide_console
from scorer.config import DEFAULT_BATCH_ROWS
from scorer.jobs.bench import DEFAULT_REPS, DEFAULT_SESSIONS
from scorer.model.card import BUNDLED_MODEL


@click.command("bench")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench"),
    show_default=True,
    help="Folder for the data set, measurements.parquet and the PNG plots.",
)
@click.option(
    "--data", metavar="DIR", help="Benchmark on this session data set instead of generating one."
)
@click.option(
    "--sessions",
    type=click.IntRange(min=1),
    default=DEFAULT_SESSIONS,
    show_default=True,
    help="Rows to generate (reused from --out if already there).",
)
@click.option(
    "--files",
    type=click.IntRange(min=1),
    help="Files to generate. Default: 4 per actor of the largest count, at least 8.",
)
@click.option(
    "--reps",
    type=click.IntRange(min=1),
    default=DEFAULT_REPS,
    show_default=True,
    help="Repetitions of each contestant, alternated.",
)
@click.option(
    "--actors", metavar="N,N,...", help="Actor counts to measure. Default: 1, 2, ... CPUs."
)
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_ROWS,
    help=f"Rows per batch, for every contestant (default {DEFAULT_BATCH_ROWS}).",
)
@click.option("--address", metavar="ADDR", help="Run the scorer and Ray Data on this Ray cluster.")
@click.option(
    "--model",
    "model_dir",
    metavar="DIR",
    help=f"Model every contestant scores with (an imported one too). Default: {BUNDLED_MODEL}.",
)
@click.option(
    "--s3-latency",
    metavar="MS,MS,...",
    help="Instead: s3 → s3 through a latency proxy holding each request MS ms (e.g. 0,20,50; "
    "the first is the baseline), --actors N (default 2), against moto's S3 server on loopback "
    "(pip install 'moto[server]').",
)
@click.option(
    "--whole-job",
    is_flag=True,
    help="Instead: time whole processes, `scorer score DATA OUT` as a user types it against the "
    "same model in Polars and in DuckDB (scripts generated from the card), outputs compared.",
)
@handle_errors
def bench_command(
    out_dir: Path,
    data: str | None,
    sessions: int,
    files: int | None,
    reps: int,
    actors: str | None,
    batch_rows: int,
    address: str | None,
    model_dir: str | None,
    s3_latency: str | None,
    whole_job: bool,
) -> None:
    """Measure throughput against the I/O floor and Ray Data, and how it scales with actors.

    In one run, alternating the contestants, REPS repetitions each of: the I/O floor (plain
    processes reading the scorer's columns and writing its output columns with pyarrow, no
    model), `scorer score` with each actor count (setup reported apart from the work window)
    and as typed with no --actors (scorer_default: the in-process worker and its worker
    processes; its actor count is the workers it had), Ray Data read_parquet →
    map_batches(model.score) → write_parquet with fractional CPUs per actor (needs pip install
    -e '.[bench]'; skipped otherwise), and the model alone in-process
    (1M-row batch, and single-row latency p50/p99). Prints medians with ratios to the floor;
    writes OUT/measurements.parquet, OUT/scaling.png and OUT/stages.png. The default takes a few
    minutes on 2 cores.

    With --whole-job: REPS alternating runs of three whole processes on the same data, timed
    from start to exit: `scorer score DATA OUT --json` with no other flag, and the model in a
    Polars and in a DuckDB script with every weight inlined from the card (written to
    OUT/peers/). Prints medians, each wall against the faster peer's, the scorer's work window
    and first commit, and the largest score difference from the scorer's on the same keys;
    writes OUT/whole-job.parquet.

    With --s3-latency MS,MS,...: object storage at real latency. Generates the data on moto's
    S3 server on loopback, then REPS alternating runs of `scorer score s3://… s3://… --actors N`
    (default 2) through a proxy holding each HTTP request MS ms. Prints medians of the
    work-window rows/s and their ratio to the first MS, requests and MB read per shard (the
    shard stats' requests and bytes_read), requests through the proxy, the actors' peak RSS;
    writes OUT/s3-latency.parquet.

    \b
    Example:
      scorer bench --out /tmp/bench
      scorer bench --sessions 8000000 --actors 1,2 --reps 5
      scorer bench --whole-job --sessions 4000000 --files 4000 --reps 3
      scorer bench --s3-latency 0,20,50 --sessions 4000000 --files 16 --reps 3
    """
    from scorer.jobs.bench import render, run_bench

    if whole_job:
        _bench_whole_job(out_dir, data, sessions, files, reps)
        return
    if s3_latency:
        _bench_s3_latency(out_dir, s3_latency, sessions, files, reps, actors)
        return

    try:
        counts = [int(n) for n in actors.split(",")] if actors else None
    except ValueError:
        raise click.BadParameter(
            f"expected numbers separated by commas, got {actors!r}", param_hint="--actors"
        ) from None
    result = run_bench(
        out_dir,
        data=data,
        sessions=sessions,
        files=files,
        reps=reps,
        actors=counts,
        batch_rows=batch_rows,
        address=address,
        model_dir=model_dir,
        on_message=lambda text: click.echo(text, err=True),
    )
    console = wide_console()
    console.print(render(result))
    for skipped in result.skipped:
        console.print(f"skipped {skipped}", markup=False)
    for name, path in result.files.items():
        console.print(f"{name}: {path}", markup=False)


def _bench_s3_latency(
    out_dir: Path, delays: str, sessions: int, files: int | None, reps: int, actors: str | None
) -> None:
    from scorer.jobs.latency import render_latency, run_latency_bench

    try:
        delays_ms = [float(ms) for ms in delays.split(",")]
        count = int(actors) if actors else 2
    except ValueError:
        raise click.BadParameter(
            f"expected milliseconds separated by commas and one actor count, got {delays!r}",
            param_hint="--s3-latency",
        ) from None
    result = run_latency_bench(
        out_dir,
        delays_ms,
        sessions=sessions,
        files=files or 16,
        reps=reps,
        actors=count,
        on_message=lambda text: click.echo(text, err=True),
    )
    console = wide_console()
    console.print(render_latency(result))
    console.print(f"measurements: {result.path}", markup=False)


def _bench_whole_job(
    out_dir: Path, data: str | None, sessions: int, files: int | None, reps: int
) -> None:
    from scorer.jobs.bench import bench_data
    from scorer.jobs.whole_job import render, run_whole_job

    def message(text: str) -> None:
        click.echo(text, err=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    data = data or bench_data(out_dir, sessions, files or 32, 0, message)
    result = run_whole_job(data, out_dir / "whole-job", reps=reps, on_message=message)
    console = wide_console()
    console.print(render(result))
    console.print(f"measurements: {out_dir / 'whole-job' / 'whole-job.parquet'}", markup=False)
