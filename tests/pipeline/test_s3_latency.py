"""Object storage at real latency: moto_server behind the loopback latency proxy.

Every HTTP request between the scorer and the S3 server is held 20 ms, as on a real bucket.
Read ahead (row groups fetched before they are decoded, a second shard per actor opened while
the first is scored) must change nothing of what is written: rows out = rows in, exactly once,
and an interrupted run leaves nothing its rerun does not account for.
"""

from __future__ import annotations

import _thread
import json
import threading
import time

import boto3
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from support.servers import moto_s3, s3_latency

from scorer.config import load_config
from scorer.errors import ConfigError, Interrupted
from scorer.jobs.generate import generate
from scorer.pipeline.entry import score

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "latency-key", "AWS_SECRET_ACCESS_KEY": "latency-secret"}
ROWS = 6_000
DELAY_MS = 20


@pytest.fixture(scope="module")
def moto():
    with moto_s3(CREDENTIALS) as address:
        yield address


@pytest.fixture(scope="module")
def lake(moto):
    """6,000 sessions in 3 files of 2,000 rows, row groups of 500 (so a shard reads ahead)."""
    s3 = pafs.S3FileSystem(endpoint_override=moto, scheme="http", allow_bucket_creation=True)
    s3.create_dir("slow")
    generate(
        f"s3://slow/sessions?endpoint_override={moto}&scheme=http",
        sessions=ROWS,
        files=3,
        days=1,
        seed=5,
        row_group_rows=500,
    )
    return s3


@pytest.fixture
def proxy(moto):
    with s3_latency(moto, DELAY_MS) as proxy:
        yield proxy


def _uri(proxy, path: str) -> str:
    return f"s3://slow/{path}?endpoint_override={proxy.address}&scheme=http"


def _objects(s3, prefix: str) -> list[str]:
    infos = s3.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def _assert_exactly_once(s3, moto, out: str) -> None:
    """Every row once, every score object named by a commit record, no upload left open."""
    scores = ds.dataset(f"slow/{out}/scores", filesystem=s3, partitioning="hive").to_table()
    assert scores.num_rows == ROWS == pc.count_distinct(scores["session_id"]).as_py()
    records = [
        json.loads(s3.open_input_stream(p).read())
        for p in _objects(s3, f"slow/{out}/_scorer/commits")
    ]
    named = sorted(f"slow/{out}/{r['output_relpath']}" for r in records)
    assert _objects(s3, f"slow/{out}/scores") == named
    assert sum(r["rows"] for r in records) == ROWS
    client = boto3.client("s3", endpoint_url=f"http://{moto}", region_name="us-east-1")
    assert not client.list_multipart_uploads(Bucket="slow").get("Uploads")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_at_20_ms_a_request_every_row_is_scored_once_and_the_reads_are_counted(moto, lake, proxy):
    summary = score(
        _uri(proxy, "sessions"), _uri(proxy, "scored"), actors=2, shard_rows=1_000, batch_rows=500
    )
    assert summary.exit_code == 0 and summary.rows == ROWS
    _assert_exactly_once(lake, moto, "scored")
    stats = pq.read_table(f"slow/scored/stats/shards/run_id={summary.run_id}", filesystem=lake)
    assert pc.sum(stats["rows"]).as_py() == ROWS
    # Each shard: two HEADs and a footer, then one ranged read per row group (the columns read
    # of a group lie within 1 MiB of each other): 2 groups of 500 rows.
    assert stats["requests"].to_pylist() == [5] * len(stats)
    assert all(b > 0 for b in stats["bytes_read"].to_pylist())
    # What the actors counted went through the proxy (which also saw the driver's requests).
    assert proxy.counts.requests > pc.sum(stats["requests"]).as_py()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_interrupted_while_shards_are_read_ahead_the_rerun_completes_exactly_once(
    moto, lake, proxy
):
    out = "interrupted"
    commits = f"slow/{out}/_scorer/commits"
    watcher_fs = pafs.S3FileSystem(endpoint_override=moto, scheme="http")
    seen, ended = threading.Event(), threading.Event()

    def interrupt_at_first_commit() -> None:
        # Observed, not timed: the first commit record is there, the other actor's shard and
        # both actors' next shards (opened and read ahead) are in flight.
        while not _objects(watcher_fs, commits):
            if ended.is_set():
                return
            time.sleep(0.005)
        seen.set()
        _thread.interrupt_main()

    watcher = threading.Thread(target=interrupt_at_first_commit, daemon=True)
    watcher.start()
    options = dict(actors=2, shard_rows=1_000, batch_rows=500)
    try:
        with pytest.raises(Interrupted):
            score(_uri(proxy, "sessions"), _uri(proxy, out), **options)
    finally:
        ended.set()
        watcher.join(timeout=30)
    assert seen.is_set()
    committed = len(_objects(lake, commits))
    assert 1 <= committed < ROWS // 1_000, "the interrupt did not land mid-run"

    rerun = score(_uri(proxy, "sessions"), _uri(proxy, out), **options)
    assert rerun.exit_code == 0
    assert rerun.shards_skipped == committed and rerun.rows + rerun.rows_skipped == ROWS
    _assert_exactly_once(lake, moto, out)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_read_stalled_past_the_client_timeout_is_retried_by_the_s3_client(moto, lake, proxy):
    # One ranged read of row-group data (not a footer: those end the object) held 6 s, longer
    # than the AWS SDK's 3 s request timeout: the client gives up on it and asks again.
    proxy.stall(b"range: bytes=4-", seconds=6)
    summary = score(
        _uri(proxy, "sessions"), _uri(proxy, "stalled"), actors=2, shard_rows=1_000, batch_rows=500
    )
    assert proxy.counts.stalled == 1
    assert summary.exit_code == 0 and summary.rows == ROWS and summary.shards_failed == 0
    _assert_exactly_once(lake, moto, "stalled")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("read_ahead = -1", "storage.read_ahead: must be at least 0"),
        ('read_ahead = "2"', "'storage.read_ahead' must be an integer"),
        ("requests_in_flight = 0", "storage.requests_in_flight: must be at least 1"),
        ("part_size = 5", "unknown key 'storage.part_size'"),
    ],
)
def test_storage_settings_are_checked_naming_the_key_and_the_file(tmp_path, line, message):
    config = tmp_path / "job.toml"
    config.write_text(f"[storage]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert message in str(caught.value) and str(config) in str(caught.value)
