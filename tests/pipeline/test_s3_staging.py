"""What a reader of ``scores/`` on s3:// sees (docs/exactly-once.md): only committed files,
mid-run, after a crash, after a refused commit. A shard is staged under ``_scorer/tmp/``, its
record written, then it is copied into place; a crash in between is rolled forward by the next
run. Real `scorer score` processes against moto on loopback, held at requests the test saw.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from support.inputs import make_history
from support.outputs import assert_every_row_once
from support.scorers import CREDENTIALS, HISTORY, OPTIONS, Scorers
from support.servers import moto_s3

from scorer.errors import ShardError
from scorer.jobs.latency import latency_proxy
from scorer.partitions import PartitionFilter
from scorer.pipeline.layout import COMMITS, SCORES, TMP
from scorer.pipeline.manifest import Manifest, options_digest
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.scan import scan_inputs
from scorer.storage import resolve

pytestmark = pytest.mark.slow

SHA = "c" * 64
OPTS = options_digest("session_id", ())


@pytest.fixture
def scorers(tmp_path):
    tracked = Scorers(tmp_path)
    yield tracked
    tracked.close()


@pytest.fixture(scope="module")
def endpoint():
    with moto_s3(CREDENTIALS) as address:
        yield address


def bucket(endpoint: str, name: str) -> pafs.S3FileSystem:
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
    fs.create_dir(name)
    return fs


def listed(fs: pafs.S3FileSystem, folder: str) -> list[str]:
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    return sorted(i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File)


def visible_scores(fs: pafs.S3FileSystem, out: str) -> list[str]:
    """What a reader globbing ``scores/**/*.parquet`` gets, relative to OUTPUT."""
    return [p[len(out) + 1 :] for p in listed(fs, f"{out}/{SCORES}") if p.endswith(".parquet")]


def named_by_records(fs: pafs.S3FileSystem, out: str) -> set[str]:
    names = set()
    for path in listed(fs, f"{out}/{COMMITS}"):
        with fs.open_input_stream(path) as f:
            names.add(json.loads(f.read())["output_relpath"])
    return names


def test_readers_see_only_committed_files_mid_run_and_after_a_crash(tmp_path, scorers, endpoint):
    fs = bucket(endpoint, "staging")
    history = make_history(tmp_path / "in", **HISTORY)
    with latency_proxy(endpoint) as proxy:
        out_uri = f"s3://staging/out?endpoint_override={proxy.address}&scheme=http"
        record = proxy.gate(b"PUT /staging/out/_scorer/commits/")
        copy = proxy.gate(b"x-amz-copy-source")
        run = scorers.start(str(history), out_uri, "--shard-rows", "500", *OPTIONS)

        # Mid-run: the first shard is scored and written, its record not yet.
        record.wait_seen(180)
        assert named_by_records(fs, "staging/out") == set()
        assert visible_scores(fs, "staging/out") == [], "a file no record names is visible"
        record.open()

        # Its record is written; the copy into place is held: then the run crashes.
        copy.wait_seen(60)
        named = named_by_records(fs, "staging/out")
        assert len(named) == 1
        assert visible_scores(fs, "staging/out") == []
        scorers.scorer_process(run).kill()
        code, _, _ = scorers.wait(run, 30)
    assert code != 0
    assert visible_scores(fs, "staging/out") == []  # after the crash: nothing unrecorded
    staged = listed(fs, f"staging/out/{TMP}")
    assert any(p.endswith(next(iter(named))) for p in staged), staged

    # The rerun copies the committed shard into place and scores the rest.
    out_uri = f"s3://staging/out?endpoint_override={endpoint}&scheme=http"
    rerun = scorers.start(str(history), out_uri, "--shard-rows", "500", *OPTIONS)
    code, stdout, stderr = scorers.wait(rerun, 180)
    assert code == 0, stderr
    assert "1 committed score file(s) copied into place" in stderr
    summary = json.loads(stdout)
    assert (summary["shards_skipped"], summary["shards_committed"]) == (1, 11)
    assert set(visible_scores(fs, "staging/out")) == named_by_records(fs, "staging/out")
    assert_every_row_once(history, ds.dataset("staging/out/scores", filesystem=fs))
    assert listed(fs, f"staging/out/{TMP}") == []


def test_a_commit_refused_for_its_row_count_leaves_nothing_visible(endpoint):
    fs = bucket(endpoint, "refused")
    with fs.open_output_stream("refused/in/part-0.parquet") as f:
        pq.write_table(pa.table({"session_id": pa.array(range(40), pa.int64())}), f)
    query = f"endpoint_override={endpoint}&scheme=http"
    inputs = scan_inputs(resolve(f"s3://refused/in?{query}"), PartitionFilter.parse())
    (shard,) = plan_shards(inputs, 100, {}).shards
    manifest = Manifest.load(resolve(f"s3://refused/out?{query}"))
    with manifest.layout.open_shard_sink(shard, "r1") as sink:
        pq.write_table(pa.table({"session_id": pa.array(range(39), pa.int64())}), sink)
    assert visible_scores(fs, "refused/out") == []

    with pytest.raises(ShardError, match="wrote 39 rows, expected 40; not committed"):
        manifest.commit_shard(shard, run_id="r1", rows=39, model_sha256=SHA, options_digest=OPTS)
    assert visible_scores(fs, "refused/out") == [] and not manifest.records
    manifest.discard_temp("r1")
    assert listed(fs, "refused/out") == []
