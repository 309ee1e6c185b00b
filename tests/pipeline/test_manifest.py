"""Exactly-once output on a local filesystem: commits, resume, cleanup, model claims.

The same protocol on object storage runs against a real S3 server in tests/base/test_storage.py.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.manifests import OPTS, SHA_A, start_run, write_output, write_sessions

from scorer.errors import OutputConflictError, ShardError
from scorer.pipeline.footers import legacy_fingerprint
from scorer.pipeline.layout import record_key
from scorer.pipeline.manifest import CommitRecord, Manifest
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.scan import scan_inputs
from scorer.storage import resolve

SHA_B = "b" * 64


def score(manifest, plan, run_id, shards=None, sha=SHA_A):
    for shard in plan.shards if shards is None else shards:
        rows = write_output(manifest.layout, shard, run_id)
        manifest.commit_shard(
            shard, run_id=run_id, rows=rows, model_sha256=sha, options_digest=OPTS
        )


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
