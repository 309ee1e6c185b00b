"""`scorer score` from s3:// to s3:// against a real S3 server (moto_server on loopback).

The shared local Ray (tests/conftest.py) was started before the credentials were put in this
process's environment, so its workers lack them, as on a real cluster: they must reach the
actors through the runtime environment the driver gives them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from support.servers import moto_s3

from scorer.jobs.generate import generate
from scorer.pipeline.entry import score

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

SECRET = "s3-test-secret-7f3a9c"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "s3-test-key",
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def endpoint():
    """moto_server on 127.0.0.1, stopped by its pid; its credentials in this process's env."""
    with moto_s3(CREDENTIALS) as address:
        yield address


@pytest.fixture(scope="module")
def lake(endpoint):
    """A bucket holding 6,000 generated sessions (written by `generate` straight to s3://)."""
    s3 = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
    s3.create_dir("lake")
    summary = generate(
        f"s3://lake/sessions?endpoint_override={endpoint}&scheme=http",
        sessions=6_000,
        files=3,
        days=2,
        seed=13,
        row_group_rows=1_000,
    )
    assert summary.rows == 6_000
    return s3


def _objects(s3, prefix):
    infos = s3.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def test_s3_to_s3_end_to_end_then_resume(endpoint, lake):
    source = f"s3://lake/sessions?endpoint_override={endpoint}&scheme=http"
    # OUTPUT without query: the [storage] section fills in the endpoint.
    storage = {"storage__endpoint_override": endpoint, "storage__scheme": "http"}
    first = score(source, "s3://lake/scored", actors=2, shard_rows=2_000, **storage)
    assert first.exit_code == 0 and first.rows == 6_000 and first.shards_failed == 0

    scores = ds.dataset(
        "lake/scored/scores", filesystem=lake, format="parquet", partitioning="hive"
    ).to_table()
    keys = scores["session_id"]
    assert scores.num_rows == 6_000 == pc.count_distinct(keys).as_py()
    assert pc.all(pc.equal(scores["status"].cast("string"), "ok")).as_py()

    # Stats and calibration are on S3 too, and no secret is in anything written.
    run = f"run_id={first.run_id}"
    shard_stats = pq.read_table(f"lake/scored/stats/shards/{run}", filesystem=lake)
    assert pc.sum(shard_stats["rows"]).as_py() == 6_000
    assert pq.read_table(f"lake/scored/stats/runs/{run}", filesystem=lake).num_rows == 1
    calibration = pq.read_table(f"lake/scored/calibration/{run}", filesystem=lake)
    overall = calibration.filter(pc.equal(calibration["scope"], "overall")).to_pylist()[0]
    assert overall["rows"] == 6_000
    for path in _objects(lake, "lake/scored"):
        with lake.open_input_stream(path) as f:
            assert SECRET.encode() not in f.read(), path
    assert SECRET not in repr(first.to_dict())

    second = score(source, "s3://lake/scored", actors=2, shard_rows=1_000, **storage)
    assert second.exit_code == 0 and second.rows == 0
    assert second.shards_skipped == first.shards_committed and second.rows_skipped == 6_000


def test_on_s3_shards_are_written_once_whole_and_nothing_is_left_half_uploaded(endpoint, lake):
    uri = f"s3://lake/whole?endpoint_override={endpoint}&scheme=http"
    summary = score(
        f"s3://lake/sessions?endpoint_override={endpoint}&scheme=http",
        uri,
        actors=2,
        shard_rows=1_000,
    )
    assert summary.exit_code == 0
    # No temporary objects (no rename on S3: each shard's final key is written once) ...
    assert not _objects(lake, "lake/whole/_scorer/tmp")
    # ... and no multipart upload was left open: nothing partial exists, even unlisted.
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    assert not client.list_multipart_uploads(Bucket="lake").get("Uploads")
    # Every score object is a complete Parquet file with the rows its commit record names.
    import json

    records = [
        json.loads(lake.open_input_stream(p).read())
        for p in _objects(lake, "lake/whole/_scorer/commits")
    ]
    assert len(records) == summary.shards_committed > 1
    for record in records:
        metadata = pq.ParquetFile(
            lake.open_input_file(f"lake/whole/{record['output_relpath']}")
        ).metadata
        assert metadata.num_rows == record["rows"]


def test_credentials_reach_actors_inside_their_settings_only(endpoint, lake):
    """Pickled for the actors, a location carries the AWS variables and the receiving process
    puts them in its environment; a plain location, its URI and its repr never carry them."""
    import pickle

    from scorer.storage import resolve

    plain = resolve(f"s3://lake/x?endpoint_override={endpoint}&scheme=http")
    shipped = plain.with_credentials()
    assert SECRET.encode() not in pickle.dumps(plain)
    assert SECRET not in repr(shipped) + shipped.uri and shipped == plain
    script = (
        "import os, pickle, sys; loc = pickle.loads(sys.stdin.buffer.read()); "
        f"print(os.environ['AWS_SECRET_ACCESS_KEY'] == {SECRET!r}, int(loc.filesystem.get_file_info('lake').type))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=pickle.dumps(shipped),
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    assert out.split() == ["True", str(int(pafs.FileType.Directory))]


def test_worker_processes_read_and_write_s3_with_the_credentials_they_are_sent(
    endpoint, lake, tmp_path
):
    """The command as typed (no Ray) on s3:// with a worker process: it scores shards through
    its own S3 client, every row once, and no secret reaches what it writes."""
    from support.faults import Drivers

    source = f"s3://lake/sessions?endpoint_override={endpoint}&scheme=http"
    target = f"s3://lake/by-processes?endpoint_override={endpoint}&scheme=http"
    drivers = Drivers(tmp_path)
    try:  # 5-row batches: the in-process worker is still busy when the process is ready
        driver = drivers.start(
            source,
            target,
            "--processes",
            "1",
            "--batch-rows",
            "5",
            "--shard-rows",
            "500",
            "--json",
        )
        code, stdout, stderr = drivers.wait(driver, 300)
    finally:
        drivers.close()
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["executor"] == "in-process+processes" and summary["rows"] == 6_000
    stats = pq.read_table(
        f"lake/by-processes/stats/shards/run_id={summary['run_id']}", filesystem=lake
    )
    assert "process-1" in set(stats["actor_id"].to_pylist())
    scores = ds.dataset(
        "lake/by-processes/scores", filesystem=lake, format="parquet", partitioning="hive"
    ).to_table(columns=["session_id"])
    assert scores.num_rows == 6_000 == pc.count_distinct(scores["session_id"]).as_py()
    for path in _objects(lake, "lake/by-processes"):
        with lake.open_input_stream(path) as f:
            assert SECRET.encode() not in f.read(), path


def test_objects_of_one_name_under_two_nightly_prefixes_keep_both_nights(endpoint, lake):
    """A file is identified by its bucket and key (docs/input.md, "What identifies a file"): each night's
    ``part-0.parquet`` is a file of its own, and a rerun of either night skips it."""
    table = pq.read_table("lake/sessions", filesystem=lake, partitioning=None).slice(0, 2_000)
    for night, offset in (("2026-11-27", 0), ("2026-11-28", 1_000_000)):
        ids = pc.add(table["session_id"].cast("int64"), offset)
        pq.write_table(
            table.set_column(table.schema.get_field_index("session_id"), "session_id", ids),
            f"lake/exports/{night}/part-0.parquet",
            filesystem=lake,
        )
    nights = f"s3://lake/exports/{{}}?endpoint_override={endpoint}&scheme=http"
    target = f"s3://lake/nightly?endpoint_override={endpoint}&scheme=http"
    for night in ("2026-11-27", "2026-11-28"):
        assert score(nights.format(night), target).rows == 2_000
    again = score(nights.format("2026-11-27"), target)
    assert again.rows == 0 and again.shards_skipped == 1
    keys = ds.dataset("lake/nightly/scores", filesystem=lake, format="parquet").to_table(
        columns=["session_id"]
    )["session_id"]
    assert len(keys) == 4_000 == pc.count_distinct(keys).as_py()
