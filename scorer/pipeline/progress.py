"""Progress reporting: the driver calls a `Progress` object, the caller decides how it shows.

`Progress` does nothing (library and notebook default), `LogProgress` prints plain lines (not a
terminal, CI, cluster jobs) and `RichProgress` draws a live bar: rows done of the footer total,
rows/s, ETA and failed shards. What it prints of the run (file names, error text) is escaped:
a file named `bad[/x].parquet` is shown as it is, never read as console markup.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import TaskID


class Progress:
    """Receives the driver's events; every method is optional to override."""

    def start(self, *, total_rows: int, total_shards: int, skipped_rows: int) -> None:
        """The plan is known; `skipped_rows` were committed by an earlier run."""

    def message(self, text: str) -> None:
        """A line worth showing a person (setup steps, warnings)."""

    def dispatching(self) -> None:
        """The actors are ready and shards start to flow: rates and ETA count from here."""

    def shard_done(self, *, shard_id: str, rows: int) -> None:
        """A shard was committed."""

    def shard_failed(self, *, shard_id: str, error: str, will_retry: bool) -> None:
        """A shard attempt failed; `will_retry` says whether it goes back in the queue."""

    def finish(self) -> None:
        """The run is over (whatever its outcome)."""


class LogProgress(Progress):
    """Plain log lines, at most one progress line every `interval` seconds."""

    def __init__(self, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.total_rows = 0
        self.rows_done = 0
        self.failed = 0
        self.started = time.monotonic()
        self.last_line = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, *, total_rows: int, total_shards: int, skipped_rows: int) -> None:
        self.total_rows, self.started = total_rows, time.monotonic()
        self._print(f"scoring {total_rows:,} rows in {total_shards:,} shards")

    def message(self, text: str) -> None:
        self._print(text)

    def dispatching(self) -> None:
        self.started = time.monotonic()

    def shard_done(self, *, shard_id: str, rows: int) -> None:
        self.rows_done += rows
        now = time.monotonic()
        if now - self.last_line >= self.interval or self.rows_done >= self.total_rows:
            self.last_line = now
            rate = self.rows_done / max(now - self.started, 1e-9)
            self._print(
                f"{self.rows_done:,}/{self.total_rows:,} rows ({rate:,.0f} rows/s), "
                f"{self.failed} failed shards"
            )

    def shard_failed(self, *, shard_id: str, error: str, will_retry: bool) -> None:
        if not will_retry:
            self.failed += 1
        self._print(f"shard {shard_id} failed{' (will retry)' if will_retry else ''}: {error}")


class RichProgress(Progress):
    """A live progress bar on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.console = Console(stderr=True)
        self.bar = Bar(
            TextColumn("[bold]scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[failed]}"),
            console=self.console,
            transient=False,
        )
        self.task: TaskID | None = None
        self.started = time.monotonic()
        self.rows_done = 0
        self.failed = 0

    def start(self, *, total_rows: int, total_shards: int, skipped_rows: int) -> None:
        self.started = time.monotonic()
        self.bar.start()
        self.task = self.bar.add_task("score", total=total_rows, rate="", failed="")

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def dispatching(self) -> None:
        self.started = time.monotonic()
        if self.task is not None:
            self.bar.reset(self.task, total=self.bar.tasks[0].total)  # ETA without the setup

    def shard_done(self, *, shard_id: str, rows: int) -> None:
        self.rows_done += rows
        rate = self.rows_done / max(time.monotonic() - self.started, 1e-9)
        if self.task is not None:
            self.bar.update(self.task, advance=rows, rate=f"{rate:,.0f} rows/s")

    def shard_failed(self, *, shard_id: str, error: str, will_retry: bool) -> None:
        if not will_retry:
            self.failed += 1
        from rich.markup import escape

        self.console.print(
            f"[red]shard {escape(shard_id)} failed{' (will retry)' if will_retry else ''}:[/red] "
            f"{escape(error)}",
            highlight=False,
        )
        if self.task is not None:
            self.bar.update(self.task, failed=f"[red]{self.failed} failed" if self.failed else "")

    def finish(self) -> None:
        if self.task is not None:
            self.bar.stop()
