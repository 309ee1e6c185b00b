"""Exactly-once output on a local filesystem: commits, resume, cleanup, model claims, the lock.

The same protocol on object storage runs against a real S3 server in tests/base/test_storage.py.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scorer.errors import LockError, OutputConflictError, ShardError
from scorer.pipeline.layout import LOCK, OutputLayout
from scorer.pipeline.lock import OutputLock, StaleLockWarning
from scorer.pipeline.manifest import CommitRecord, Manifest, options_digest, record_key
from scorer.pipeline.plan import legacy_fingerprint, plan_shards, scan_inputs
from scorer.storage import resolve

REPO = Path(__file__).resolve().parents[2]
SHA_A = "a" * 64
SHA_B = "b" * 64
OPTS = options_digest("session_id", ())


def write_sessions(path, rows, row_group_size):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"session_id": pa.array(range(rows), pa.int64())}),
        path,
        row_group_size=row_group_size,
    )
    return path


def write_output(layout, shard, run_id, rows=None):
    """What an actor does: copy the shard's session ids (one row per input row) into the sink."""
    source = pq.ParquetFile(shard.input_path)
    with layout.open_shard_sink(shard, run_id) as sink:
        with pq.ParquetWriter(
            sink, pa.schema([("session_id", pa.int64()), ("intent_raw", pa.float32())])
        ) as writer:
            for rg in shard.row_groups:
                ids = source.read_row_group(rg, columns=["session_id"]).column(0)
                writer.write_table(
                    pa.table({"session_id": ids, "intent_raw": pa.nulls(len(ids), pa.float32())})
                )
    return shard.rows if rows is None else rows


def score(manifest, plan, run_id, shards=None, sha=SHA_A):
    for shard in plan.shards if shards is None else shards:
        rows = write_output(manifest.layout, shard, run_id)
        manifest.commit_shard(
            shard, run_id=run_id, rows=rows, model_sha256=sha, options_digest=OPTS
        )


def start_run(out, inputs, shard_rows, run_id, sha=SHA_A, overwrite=False):
    """The driver's sequence before scoring (see Manifest's docstring)."""
    manifest = Manifest.load(out)
    manifest.claim(
        model_name="intent",
        model_sha256=sha,
        options_digest=OPTS,
        run_id=run_id,
        overwrite=overwrite,
    )
    manifest.cleanup(run_id)
    files = [i for i in inputs if hasattr(i, "fingerprint")]
    manifest.adopt_legacy_fingerprints(files)
    manifest.supersede(files)
    ranges = manifest.committed_ranges(files, model_sha256=sha, options_digest=OPTS)
    return manifest, plan_shards(inputs, shard_rows, ranges)


def scored_ids(out_dir):
    files = sorted((out_dir / "scores").rglob("*.parquet"))
    if not files:
        return []
    ids = pa.concat_arrays([pq.read_table(f).column("session_id").combine_chunks() for f in files])
    return sorted(ids.to_pylist())


@pytest.fixture
def job(tmp_path):
    inp = tmp_path / "in"
    write_sessions(inp / "dt=2026-11-27" / "a.parquet", 100, 10)
    write_sessions(inp / "dt=2026-11-28" / "b.parquet", 50, 10)
    return inp, tmp_path / "out"


def test_commit_makes_a_whole_shard_visible(job):
    inp, out_dir = job
    out = resolve(out_dir)
    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 30, "run1")
    shard = plan.shards[0]
    write_output(manifest.layout, shard, "run1")
    assert not (out_dir / "scores").exists()  # written, not committed: nothing visible yet

    record = manifest.commit_shard(
        shard, run_id="run1", rows=shard.rows, model_sha256=SHA_A, options_digest=OPTS
    )
    final = out_dir / shard.output_relpath
    assert pq.read_table(final).num_rows == shard.rows
    assert not Path(manifest.layout.temp_path_for(shard, "run1")).exists()
    on_disk = json.loads(
        (out_dir / "_scorer" / "commits" / f"{record_key(shard.shard_id)}.json").read_text()
    )
    assert CommitRecord.from_dict(on_disk) == record
    assert record.input_relpath == "dt=2026-11-27/a.parquet" and record.rows == 30

    reloaded = Manifest.load(out)
    assert reloaded.is_committed(shard, shard.fingerprint, SHA_A, OPTS)
    assert reloaded.is_committed(shard.shard_id, shard.fingerprint, SHA_A, OPTS)
    assert not reloaded.is_committed(shard, "other-fingerprint", SHA_A, OPTS)
    assert not reloaded.is_committed(shard, shard.fingerprint, SHA_B, OPTS)
    assert not reloaded.is_committed(plan.shards[1], plan.shards[1].fingerprint, SHA_A, OPTS)


def test_a_wrong_row_count_is_never_committed(job):
    inp, out_dir = job
    manifest, plan = start_run(resolve(out_dir), scan_inputs(resolve(inp)), 30, "run1")
    shard = plan.shards[0]
    write_output(manifest.layout, shard, "run1")
    with pytest.raises(ShardError, match="wrote 29 rows, expected 30"):
        manifest.commit_shard(
            shard, run_id="run1", rows=29, model_sha256=SHA_A, options_digest=OPTS
        )
    assert not (out_dir / "scores").exists() and not manifest.records


def test_a_failing_writer_leaves_nothing(job):
    inp, out_dir = job
    manifest, plan = start_run(resolve(out_dir), scan_inputs(resolve(inp)), 30, "run1")
    shard = plan.shards[0]
    with pytest.raises(RuntimeError, match="bad batch"):
        with manifest.layout.open_shard_sink(shard, "run1") as sink:
            sink.write(b"PAR1 half a file")
            raise RuntimeError("bad batch")
    assert not Path(manifest.layout.temp_path_for(shard, "run1")).exists()
    with pytest.raises(ShardError, match="temporary output is missing"):
        manifest.commit_shard(
            shard, run_id="run1", rows=shard.rows, model_sha256=SHA_A, options_digest=OPTS
        )
    assert not manifest.records


def test_a_reader_only_ever_sees_whole_files(tmp_path):
    inp = tmp_path / "in"
    write_sessions(inp / "a.parquet", 40_000, 1_000)
    out_dir = tmp_path / "out"
    manifest, plan = start_run(resolve(out_dir), scan_inputs(resolve(inp)), 1_000, "run1")
    done = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def read_continuously():
        while not done.is_set():
            for path in (out_dir / "scores").rglob("*"):
                try:
                    seen.append(pq.read_metadata(path).num_rows)
                except FileNotFoundError:
                    pass  # cannot happen here, but is not what this test is about
                except Exception as exc:  # a partial file would land here
                    errors.append(f"{path}: {exc}")

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        score(manifest, plan, "run1")
    finally:
        done.set()
        reader.join()
    assert errors == []
    assert seen and set(seen) == {1_000}
    assert scored_ids(out_dir) == list(range(40_000))


def test_rerun_skips_committed_and_another_shard_rows_never_duplicates(job):
    inp, out_dir = job
    out = resolve(out_dir)
    inputs = scan_inputs(resolve(inp))
    manifest, plan = start_run(out, inputs, 30, "run1")
    score(manifest, plan, "run1", plan.shards[:2])
    # Crash between the final write and the record: a whole but uncommitted file under scores/.
    crashed = plan.shards[2]
    write_output(manifest.layout, crashed, "run1")
    os.makedirs((out_dir / crashed.output_relpath).parent, exist_ok=True)
    os.replace(manifest.layout.temp_path_for(crashed, "run1"), out_dir / crashed.output_relpath)

    manifest, plan = start_run(out, inputs, 20, "run2")
    assert [s.shard_id for s in plan.skipped] == [
        "dt=2026-11-27/a.parquet:0-3",
        "dt=2026-11-27/a.parquet:3-6",
    ]
    assert not (out_dir / crashed.output_relpath).exists()  # the orphan is gone
    assert {s.rows for s in plan.shards} <= {20, 10}
    score(manifest, plan, "run2")
    assert scored_ids(out_dir) == sorted(list(range(100)) + list(range(50)))

    manifest, plan = start_run(out, inputs, 20, "run3")
    assert plan.shards == () and plan.skipped_rows == 150


def test_cleanup_removes_temp_files_of_dead_runs_and_orphans(job):
    inp, out_dir = job
    out = resolve(out_dir)
    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 30, "run1")
    score(manifest, plan, "run1", plan.shards[:1])
    write_output(manifest.layout, plan.shards[1], "run1")  # abandoned mid-run
    stray = out_dir / "scores" / "dt=2026-11-27" / "a-rg00003-00009.parquet"
    stray.write_bytes(b"left by a crash")
    keep = out_dir / "scores" / "README.txt"
    keep.write_text("not ours to delete: not Parquet")

    manifest = Manifest.load(out)
    report = manifest.cleanup("run2")
    assert report.temp_runs == ("run1",)
    assert report.orphans == ("scores/dt=2026-11-27/a-rg00003-00009.parquet",)
    assert not (out_dir / "_scorer" / "tmp" / "run1").exists()
    assert not stray.exists() and keep.exists()
    assert (out_dir / plan.shards[0].output_relpath).exists()


def test_an_unparsable_record_is_rescored(job):
    inp, out_dir = job
    out = resolve(out_dir)
    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 30, "run1")
    score(manifest, plan, "run1", plan.shards[:1])
    record = out_dir / "_scorer" / "commits" / f"{record_key(plan.shards[0].shard_id)}.json"
    record.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable commit record"):
        manifest = Manifest.load(out)
    report = manifest.cleanup("run2")
    assert report.bad_records == (str(record),) and report.orphans
    assert not record.exists()


def test_a_changed_input_is_rescored_and_its_old_shards_removed(job):
    inp, out_dir = job
    out = resolve(out_dir)
    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 30, "run1")
    score(manifest, plan, "run1")
    old_outputs = {s.output_relpath for s in plan.shards if s.input_relpath.endswith("a.parquet")}

    write_sessions(inp / "dt=2026-11-27" / "a.parquet", 70, 7)  # the input file was replaced
    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 35, "run2")
    assert all(not (out_dir / p).exists() for p in old_outputs)
    assert {s.input_relpath for s in plan.shards} == {"dt=2026-11-27/a.parquet"}
    assert {s.input_relpath for s in plan.skipped} == {"dt=2026-11-28/b.parquet"}
    score(manifest, plan, "run2")
    assert scored_ids(out_dir) == sorted(list(range(70)) + list(range(50)))


def _as_written_by_0_1(out_dir, inp):
    """Rewrite every commit record with the fingerprints release 0.1.0 recorded."""
    for path in (out_dir / "_scorer" / "commits").glob("*.json"):
        record = json.loads(path.read_text())
        for piece in record["pieces"]:
            f = inp.parent / "in" / piece["input_relpath"]
            stat = f.stat()
            legacy = legacy_fingerprint(stat.st_size, stat.st_mtime_ns, pq.read_metadata(f))
            assert legacy != piece["input_fingerprint"]
            piece["input_fingerprint"] = legacy
        path.write_text(json.dumps(record))


def test_records_of_release_0_1_resume_and_a_changed_file_is_still_rescored(job):
    inp, out_dir = job
    out = resolve(out_dir)
    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 30, "run1")
    score(manifest, plan, "run1")
    _as_written_by_0_1(out_dir, inp)

    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 30, "run2")
    assert plan.shards == () and len(plan.skipped) == 6

    write_sessions(inp / "dt=2026-11-27" / "a.parquet", 70, 7)
    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 30, "run3")
    assert {s.input_relpath for s in plan.shards} == {"dt=2026-11-27/a.parquet"}
    score(manifest, plan, "run3")
    assert scored_ids(out_dir) == sorted(list(range(70)) + list(range(50)))


def test_commit_refuses_what_would_duplicate_rows(job):
    inp, out_dir = job
    out = resolve(out_dir)
    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 30, "run1")
    score(manifest, plan, "run1", plan.shards[:1])
    # Same file planned afresh (the committed ranges ignored): [0,2) overlaps committed [0,3).
    overlapping = plan_shards(scan_inputs(resolve(inp)), 20).shards[0]
    write_output(manifest.layout, overlapping, "run1")
    with pytest.raises(ShardError, match="overlaps committed shard"):
        manifest.commit_shard(
            overlapping, run_id="run1", rows=20, model_sha256=SHA_A, options_digest=OPTS
        )
    # A changed input whose old shards were not superseded.
    write_sessions(inp / "dt=2026-11-27" / "a.parquet", 100, 25)
    changed = plan_shards(scan_inputs(resolve(inp)), 100).shards[0]
    write_output(manifest.layout, changed, "run1")
    with pytest.raises(ShardError, match="older version of the input"):
        manifest.commit_shard(
            changed, run_id="run1", rows=100, model_sha256=SHA_A, options_digest=OPTS
        )


def test_another_models_output_is_refused_unless_overwrite(job):
    inp, out_dir = job
    out = resolve(out_dir)
    inputs = scan_inputs(resolve(inp))
    manifest, plan = start_run(out, inputs, 30, "run1")
    score(manifest, plan, "run1")

    with pytest.raises(
        OutputConflictError, match=f"holds scores of model intent \\(sha256 {SHA_A[:12]}\\)"
    ) as err:
        start_run(out, inputs, 30, "run2", sha=SHA_B)
    assert "--overwrite" in str(err.value) and str(out_dir) in str(err.value)
    assert err.value.exit_code == 2
    with pytest.raises(OutputConflictError, match="other output options"):
        Manifest.load(out).check(model_name="intent", model_sha256=SHA_A, options_digest="other")
    assert scored_ids(out_dir)  # a refusal changes nothing

    manifest, plan = start_run(out, inputs, 30, "run2", sha=SHA_B, overwrite=True)
    assert not plan.skipped and not manifest.records and scored_ids(out_dir) == []
    state = json.loads((out_dir / "_scorer" / "output.json").read_text())
    assert state["model_sha256"] == SHA_B and state["run_id"] == "run2"
    score(manifest, plan, "run2", sha=SHA_B)
    assert len(scored_ids(out_dir)) == 150


def test_records_of_another_model_are_refused_even_without_output_json(job):
    inp, out_dir = job
    out = resolve(out_dir)
    manifest, plan = start_run(out, scan_inputs(resolve(inp)), 30, "run1")
    score(manifest, plan, "run1", plan.shards[:1])
    (out_dir / "_scorer" / "output.json").unlink()
    with pytest.raises(OutputConflictError, match="another model"):
        Manifest.load(out).check(model_name="intent", model_sha256=SHA_B, options_digest=OPTS)


def test_layout_paths_and_pickling(job):
    inp, out_dir = job
    layout = OutputLayout(resolve(out_dir))
    shard = plan_shards(scan_inputs(resolve(inp)), 30).shards[0]
    assert not layout.writes_direct
    assert layout.final_path_for(shard) == str(out_dir / shard.output_relpath)
    assert layout.temp_path_for(shard, "r1") == str(
        out_dir / "_scorer" / "tmp" / "r1" / shard.output_relpath
    )
    assert pickle.loads(pickle.dumps(layout)) == layout


# The lock --------------------------------------------------------------------------------


def hold_lock_in_subprocess(out_dir, run_id):
    """Start a process that takes the lock and waits; returns it once it holds the lock."""
    script = textwrap.dedent(
        f"""
        import sys
        from scorer.pipeline.lock import OutputLock
        from scorer.storage import resolve
        with OutputLock(resolve({str(out_dir)!r}), {run_id!r}):
            print("locked", flush=True)
            sys.stdin.read()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    out = resolve(tmp_path / "out")
    holder = hold_lock_in_subprocess(tmp_path / "out", "first")
    try:
        with pytest.raises(LockError) as err:
            with OutputLock(out, "second"):
                pass
        message = str(err.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert str(tmp_path / "out" / LOCK) in message and "run first" in message
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert not (tmp_path / "out" / LOCK).exists()  # released by the first run
    with OutputLock(out, "second"):
        assert json.loads((tmp_path / "out" / LOCK).read_text())["run_id"] == "second"


def test_a_lock_whose_owner_was_killed_is_taken_over_with_a_warning(tmp_path):
    out = resolve(tmp_path / "out")
    holder = hold_lock_in_subprocess(tmp_path / "out", "killed")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "out" / LOCK).exists()
    with pytest.warns(StaleLockWarning, match=f"run killed \\(pid {holder.pid}"):
        with OutputLock(out, "next"):
            state = json.loads((tmp_path / "out" / LOCK).read_text())
            assert (state["run_id"], state["pid"]) == ("next", os.getpid())
    assert not (tmp_path / "out" / LOCK).exists()


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path):
    out = resolve(tmp_path / "out")
    lock = tmp_path / "out" / LOCK
    lock.parent.mkdir(parents=True)
    # Our own (live) pid, but a process start time that is not ours: the pid was reused.
    lock.write_text(
        json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "run_id": "old",
                "started_at": "x",
                "pid_started": 1.0,
            }
        )
    )
    with pytest.warns(StaleLockWarning):
        with OutputLock(out, "new"):
            pass


def test_a_lock_held_on_another_host_is_refused(tmp_path):
    lock = tmp_path / "out" / LOCK
    lock.parent.mkdir(parents=True)
    lock.write_text(
        json.dumps(
            {"host": "worker-7", "pid": 1, "run_id": "r", "started_at": "x", "pid_started": None}
        )
    )
    with pytest.raises(LockError, match="pid 1 on host worker-7.*delete the lock file"):
        with OutputLock(resolve(tmp_path / "out"), "new"):
            pass
    assert lock.exists()


def test_the_lock_is_released_on_an_exception_and_not_reentrant(tmp_path):
    out = resolve(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with OutputLock(out, "r1"):
            with pytest.raises(LockError, match="still running"):
                with OutputLock(out, "r2"):
                    pass
            raise RuntimeError
    assert not (tmp_path / "out" / LOCK).exists()
