"""Runs that Ray would not speed up are scored in the driver process (`scorer.pipeline.local`).

Each test starts `scorer score` as a process of its own with no actor count and no cluster,
as a user types it, so no Ray is connected and the driver takes the in-process path; the
commit protocol, resume, retries and signals must hold there exactly as with actors.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from support.faults import SLOW_HISTORY, TOTAL_SHARDS, ScoresWatcher, truncate, wait_for
from support.inputs import make_history
from support.outputs import (
    assert_exactly_once,
    assert_scores_whole,
    commits,
    run_stats,
    shard_stats,
)

from scorer.pipeline.local import RAY_START_S, ray_pays_off

# As test_faults' slow runs, without --actors: 12 shards of 500 rows, 5-row batches.
IN_PROCESS_OPTIONS = ["--batch-rows", "5", "--shard-rows", "500"]


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
    stats = shard_stats(out, summary["run_id"])
    assert {r["actor_id"] for r in stats} == {"in-process"}
    assert run_stats(out, summary["run_id"])["actors"] == 1
    assert_exactly_once(history, out)
    assert_scores_whole(history, out)

    code, stdout, stderr = drivers.wait(drivers.start(*command), 120)
    assert code == 0, stderr
    again = json.loads(stdout)
    assert again["shards_skipped"] == TOTAL_SHARDS and again["rows"] == 0


@pytest.mark.slow
def test_a_killed_in_process_driver_is_resumed_exactly_once(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *IN_PROCESS_OPTIONS, "--json"]
    with ScoresWatcher(out) as watcher:
        first = drivers.start(*command)
        wait_for(lambda: commits(out) >= 1, 120, "the first commit")
        committed_before = drivers.signal_mid_run(first, signal.SIGKILL, out)
        code, _, _ = drivers.wait(first, 30)
        assert code == -signal.SIGKILL
        assert commits(out) == committed_before >= 1
        assert_scores_whole(history, out)

        code, stdout, stderr = drivers.wait(drivers.start(*command), 120)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert "took over the lock" in stderr
    assert summary["shards_skipped"] >= committed_before
    assert summary["shards_skipped"] + summary["shards_committed"] == TOTAL_SHARDS
    assert_exactly_once(history, out)
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
    with ScoresWatcher(out) as watcher:
        driver = drivers.start(*command)
        wait_for(lambda: commits(out) >= 1, 120, "a commit")
        drivers.signal_mid_run(driver, signum, out, group=group)
        code, _, stderr = drivers.wait(driver, 60)
        assert code == exit_code, stderr
        run_id = re.search(r"run (\S+) interrupted", stderr).group(1)
        assert run_stats(out, run_id)["status"] == "interrupted"
        assert not (out / "_scorer" / "lock.json").exists(), "the lock was not released"
        assert not (out / "_scorer" / "tmp" / run_id).exists()
        assert commits(out) < TOTAL_SHARDS, "the signal did not land mid-run"
        assert_scores_whole(history, out)

        code, stdout, stderr = drivers.wait(drivers.start(*command, "--json"), 120)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["shards_skipped"] + summary["shards_committed"] == TOTAL_SHARDS
    assert_exactly_once(history, out)
    assert not watcher.bad


def test_a_broken_file_fails_alone_in_process_and_is_named(tmp_path, drivers):
    history = make_history(tmp_path / "in", sessions=3_000, files=3, days=1, row_group_rows=500)
    day = next(history.iterdir())
    broken = day / "part-00001.parquet"
    truncate(broken)
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


def test_actors_started_beside_the_in_process_worker_join_its_queue(ray_cluster, tmp_path):
    """`InProcessThenActors` on the test session's Ray: once the actors are placed they take
    the shards, and the in-process worker takes no further one."""
    from scorer.model.runtime import default_model_dir, load_model
    from scorer.pipeline.layout import OutputLayout
    from scorer.pipeline.local import InProcessThenActors, InProcessWorker, RayInBackground
    from scorer.pipeline.outcome import ShardOutcome
    from scorer.pipeline.packing import plan_shards
    from scorer.pipeline.pool import PoolSpec
    from scorer.pipeline.scan import scan_inputs
    from scorer.pipeline.shipping import ActorSettings
    from scorer.storage import resolve

    source = make_history(tmp_path / "in", sessions=4_000, files=1, days=1)
    model = load_model()
    settings = ActorSettings(
        model_files={
            n: (default_model_dir() / n).read_bytes() for n in ("model.onnx", "model.json")
        },
        threads=1,
        batch_rows=1_000,
        key_column=model.card.key_column,
        keep=(),
        label_column=model.card.label_column,
        run_id="run-hybrid",
        input_location=resolve(source),
        layout=OutputLayout(resolve(tmp_path / "out")),
    )
    first, second = plan_shards(scan_inputs(resolve(source)), 2_000).shards
    ray = RayInBackground(PoolSpec(settings, actors=1), wanted=2)
    workers = InProcessThenActors(InProcessWorker(settings, model), ray)
    try:
        assert workers.idle == [0] and workers.has_starting()
        handle = workers.submit(workers.idle.pop(), first, 1, True)  # in-process, at once
        wait_for(lambda: workers.wait([handle], 0.1), 60, "the in-process shard")
        outcome = workers.fetch(handle, 0)
        assert isinstance(outcome, ShardOutcome) and outcome.actor_id == "in-process"
        assert outcome.rows == first.rows

        def joined() -> bool:
            workers.wait([], 0.05)
            workers.poll(busy=0)
            return ray.joined

        wait_for(joined, 120, "the actors to join")
        assert ray.error is None and workers.idle == [1]  # the in-process worker is retired
        handle = workers.submit(workers.idle.pop(), second, 1, True)
        wait_for(lambda: workers.wait([handle], 0.1), 60, "the actor's shard")
        outcome = workers.fetch(handle, 1)
        assert isinstance(outcome, ShardOutcome) and outcome.actor_id not in ("", "in-process")
        assert workers.idle == [1]
    finally:
        workers.shutdown()
    assert not ray.starting and ray.pool is not None


@pytest.mark.slow
def test_a_run_where_ray_pays_off_scores_from_the_first_second_exactly_once(tmp_path, drivers):
    """The decision forced (this machine never makes it): the in-process worker starts at once
    and a private Ray starts beside it; whether its actors join before the end or not, every
    session is scored once and no Ray process outlives the run."""
    import psutil

    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    forced = (
        "import scorer.pipeline.executors as d; d.ray_pays_off = lambda rows, cpus: True; "
        "from scorer.cli import main; main()"
    )
    command = ["score", str(history), str(out), *IN_PROCESS_OPTIONS, "--json"]
    started = time.time()
    process = subprocess.run(
        [sys.executable, "-c", forced, *command], capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stderr
    summary = json.loads(process.stdout)
    assert summary["executor"] in ("in-process", "in-process+ray")
    assert "scoring in-process while a private Ray" in process.stderr
    assert summary["shards_committed"] == TOTAL_SHARDS
    assert_exactly_once(history, out)
    left = [
        p.info["name"]
        for p in psutil.process_iter(["name", "create_time"])
        if p.info["name"] in ("gcs_server", "raylet") and p.info["create_time"] >= started
    ]
    assert not left, f"Ray processes of the run outlived it: {left}"
