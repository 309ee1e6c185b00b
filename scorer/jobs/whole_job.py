"""`scorer bench --whole-job`: the user's default command against what they would write instead.

Each contestant is a whole process, timed from its start to its exit, on the same input, the
contestants alternating within every repetition so that a noisy machine hurts them alike:

- ``scorer``: ``scorer score INPUT OUTPUT --json`` as a user types it (no other flag), so its
  wall holds the imports, Ray (or none, when the job is small), planning, work, commits,
  statistics and shutdown. Its JSON summary adds the work window and the setup, and its
  commit records when the first shard was committed after the process started.
- ``polars`` and ``duckdb``: the same model in a Polars and in a DuckDB script, every weight
  inlined from the card (`scorer.jobs.peers`), reading the same files and writing
  dt-partitioned zstd Parquet of the key and both scores.

After the last repetition the outputs are compared on the key (rows matched, max |Δ| of each
score) so a faster peer cannot be a wrong one.

Before the first repetition the scorer package's bytecode is compiled, as ``pip install``
compiles an installed package's and the peers' libraries': a checkout run with
``PYTHONDONTWRITEBYTECODE`` set (this project's machines set it) would otherwise compile every
module again at each start, 0.1-0.15 s that no installed copy pays (measured on 2 cores).
"""

from __future__ import annotations

import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scorer.errors import ConfigError
from scorer.jobs.peers import PEERS, agreement, write_peer_scripts
from scorer.model.card import CARD_FILE
from scorer.pipeline.layout import COMMITS

CONTESTANTS = ("scorer", *PEERS)

WHOLE_JOB_SCHEMA = pa.schema(
    [
        ("contestant", pa.string()),
        ("repetition", pa.int32()),
        ("rows", pa.int64()),
        ("seconds", pa.float64()),  # whole-process wall: start to exit
        ("setup_seconds", pa.float64()),  # scorer: until the first shard was dispatched
        ("work_seconds", pa.float64()),  # scorer: its work window
        ("first_commit_seconds", pa.float64()),  # scorer: process start to first commit
    ]
)


@dataclass(frozen=True)
class WholeJobResult:
    """One whole-job run: every measurement, the outputs' agreement, where files are."""

    data: str
    rows: int
    measurements: pa.Table  # WHOLE_JOB_SCHEMA
    agreement: dict[str, dict[str, Any]] = field(default_factory=dict)  # peer -> figures

    def medians(self) -> list[dict[str, Any]]:
        """One row per contestant: medians over repetitions, and the speed-up over the faster
        peer measured in the same repetitions."""
        by_contestant: dict[str, list[dict[str, Any]]] = {}
        for row in self.measurements.to_pylist():
            by_contestant.setdefault(row["contestant"], []).append(row)
        medians = []
        for contestant, runs in by_contestant.items():
            median: dict[str, Any] = {"contestant": contestant, "runs": len(runs)}
            for name in WHOLE_JOB_SCHEMA.names[2:]:
                values = [r[name] for r in runs if r[name] is not None]
                median[name] = statistics.median(values) if values else None
            medians.append(median)
        walls = {r["contestant"]: r["seconds"] for r in medians}
        fastest_peer = min((walls[p] for p in PEERS if p in walls), default=None)
        for row in medians:
            row["vs_fastest_peer"] = (
                fastest_peer / row["seconds"] if fastest_peer and row["seconds"] else None
            )
        return medians


def run_whole_job(
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    reps: int = 3,
    contestants: Sequence[str] = CONTESTANTS,
    scorer_args: Sequence[str] = (),
    on_message: Callable[[str], None] = lambda text: None,
) -> WholeJobResult:
    """Time each contestant `reps` times on `data`, alternating; outputs under `out_dir`."""
    unknown = sorted(set(contestants) - set(CONTESTANTS))
    if unknown or reps < 1:
        raise ConfigError(
            f"contestants must be among {', '.join(CONTESTANTS)} (got {', '.join(unknown)}) "
            "and reps at least 1"
        )
    from scorer.model.runtime import default_model_dir

    compileall.compile_dir(Path(__file__).resolve().parents[1], quiet=2)  # the scorer package
    out = Path(out_dir)
    scripts = write_peer_scripts(default_model_dir() / CARD_FILE, out / "peers")
    card = json.loads((default_model_dir() / CARD_FILE).read_text())
    rows = _input_rows(Path(data))
    measured = []
    for repetition in range(reps):
        for contestant in contestants:
            target = out / f"out-{contestant}"
            shutil.rmtree(target, ignore_errors=True)
            if contestant == "scorer":
                command = [scorer_bin(), "score", str(data), str(target), "--json", *scorer_args]
            else:
                command = [sys.executable, str(scripts[contestant]), str(data), str(target)]
            row = _timed(command, contestant) | {"contestant": contestant}
            row |= {"repetition": repetition, "rows": rows}
            measured.append(row)
            on_message(
                f"{contestant:<7} rep {repetition}: {row['seconds']:.2f} s"
                + (f" (work {row['work_seconds']:.2f} s)" if row.get("work_seconds") else "")
            )
    figures = {}
    if "scorer" in contestants:
        for peer in PEERS:
            if peer in contestants:
                figures[peer] = agreement(
                    out / "out-scorer", out / f"out-{peer}", card["key_column"]
                )
    table = pa.Table.from_pylist(
        [{name: row.get(name) for name in WHOLE_JOB_SCHEMA.names} for row in measured],
        WHOLE_JOB_SCHEMA,
    )
    pq.write_table(table, out / "whole-job.parquet")
    return WholeJobResult(str(data), rows, table, figures)


def render(result: WholeJobResult) -> Any:
    """The medians and the agreement as a rich table (the CLI prints it)."""
    from rich.table import Table

    table = Table(title=f"whole job, {result.rows:,} rows of {result.data}: medians")
    for heading in ("contestant", "runs", "wall s", "setup s", "work s", "first commit s"):
        table.add_column(heading, justify="left" if heading == "contestant" else "right")
    table.add_column("peer ×", justify="right")  # the faster peer's wall / this wall
    table.add_column("max |Δ| raw / cal.", justify="right")
    for row in result.medians():
        agree = result.agreement.get(row["contestant"])
        table.add_row(
            row["contestant"],
            str(row["runs"]),
            f"{row['seconds']:.2f}",
            _seconds(row["setup_seconds"]),
            _seconds(row["work_seconds"]),
            _seconds(row["first_commit_seconds"]),
            "" if row["vs_fastest_peer"] is None else f"{row['vs_fastest_peer']:.2f}",
            ""
            if agree is None
            else f"{agree['max_abs_diff_raw']:.1e} / {agree['max_abs_diff_calibrated']:.1e}"
            + ("" if agree["matched"] == agree["ours"] == agree["theirs"] else " ROWS DIFFER"),
        )
    return table


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def scorer_bin() -> str:
    # The console script beside this interpreter: what `scorer` on a user's PATH runs.
    installed = Path(sys.executable).with_name("scorer")
    return str(installed) if installed.exists() else "scorer"


def _input_rows(data: Path) -> int:
    paths = [data] if data.is_file() else sorted(data.rglob("*.parquet"))
    if not paths:
        raise ConfigError(f"{data}: no *.parquet files to benchmark on")
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def _timed(command: list[str], contestant: str) -> dict[str, Any]:
    """Run one contestant to its exit: wall seconds, and the scorer's own figures."""
    started_at = time.time()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode:
        raise ConfigError(
            f"{contestant} failed (exit {process.returncode}): "
            f"{stderr.decode(errors='replace').strip()[-2000:]}"
        )
    row: dict[str, Any] = {"seconds": seconds}
    if contestant == "scorer":
        summary = json.loads(stdout)
        row["setup_seconds"] = summary.get("setup_seconds")
        row["work_seconds"] = summary.get("work_seconds")
        row["first_commit_seconds"] = _first_commit(Path(command[3]), started_at)
    return row


def _first_commit(output: Path, started_at: float) -> float | None:
    """Seconds from the process start to the earliest commit record's `committed_at`."""
    times = [
        datetime.fromisoformat(json.loads(path.read_text())["committed_at"]).timestamp()
        for path in (output / COMMITS).glob("*.json")
    ]
    return min(times) - started_at if times else None
