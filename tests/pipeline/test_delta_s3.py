"""`--format delta` on S3 (moto_server on loopback): publish, resume, and a concurrent writer.

The scorer's own runs on one OUTPUT are kept apart by its lock; what can race a publish is
another writer of the table. Here a driver is stopped (``SCORER_PAUSE_AT=publish``) after it
read the table and before it commits, another writer appends to a day the driver replaces and to
a day it does not touch, then the driver goes on: delta-rs's conditional PUT makes the driver's
commit lose the race, the publish is recomputed, and nobody's rows are lost or doubled.
"""

from __future__ import annotations

import json
import signal

import polars as pl
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable, write_deltalake
from support.faults import wait_for
from support.servers import moto_s3

from scorer.jobs.generate import generate
from scorer.pipeline.entry import score
from scorer.pipeline.tables import PAUSE_ENV

pytestmark = pytest.mark.slow

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "delta-test-key",
    "AWS_SECRET_ACCESS_KEY": "delta-test-secret-5b1e",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def endpoint():
    with moto_s3(CREDENTIALS) as address:
        yield address


def _options(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://{endpoint}",
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        **{k: v for k, v in CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"},
    }


def test_delta_on_s3_with_a_concurrent_writer_loses_nothing(endpoint, drivers):
    s3 = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
    s3.create_dir("lake")
    query = f"endpoint_override={endpoint}&scheme=http"
    source, output = f"s3://lake/sessions?{query}", f"s3://lake/scored?{query}"
    generate(source, sessions=4_000, files=2, days=2, seed=5, row_group_rows=1_000)

    first = score(source, output, shard_rows=1_000, format="delta")
    assert first.exit_code == 0 and first.delta_version == 0
    table_uri, options = "s3://lake/scored/scores", _options(endpoint)
    scores = DeltaTable(table_uri, storage_options=options).to_pyarrow_table()
    assert scores.num_rows == 4_000 == pc.count_distinct(scores["session_id"]).as_py()
    polars = pl.read_delta(table_uri, storage_options=options)
    assert polars.height == 4_000

    # An --overwrite run stopped between reading the table and committing its replacement.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PAUSE_ENV, "publish")
        driver = drivers.start(
            source, output, "--shard-rows", "1000", "--format", "delta", "--overwrite", "--json"
        )
        wait_for(
            lambda: psutil.Process(driver.pid).status() == psutil.STATUS_STOPPED,
            180,
            "the driver stopped before its Delta commit",
        )
    theirs = pa.table(
        {
            "session_id": pa.array([-1, -2], pa.int64()),
            "intent_raw": pa.array([0.5, 0.5], pa.float32()),
            "intent_calibrated": pa.array([0.5, 0.5], pa.float32()),
            "status": ["ok", "ok"],
            "model_version": ["their-model", "their-model"],
            "run_id": ["theirs", "theirs"],
            "dt": ["2026-11-27", "2099-01-01"],  # a day the driver replaces, and another
        }
    )
    write_deltalake(table_uri, theirs, mode="append", storage_options=options)
    drivers.signal(driver, signal.SIGCONT)
    code, stdout, stderr = drivers.wait(driver, 180)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["delta_version"] == 2

    latest = DeltaTable(table_uri, storage_options=options).to_pyarrow_table()
    ours = latest.filter(pc.greater_equal(latest["session_id"], 0))
    assert ours.num_rows == 4_000 == pc.count_distinct(ours["session_id"]).as_py()
    assert set(ours["run_id"].to_pylist()) == {summary["run_id"]}
    assert sorted(latest.filter(pc.less(latest["session_id"], 0))["session_id"].to_pylist()) == [
        -2,
        -1,
    ]
