"""Runs that Ray would not speed up are scored in the driver process (`scorer.pipeline.local`).

Each test starts `scorer score` as a process of its own with no actor count and no cluster,
as a user types it, so no Ray is connected and the driver takes the in-process path; the
commit protocol, resume, retries and signals must hold there exactly as with actors.
"""

from __future__ import annotations

import json
import re
import signal

import pytest
from conftest import make_history
from test_faults import (
    SLOW_HISTORY,
    TOTAL_SHARDS,
    _assert_exactly_once,
    _assert_scores_whole,
    _commits,
    _Drivers,
    _run_stats,
    _ScoresWatcher,
    _shard_stats,
    _truncate,
    _wait_for,
)

from scorer.pipeline.local import RAY_START_S, ray_pays_off

# As test_faults' slow runs, without --actors: 12 shards of 500 rows, 5-row batches.
IN_PROCESS_OPTIONS = ["--batch-rows", "5", "--shard-rows", "500"]


@pytest.fixture
def drivers(tmp_path):
    tracked = _Drivers(tmp_path)
    yield tracked
    tracked.close()


def test_ray_pays_off_only_for_work_longer_than_its_start_up():
    assert not ray_pays_off(12_330, cpus=2)
    assert not ray_pays_off(16_000_000, cpus=2)  # one worker keeps most of 2 cores busy
    assert ray_pays_off(200_000_000, cpus=16)
    assert not ray_pays_off(1_000_000, cpus=64)  # the start-up alone outlasts the work
    assert RAY_START_S > 1


def test_a_job_without_actors_or_cluster_is_scored_in_process_and_resumes(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *IN_PROCESS_OPTIONS, "--json"]
    code, stdout, stderr = drivers.wait(drivers.start(*command), 120)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["executor"] == "in-process"
    assert "scored in-process, Ray not started" in stderr
    assert summary["shards_committed"] == TOTAL_SHARDS and summary["rows"] == 6_000
    stats = _shard_stats(out, summary["run_id"])
    assert {r["actor_id"] for r in stats} == {"in-process"}
    assert _run_stats(out, summary["run_id"])["actors"] == 1
    _assert_exactly_once(history, out)
    _assert_scores_whole(history, out)

    code, stdout, stderr = drivers.wait(drivers.start(*command), 120)
    assert code == 0, stderr
    again = json.loads(stdout)
    assert again["shards_skipped"] == TOTAL_SHARDS and again["rows"] == 0


@pytest.mark.slow
def test_a_killed_in_process_driver_is_resumed_exactly_once(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *IN_PROCESS_OPTIONS, "--json"]
    with _ScoresWatcher(out) as watcher:
        first = drivers.start(*command)
        _wait_for(lambda: _commits(out) >= 1, 120, "the first commit")
        committed_before = drivers.signal_mid_run(first, signal.SIGKILL, out)
        code, _, _ = drivers.wait(first, 30)
        assert code == -signal.SIGKILL
        assert _commits(out) == committed_before >= 1
        _assert_scores_whole(history, out)

        code, stdout, stderr = drivers.wait(drivers.start(*command), 120)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert "took over the lock" in stderr
    assert summary["shards_skipped"] >= committed_before
    assert summary["shards_skipped"] + summary["shards_committed"] == TOTAL_SHARDS
    _assert_exactly_once(history, out)
    assert not watcher.bad


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "group", "exit_code"), [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)]
)
def test_an_interrupted_in_process_run_abandons_its_shard_and_the_rerun_completes(
    tmp_path, drivers, signum, group, exit_code
):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *IN_PROCESS_OPTIONS]
    with _ScoresWatcher(out) as watcher:
        driver = drivers.start(*command)
        _wait_for(lambda: _commits(out) >= 1, 120, "a commit")
        drivers.signal_mid_run(driver, signum, out, group=group)
        code, _, stderr = drivers.wait(driver, 60)
        assert code == exit_code, stderr
        run_id = re.search(r"run (\S+) interrupted", stderr).group(1)
        assert _run_stats(out, run_id)["status"] == "interrupted"
        assert not (out / "_scorer" / "lock.json").exists(), "the lock was not released"
        assert not (out / "_scorer" / "tmp" / run_id).exists()
        assert _commits(out) < TOTAL_SHARDS, "the signal did not land mid-run"
        _assert_scores_whole(history, out)

        code, stdout, stderr = drivers.wait(drivers.start(*command, "--json"), 120)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["shards_skipped"] + summary["shards_committed"] == TOTAL_SHARDS
    _assert_exactly_once(history, out)
    assert not watcher.bad


def test_a_broken_file_fails_alone_in_process_and_is_named(tmp_path, drivers):
    history = make_history(tmp_path / "in", sessions=3_000, files=3, days=1, row_group_rows=500)
    day = next(history.iterdir())
    broken = day / "part-00001.parquet"
    _truncate(broken)
    out = tmp_path / "out"
    code, stdout, stderr = drivers.wait(
        drivers.start(str(history), str(out), "--shard-rows", "500", "--json"), 120
    )
    assert code == 1, stderr
    summary = json.loads(stdout)
    assert summary["executor"] == "in-process"
    assert [f["input"] for f in summary["failures"]] == [str(broken)]
    assert f"shard {day.name}/{broken.name} failed: {broken}" in stderr
    assert summary["rows"] == 2_000  # the other two files, whole
