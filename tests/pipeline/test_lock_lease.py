"""One writer per OUTPUT (docs/exactly-once.md, "The lock: lease and fencing"), with real
`scorer score` processes and the CLI as typed: two runs in two pid namespaces of one host, two
runs racing for the lock on a real S3 server, and a run whose lease expired while it was
stopped. Every stop and signal lands at a point the test has observed (a commit record
appearing, a request arriving at the proxy), never after a sleep.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from support.inputs import make_history
from support.outputs import assert_every_row_once
from support.scorers import CREDENTIALS, HISTORY, OPTIONS, Scorers
from support.servers import moto_s3

from scorer.jobs.latency import latency_proxy
from scorer.pipeline.layout import LOCK
from scorer.pipeline.lock import LEASE_ENV, OutputLock, lease_from_env
from scorer.storage import resolve

pytestmark = pytest.mark.slow


@pytest.fixture
def scorers(tmp_path):
    tracked = Scorers(tmp_path)
    yield tracked
    tracked.close()


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def commits(out: Path) -> int:
    folder = out / "_scorer" / "commits"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def unshare_refusal() -> str | None:
    """Why two pid namespaces cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"unshare --pid is not permitted here: {probe.stderr.strip()}"
    return None


# -- local disk ----------------------------------------------------------------------------------


def test_a_live_run_in_another_pid_namespace_keeps_its_lock(tmp_path, scorers):
    """Two containers on one host (host networking, the same volume): the second run must not
    take the first one's pid, meaningless in its own namespace, for a dead process."""
    if why := unshare_refusal():
        pytest.skip(why)
    history = make_history(tmp_path / "in", **HISTORY)
    out = tmp_path / "out"
    first = scorers.start(str(history), str(out), "--shard-rows", "500", *OPTIONS, namespace=True)
    wait_for(lambda: commits(out) >= 1, 180, "the first run's first commit")
    scorers.stop(first)  # mid-run, for certain: it holds the lock and has more to commit
    assert json.loads((out / LOCK).read_text())["pid"] == 1  # pid 1 of its namespace

    # Other shard boundaries: had both runs written, some rows would be in two files.
    second = scorers.start(str(history), str(out), "--shard-rows", "300", *OPTIONS, namespace=True)
    code2, _, err2 = scorers.wait(second, 180)
    scorers.resume(first)
    code1, out1, err1 = scorers.wait(first, 180)

    assert code2 == 2, err2
    assert "LockError" in err2 and "another pid namespace" in err2
    assert code1 == 0, err1
    assert json.loads(out1)["shards_committed"] == 12
    assert_every_row_once(history, ds.dataset(out / "scores"))
    assert not (out / LOCK).exists()


def test_a_run_whose_lease_expired_while_stopped_stops_committing(tmp_path, scorers):
    """Stopped (SIGSTOP) past its lease, a run loses the lock to the next one; resumed, it
    commits nothing more and exits 1. The new run scored the rest: every row once."""
    history = make_history(tmp_path / "in", **HISTORY)
    out = tmp_path / "out"
    lease = {LEASE_ENV: "6"}  # renewed every 1.5 s; a busy machine's slow fsync is no loss
    first = scorers.start(str(history), str(out), "--shard-rows", "500", *OPTIONS, env=lease)
    wait_for(lambda: commits(out) >= 1, 180, "the first run's first commit")
    scorers.stop(first)
    held = json.loads((out / LOCK).read_text())
    assert held["lease_s"] == 6
    wait_for(lambda: time.time() > held["expires_at"], 30, "the stopped run's lease to end")

    second = scorers.start(str(history), str(out), "--shard-rows", "500", *OPTIONS, env=lease)
    code2, out2, err2 = scorers.wait(second, 180)
    assert code2 == 0, err2
    assert f"took over the lock of run {held['run_id']}" in err2 and "lease expired" in err2
    assert not (out / LOCK).exists()
    records_before = {p.name for p in (out / "_scorer" / "commits").glob("*.json")}

    scorers.resume(first)
    code1, _, err1 = scorers.wait(first, 120)
    assert code1 == 1, err1
    assert "LockLostError" in err1 and "stops committing" in err1
    assert {p.name for p in (out / "_scorer" / "commits").glob("*.json")} == records_before
    summary = json.loads(out2)
    assert summary["shards_skipped"] >= 1
    assert summary["shards_skipped"] + summary["shards_committed"] == 12
    assert_every_row_once(history, ds.dataset(out / "scores"))
    assert not (out / LOCK).exists(), "the stopped run deleted nothing it no longer held"


def test_the_lease_comes_from_the_environment_and_is_checked(monkeypatch):
    assert lease_from_env({}) == 60
    assert lease_from_env({LEASE_ENV: "2.5"}) == 2.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        with pytest.raises(Exception, match=f"{LEASE_ENV}: must be a positive number"):
            lease_from_env({LEASE_ENV: bad})


def test_a_stopped_holder_fails_its_fence_and_the_taker_gets_a_greater_number(tmp_path):
    """In one process: the fence fails once the lease is spent without renewal, whoever holds
    the lock; the next holder's fencing number is greater, and the old holder's release leaves
    the new holder's lock alone."""
    out = resolve(tmp_path / "out")
    first = OutputLock(out, "first", lease_s=0.4)
    first.acquire()
    first._stop.set()  # the heartbeat stops, as in a stopped process
    first._heartbeat.join()
    first.check()
    wait_for(
        lambda: time.time() > json.loads((tmp_path / "out" / LOCK).read_text())["expires_at"],
        10,
        "the lease to end",
    )
    with pytest.warns(UserWarning, match="lease expired"):
        second = OutputLock(out, "second", lease_s=30)
        second.acquire()
    try:
        assert second.fence > first.fence
        with pytest.raises(Exception, match="lost the lock .* stops committing") as lost:
            first.check()
        assert type(lost.value).__name__ == "LockLostError" and lost.value.exit_code == 1
        first.release()
        assert json.loads((tmp_path / "out" / LOCK).read_text())["run_id"] == "second"
        second.check()
    finally:
        second.release()
    assert not (tmp_path / "out" / LOCK).exists()


# -- object storage ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint():
    with moto_s3(CREDENTIALS) as address:
        yield address


def s3_fs(endpoint: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)


def test_two_runs_racing_for_the_lock_on_s3_one_is_refused(tmp_path, scorers, endpoint):
    """The first run's lock request is held back at its proxy until the second run holds the
    lock and has committed: with GET, PUT, GET both would hold it. The conditional PUT
    (If-None-Match: *) lets only one have it."""
    fs = s3_fs(endpoint)
    fs.create_dir("race")
    history = make_history(tmp_path / "in", **HISTORY)
    with latency_proxy(endpoint) as proxy:
        first_out = f"s3://race/out?endpoint_override={proxy.address}&scheme=http"
        second_out = f"s3://race/out?endpoint_override={endpoint}&scheme=http"
        lock_put = proxy.gate(b"PUT /race/out/_scorer/lock.json")
        first = scorers.start(str(history), first_out, "--shard-rows", "500", *OPTIONS)
        lock_put.wait_seen(180)  # it read no lock, and asks to write one

        second = scorers.start(str(history), second_out, "--shard-rows", "300", *OPTIONS)
        wait_for(lambda: s3_commits(fs, "race/out") >= 1, 180, "the second run's first commit")
        scorers.stop(second)  # holds the lock, has committed, has more to commit
        lock_put.open()
        code1, _, err1 = scorers.wait(first, 180)
        scorers.resume(second)
        code2, out2, err2 = scorers.wait(second, 180)

    assert code1 == 2, err1
    assert "LockError" in err1 and "still running" in err1
    assert code2 == 0, err2
    assert json.loads(out2)["shards_committed"] == 20
    assert_every_row_once(history, ds.dataset("race/out/scores", filesystem=fs))
    assert fs.get_file_info(f"race/out/{LOCK}").type == pafs.FileType.NotFound


def s3_commits(fs: pafs.S3FileSystem, out: str) -> int:
    selector = pafs.FileSelector(f"{out}/_scorer/commits", allow_not_found=True)
    return sum(i.path.endswith(".json") for i in fs.get_file_info(selector))


def test_a_stale_lock_on_s3_expires_with_its_lease(endpoint, monkeypatch):
    """A crashed run's lock, written from another host: no person needs to delete it, the
    next run takes it over once its lease has ended."""
    fs = s3_fs(endpoint)
    fs.create_dir("stale")
    out = resolve(f"s3://stale/out?endpoint_override={endpoint}&scheme=http")
    now = time.time()
    holder = {
        "host": "worker-7",
        "pid": 4242,
        "run_id": "crashed",
        "started_at": "2026-12-07T00:00:00.000+00:00",
        "pid_started": None,
        "boot_id": "b",
        "pid_namespace": 1,
        "fence": 7,
        "lease_s": 60.0,
        "expires_at": now + 60,
    }
    with fs.open_output_stream(f"stale/out/{LOCK}") as f:
        f.write(json.dumps(holder).encode())
    with pytest.raises(Exception, match="on another host.*lease runs until"):
        OutputLock(out, "next").acquire()
    with fs.open_output_stream(f"stale/out/{LOCK}") as f:
        f.write(json.dumps(holder | {"expires_at": now - 1}).encode())
    with pytest.warns(UserWarning, match="run crashed .* lease expired"):
        lock = OutputLock(out, "next")
        lock.acquire()
    try:
        assert lock.fence > 7
        with fs.open_input_stream(f"stale/out/{LOCK}") as f:
            assert json.loads(f.read())["run_id"] == "next"
    finally:
        lock.release()
    assert fs.get_file_info(f"stale/out/{LOCK}").type == pafs.FileType.NotFound


def test_the_fence_guards_every_record_and_every_deletion(tmp_path):
    """A manifest whose run lost the lock writes no record and deletes nothing: not a commit,
    not a crash's leftovers (cleanup), not a changed input's shards (supersede), not
    everything (--overwrite's reset)."""
    from support.manifests import OPTS, SHA_A, start_run, write_output, write_sessions

    from scorer.errors import LockLostError
    from scorer.pipeline.scan import scan_inputs

    inp, out = tmp_path / "in", tmp_path / "out"
    write_sessions(inp / "dt=2026-11-27" / "a.parquet", 40, 10)
    inputs = scan_inputs(resolve(inp))
    manifest, plan = start_run(resolve(out), inputs, 20, "r1")
    first, second = plan.shards
    manifest.commit_shard(
        first,
        run_id="r1",
        rows=write_output(manifest.layout, first, "r1"),
        model_sha256=SHA_A,
        options_digest=OPTS,
    )
    orphan = out / "scores" / "dt=2026-11-27" / "a-rg00009-00010.parquet"
    orphan.write_bytes(b"left by a crash")
    everything = sorted(p for p in out.rglob("*") if p.is_file())

    def lost() -> None:
        raise LockLostError("lost")

    manifest.fence = lost
    rows = write_output(manifest.layout, second, "r1")
    for attempt in (
        lambda: manifest.commit_shard(
            second, run_id="r1", rows=rows, model_sha256=SHA_A, options_digest=OPTS
        ),
        lambda: manifest.cleanup("r2"),
        manifest.reset,
    ):
        with pytest.raises(LockLostError):
            attempt()
    write_sessions(inp / "dt=2026-11-27" / "a.parquet", 41, 10)  # changed: supersede deletes
    with pytest.raises(LockLostError):
        manifest.supersede(scan_inputs(resolve(inp)))
    staged = out / "_scorer" / "tmp" / "r1" / second.output_relpath
    assert sorted(p for p in out.rglob("*") if p.is_file() and p != staged) == everything
