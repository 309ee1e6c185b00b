"""A file replaced or removed while a run reads it (docs/backfills.md): its shards fail as "input changed
during the run" (exit 1), the scores never hold rows of two versions, and the rerun scores the
version now there, once.

Each test starts `scorer score` as its own process (in-process worker, one shard at a time:
10 shards of one 5,000-row row group, read in 50-row batches), waits for the first commit
record, stops the driver (SIGSTOP) and checks the run is unfinished, changes the file, and lets
the driver go on: the change lands mid-run on any machine.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from support.faults import Drivers, wait_for
from support.inputs import NEW_IDS, make_history, replace_with_a_new_version
from support.outputs import commits

pytestmark = pytest.mark.slow

ROWS, ROW_GROUP_ROWS, SHARDS = 50_000, 5_000, 10
OPTIONS = ["--shard-rows", "5000", "--batch-rows", "50", "--json"]


def _history(root: Path, files: int) -> Path:
    return make_history(
        root, sessions=ROWS * files, files=files, days=1, row_group_rows=ROW_GROUP_ROWS
    )


def _versions(out: Path) -> tuple[int, int, int]:
    """(rows of the old version, rows of the new version, distinct keys) in the scores."""
    keys = ds.dataset(out / "scores").to_table(columns=["session_id"])["session_id"]
    new = pc.sum(pc.greater_equal(keys, NEW_IDS)).as_py() or 0
    return len(keys) - new, new, pc.count_distinct(keys).as_py()


def _change_mid_run(drivers: Drivers, history: Path, out: Path, change) -> tuple[int, str, str]:
    driver = drivers.start(str(history), str(out), *OPTIONS)
    wait_for(lambda: commits(out) >= 1, 120, "the first commit")
    drivers.signal(driver, signal.SIGSTOP)
    assert commits(out) < SHARDS, "the run ended before the file could change mid-run"
    change()
    drivers.signal(driver, signal.SIGCONT)
    return drivers.wait(driver, 120)


def test_a_file_replaced_mid_run_fails_its_shards_and_the_rerun_scores_the_new_version(
    tmp_path, drivers
):
    history = _history(tmp_path / "in", files=1)
    path = next(history.rglob("*.parquet"))
    out = tmp_path / "out"

    code, stdout, stderr = _change_mid_run(
        drivers, history, out, lambda: replace_with_a_new_version(path, ROW_GROUP_ROWS)
    )
    old, new, distinct = _versions(out)
    assert (code, new) == (1, 0), (
        f"exit {code}; the scores hold {old:,} rows of the old version and {new:,} of the new"
    )
    assert f"input changed during the run: {path}" in stderr
    assert old % ROW_GROUP_ROWS == 0 and distinct == old  # whole shards of the old version
    summary = json.loads(stdout)
    assert summary["shards_failed"] >= 1
    assert summary["shards_committed"] + summary["shards_failed"] == SHARDS

    code, stdout, stderr = drivers.wait(drivers.start(str(history), str(out), *OPTIONS), 120)
    assert code == 0, stderr
    assert _versions(out) == (0, ROWS, ROWS)  # the new version alone, each session once


def test_a_file_removed_mid_run_fails_its_shards_and_the_rerun_scores_the_rest(tmp_path, drivers):
    history = _history(tmp_path / "in", files=2)
    removed, kept = sorted(history.rglob("*.parquet"))
    out = tmp_path / "out"
    kept_ids = set(pq.read_table(kept, columns=["session_id"])["session_id"].to_pylist())

    code, stdout, stderr = _change_mid_run(drivers, history, out, removed.unlink)
    assert code == 1, stderr
    assert re.search(rf"input changed during the run: {re.escape(str(removed))}\b", stderr)
    summary = json.loads(stdout)
    assert summary["shards_failed"] >= 1
    old, new, distinct = _versions(out)
    assert new == 0 and distinct == old and old % ROW_GROUP_ROWS == 0

    code, stdout, stderr = drivers.wait(drivers.start(str(history), str(out), *OPTIONS), 120)
    assert code == 0, stderr
    keys = ds.dataset(out / "scores").to_table(columns=["session_id"])["session_id"]
    assert pc.count_distinct(keys).as_py() == len(keys)
    assert kept_ids <= set(keys.to_pylist())
