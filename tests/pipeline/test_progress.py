"""Progress objects: the no-op default, plain log lines, and the rich bar's messages."""

from __future__ import annotations

import io
import re
import time

from scorer.pipeline.progress import LogProgress, Progress, RichProgress


def _drive(progress: Progress) -> None:
    progress.start(total_rows=1_000, total_shards=2, skipped_rows=0)
    progress.message("2 actor(s) on 1 node(s) ready in 0.1 s")
    progress.dispatching()
    progress.shard_failed(shard_id="a.parquet:0-1", error="actor died: gone", will_retry=True)
    progress.shard_done(shard_id="a.parquet:0-1", rows=600)
    progress.shard_failed(shard_id="b.parquet:0-1", error="b.parquet: unreadable", will_retry=False)
    progress.shard_done(shard_id="c.parquet:0-1", rows=400)
    progress.finish()


def test_the_default_progress_does_nothing(capsys):
    _drive(Progress())
    assert capsys.readouterr() == ("", "")


def test_log_progress_prints_plain_lines():
    stream = io.StringIO()
    _drive(LogProgress(stream, interval=0))
    lines = stream.getvalue().splitlines()
    assert lines[:3] == [
        "scoring 1,000 rows in 2 shards",
        "2 actor(s) on 1 node(s) ready in 0.1 s",
        "shard a.parquet:0-1 failed (will retry): actor died: gone",
    ]
    assert re.fullmatch(r"600/1,000 rows \([\d,]+ rows/s\), 0 failed shards", lines[3])
    assert lines[4] == "shard b.parquet:0-1 failed: b.parquet: unreadable"
    assert re.fullmatch(r"1,000/1,000 rows \([\d,]+ rows/s\), 1 failed shards", lines[5])
    assert len(lines) == 6


def test_log_progress_holds_lines_back_within_the_interval_but_not_the_last():
    stream = io.StringIO()
    progress = LogProgress(stream, interval=3600)
    progress.start(total_rows=1_000, total_shards=4, skipped_rows=0)
    progress.last_line = time.monotonic()  # a progress line was just printed
    for _ in range(3):
        progress.shard_done(shard_id="s", rows=300)
    assert stream.getvalue().splitlines() == ["scoring 1,000 rows in 4 shards"]
    progress.shard_done(shard_id="s", rows=100)
    assert stream.getvalue().splitlines()[-1].startswith("1,000/1,000 rows (")


def test_rich_progress_counts_rows_and_failures(capsys):
    progress = RichProgress()
    _drive(progress)
    task = progress.bar.tasks[0]
    assert task.completed == 1_000 and task.total == 1_000
    assert task.fields["failed"] == "[red]1 failed"
    assert progress.failed == 1 and progress.rows_done == 1_000
    err = capsys.readouterr().err
    assert "2 actor(s) on 1 node(s) ready in 0.1 s" in err
    assert "shard a.parquet:0-1 failed (will retry): actor died: gone" in err
    assert "shard b.parquet:0-1 failed: b.parquet: unreadable" in err


def test_rich_progress_finishes_without_a_start(capsys):
    progress = RichProgress()
    progress.finish()  # a run that failed in preflight never started the bar
    # Nothing drawn and nothing printed: rich's own stop would end a bar never drawn with a
    # blank line on stderr (a console that is not a terminal).
    assert not progress.bar.live.is_started
    assert capsys.readouterr() == ("", "")
