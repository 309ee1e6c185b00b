"""Worker processes beside the in-process worker (`scorer.pipeline.processes`).

A real worker process is forked in each test (``scorer-worker`` in ``ps``); the faults are
delivered at points the test observes (the process holds its shard's output file open), never
after a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys

import psutil
import pyarrow.parquet as pq
import pytest
from support.faults import SLOW_HISTORY, TOTAL_SHARDS, wait_for
from support.inputs import make_history
from support.outputs import assert_exactly_once, assert_scores_whole, run_stats, shard_stats

from scorer.config import JobConfig
from scorer.errors import ConfigError
from scorer.model.runtime import default_model_dir, load_model
from scorer.pipeline.footers import footers_by_digest
from scorer.pipeline.layout import OutputLayout
from scorer.pipeline.local import InProcessWorker, worker_processes_for
from scorer.pipeline.outcome import ShardOutcome
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.processes import (
    PROCESS_NAME,
    InProcessAndProcesses,
    start_worker_processes,
    stop_worker_processes,
)
from scorer.pipeline.retry import Failure
from scorer.pipeline.scan import scan_inputs
from scorer.pipeline.shipping import ActorSettings
from scorer.storage import resolve

# 12 shards of 500 rows in 2-row batches: ~8 s in-process, the process ready in well under 1 s.
WITH_A_PROCESS = ["--batch-rows", "2", "--shard-rows", "500", "--processes", "1"]
RUN_ID = "20261201T000000Z-proc01"


def _worker_process(driver) -> psutil.Process | None:
    try:
        children = psutil.Process(driver.pid).children()
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if child.name() == PROCESS_NAME:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _writing_a_shard(process: psutil.Process) -> bool:
    """The process holds a shard's output file open: it is scoring that shard."""
    try:
        return any("/_scorer/tmp/" in f.path for f in process.open_files())
    except psutil.NoSuchProcess:
        return False


def _scoring_process(driver) -> psutil.Process:
    def found():
        process = _worker_process(driver)
        return process if process is not None and _writing_a_shard(process) else None

    return wait_for(found, 120, "the worker process writing a shard", poll=0.002)


def test_processes_are_started_only_for_work_that_outlasts_their_start_up():
    assert worker_processes_for(12_330, files=1, shards=1, cpus=2) == 0
    assert worker_processes_for(500_000, files=4, shards=1, cpus=16) == 0
    assert worker_processes_for(16_000_000, files=32, shards=16, cpus=2) == 1
    assert worker_processes_for(4_000_000, files=4_000, shards=4, cpus=16) == 3  # per shard
    assert worker_processes_for(16_000_000, files=32, shards=16, cpus=1) == 0


def test_processes_config_is_checked_with_its_key():
    with pytest.raises(ConfigError, match="processes: must be at least 0"):
        JobConfig(processes=-1)
    with pytest.raises(ConfigError, match="processes: must be an integer"):
        JobConfig(processes="2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="processes: worker processes are for runs without Ray"):
        JobConfig(processes=1).with_overrides(ray__actors=2)
    assert JobConfig(processes=0).processes == 0


def _settings(history, out, batch_rows=5) -> ActorSettings:
    model = load_model(default_model_dir())
    return ActorSettings(
        model_files={p.name: p.read_bytes() for p in default_model_dir().iterdir()},
        threads=1,
        batch_rows=batch_rows,
        key_column=model.card.key_column,
        keep=(),
        label_column=model.card.label_column,
        run_id=RUN_ID,
        input_location=resolve(str(history)),
        layout=OutputLayout(resolve(str(out))),
    )


def test_a_worker_process_scores_a_shard_and_its_death_fails_the_next_for_a_retry(tmp_path):
    history = make_history(tmp_path / "in", sessions=3_000, files=3, days=1, row_group_rows=500)
    shards = plan_shards(scan_inputs(resolve(str(history))), 1_000).shards
    model = load_model(default_model_dir())
    # 5-row batches, 200 a shard: the process is surely mid-shard when killed
    settings = _settings(history, tmp_path / "out", batch_rows=5)
    scan = scan_inputs(resolve(str(history)))
    forked = start_worker_processes(settings, 1, footers_by_digest(scan))
    local = InProcessWorker(settings, model)
    workers = InProcessAndProcesses(local, forked)
    try:
        assert workers.has_starting() and workers.size == 1
        workers.processes[0].ready.result(timeout=120)
        workers.poll(busy=0)
        assert sorted(workers.idle) == [0, 1] and workers.size == 2
        assert workers.ready_after is not None
        assert psutil.Process(workers.processes[0].pid).name() == PROCESS_NAME

        workers.idle.remove(0)
        first = workers.fetch(workers.submit(0, shards[2], 1, True), 0)
        assert isinstance(first, ShardOutcome) and first.actor_id == "in-process"

        workers.idle.remove(1)
        scored = workers.fetch(workers.submit(1, shards[0], 1, True), 1)
        assert isinstance(scored, ShardOutcome), scored
        assert scored.rows == shards[0].rows and scored.actor_id == "process-1"
        assert scored.pid == workers.processes[0].pid != os.getpid()
        assert scored.calibration is not None and scored.drift is not None
        assert os.path.exists(settings.layout.temp_path_for(shards[0], RUN_ID))
        assert 1 in workers.idle

        workers.idle.remove(1)
        held = workers.submit(1, shards[1], 1, True)
        process = psutil.Process(workers.processes[0].pid)
        wait_for(lambda: _writing_a_shard(process), 60, "the process writing", poll=0.002)
        process.kill()
        lost = workers.fetch(held, 1)
        assert isinstance(lost, Failure), lost
        assert lost.retryable and lost.actor_lost
        assert "worker process" in lost.error and "killed by signal 9" in lost.error
        assert 1 not in workers.idle  # a dead process gets no shard

        workers.idle.remove(0)  # the retry, on the in-process worker
        again = workers.fetch(workers.submit(0, shards[1], 2, True), 0)
        assert isinstance(again, ShardOutcome) and again.rows == shards[1].rows
    finally:
        workers.shutdown()
    assert workers.processes[0].process.exitcode is not None


def test_forked_processes_each_end_at_eof_on_their_own_pipe(tmp_path):
    # Each child closes the driver's ends of its siblings' pipes as well as its own: a copy
    # left open in the second would keep the first from seeing EOF, and it would be killed.
    history = make_history(tmp_path / "in", sessions=100, files=1, days=1)
    forked = start_worker_processes(_settings(history, tmp_path / "out"), 2, {})
    for process in forked:
        process.ready.result(timeout=60)
    first = psutil.Process(forked[0].pid)
    ends = (forked[0].outbox, forked[0].inbox)  # the driver's: two pipes to the first
    first_pipes = {os.readlink(f"/proc/self/fd/{end.fileno()}") for end in ends}
    second_fds = f"/proc/{forked[1].pid}/fd"
    held_by_second = {os.readlink(f"{second_fds}/{fd}") for fd in os.listdir(second_fds)}
    assert len(first_pipes) == 2 and not first_pipes & held_by_second
    stop_worker_processes(forked)
    assert [p.process.exitcode for p in forked] == [0, 0]  # EOF, not EXIT_WAIT_S and a kill
    assert not first.is_running()


def test_a_run_with_a_worker_process_scores_every_row_once_and_resumes(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *WITH_A_PROCESS, "--json"]
    driver = drivers.start(*command)
    process = _scoring_process(driver)  # the process joined and took a shard
    code, stdout, stderr = drivers.wait(driver, 120)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["executor"] == "in-process+processes" and summary["actors"] == 2
    assert "1 worker process(es) joined the in-process worker, ready" in stderr
    stats = shard_stats(out, summary["run_id"])
    assert {r["actor_id"] for r in stats} == {"in-process", "process-1"}
    assert {r["pid"] for r in stats if r["actor_id"] == "process-1"} == {process.pid}
    assert run_stats(out, summary["run_id"])["actors"] == 2
    assert not process.is_running(), "the worker process outlived the run"
    assert_exactly_once(history, out)
    assert_scores_whole(history, out)

    code, stdout, stderr = drivers.wait(drivers.start(*command), 120)
    assert code == 0, stderr
    assert json.loads(stdout)["shards_skipped"] == TOTAL_SHARDS


def test_a_preflight_error_with_processes_asked_for_exits_2_quietly_and_writes_nothing(
    tmp_path, drivers
):
    history = make_history(tmp_path / "in", sessions=2_000, files=2, days=1)
    for path in sorted(history.rglob("*.parquet")):  # a model column missing everywhere
        pq.write_table(pq.read_table(path).drop_columns(["page_value"]), path)
    out = tmp_path / "out"
    driver = drivers.start(str(history), str(out), "--processes", "1")
    code, _, stderr = drivers.wait(driver, 120)
    assert code == 2, stderr
    assert "page_value" in stderr and "Traceback" not in stderr
    assert not (out / "scores").exists()


@pytest.mark.slow
def test_a_killed_worker_process_has_its_shard_retried_exactly_once(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    driver = drivers.start(str(history), str(out), *WITH_A_PROCESS, "--json")
    process = _scoring_process(driver)
    process.kill()
    code, stdout, stderr = drivers.wait(driver, 120)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["shards_committed"] == TOTAL_SHARDS and summary["shards_failed"] == 0
    assert f"worker process {process.pid} (process-1) died (killed by signal 9)" in stderr
    stats = shard_stats(out, summary["run_id"])
    lost = [r for r in stats if r["status"] == "failed"]
    assert len(lost) == 1 and "died" in lost[0]["error"]
    assert not (out / "_scorer" / "tmp" / summary["run_id"]).exists()
    assert_exactly_once(history, out)
    assert_scores_whole(history, out)


@pytest.mark.slow
def test_a_killed_driver_takes_its_worker_process_with_it(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *WITH_A_PROCESS, "--json"]
    driver = drivers.start(*command)
    process = _scoring_process(driver)
    drivers.signal(driver, signal.SIGKILL)
    assert drivers.wait(driver, 30)[0] == -signal.SIGKILL
    _, alive = psutil.wait_procs([process], timeout=30)
    assert not alive, "the worker process outlived its driver"

    code, stdout, stderr = drivers.wait(drivers.start(*command), 120)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["shards_skipped"] + summary["shards_committed"] == TOTAL_SHARDS
    assert_exactly_once(history, out)


@pytest.mark.slow
def test_ctrl_c_stops_the_worker_process_quietly_and_the_rerun_completes(tmp_path, drivers):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *WITH_A_PROCESS]
    driver = drivers.start(*command)
    process = _scoring_process(driver)
    drivers.signal(driver, signal.SIGINT, group=True)  # as a terminal's Ctrl-C
    code, _, stderr = drivers.wait(driver, 60)
    assert code == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert not process.is_running()
    run_id = re.search(r"run (\S+) interrupted", stderr).group(1)
    assert run_stats(out, run_id)["status"] == "interrupted"
    assert not (out / "_scorer" / "tmp" / run_id).exists()
    assert_scores_whole(history, out)

    code, _, stderr = drivers.wait(drivers.start(*command), 120)
    assert code == 0, stderr
    assert_exactly_once(history, out)


def test_a_run_on_a_terminal_forks_its_process_beside_the_live_progress_bar(tmp_path):
    # On a terminal a progress bar refreshes on a thread of the driver's at the fork; the
    # process must not use what that thread could hold (the streams' locks: `_child`).
    import pty

    history = make_history(tmp_path / "in", sessions=2_000, files=4, days=1)
    out = tmp_path / "out"
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "scorer", "score", str(history), str(out)]
    command += ["--shard-rows", "500", "--batch-rows", "5", "--processes", "1"]
    driver = subprocess.Popen(command, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the driver has exited
        while chunk := os.read(leader, 4096):
            shown += chunk
    os.close(leader)
    assert driver.wait(timeout=120) == 0, shown.decode(errors="replace")
    assert b"worker process(es) joined" in shown or b"before a worker process" in shown
    assert_exactly_once(history, out)
