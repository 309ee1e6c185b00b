"""Paths and URIs to filesystems, and the whole plan + commit protocol against a real S3 server
(moto_server on loopback, started here)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from support.servers import moto_s3

from scorer.errors import ConfigError, LockError, OutputConflictError, StorageError
from scorer.partitions import PartitionFilter
from scorer.pipeline.layout import LOCK
from scorer.pipeline.lock import OutputLock
from scorer.pipeline.manifest import Manifest, options_digest
from scorer.pipeline.packing import plan_shards
from scorer.pipeline.plan import FailedInput
from scorer.pipeline.scan import scan_inputs
from scorer.storage import Location, StorageOptions, credential_env, redact, resolve

REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret-123"}
SHA = "c" * 64
OPTS = options_digest("session_id", ())


# Local paths and URIs --------------------------------------------------------------------


def test_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = resolve("data/in")
    assert isinstance(loc.filesystem, pafs.LocalFileSystem) and loc.is_local
    assert loc.path == loc.uri == str(tmp_path / "data" / "in")
    assert resolve(f"file://{tmp_path}/x").path == str(tmp_path / "x")
    assert loc.child("dt=1/a.parquet").path == str(tmp_path / "data" / "in" / "dt=1" / "a.parquet")


def test_a_location_pickles_as_its_spec(tmp_path):
    loc = resolve(tmp_path)
    assert Location.from_spec(loc.to_spec()) == loc
    again = pickle.loads(pickle.dumps(loc))
    assert again == loc and isinstance(again.filesystem, pafs.LocalFileSystem)


@pytest.mark.parametrize(
    "uri, secret",
    [
        ("s3://AKIAXXXX:topsecret@bucket/path", "topsecret"),
        ("s3://AKIAXXXX@bucket/path", "AKIAXXXX"),
        ("abfs://container@acct.dfs.core.windows.net/p?account_key=topsecret", "topsecret"),
        ("hdfs://user:topsecret@namenode:8020/p", "topsecret"),
    ],
)
def test_credentials_in_a_uri_are_refused_and_never_shown(uri, secret):
    with pytest.raises(StorageError, match="credentials in the URI") as err:
        resolve(uri)
    assert secret not in str(err.value)
    assert secret not in redact(uri)


def test_redact_keeps_what_is_not_secret():
    uri = "s3://bucket/p?endpoint_override=127.0.0.1:9000&scheme=http"
    assert redact(uri) == uri
    assert (
        redact("gs://b/p?access_token=abc&scheme=http") == "gs://b/p?access_token=***&scheme=http"
    )
    assert redact("/local/path") == "/local/path"


def test_an_unknown_filesystem_is_a_storage_error_naming_the_uri():
    with pytest.raises(StorageError, match="nosuch://bucket/x: cannot open"):
        resolve("nosuch://bucket/x")


def test_storage_options_from_config():
    opts = StorageOptions.from_mapping(
        {"endpoint_override": "minio:9000", "scheme": "http"}, "job.toml"
    )
    assert opts == StorageOptions(endpoint_override="minio:9000", scheme="http")
    with pytest.raises(ConfigError, match="job.toml: unknown key storage.endpoint "):
        StorageOptions.from_mapping({"endpoint": "x"}, "job.toml")
    with pytest.raises(ConfigError, match="job.toml: storage.scheme must be 'http' or 'https'"):
        StorageOptions.from_mapping({"scheme": "ftp"}, "job.toml")
    with pytest.raises(ConfigError, match="storage.region must be a non-empty string"):
        StorageOptions.from_mapping({"region": 3}, "job.toml")


def test_credential_env_forwards_only_standard_aws_variables():
    env = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "HOME": "/root",
        "AWS_REGION": "eu",
    }
    assert credential_env(env) == {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "eu",
    }


# A real S3 server ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on loopback; credentials and region for it in the environment."""
    with moto_s3(CREDENTIALS) as address:
        yield address


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh bucket per test; returns its name."""
    name = request.node.name.lower().replace("_", "-")[:50].strip("-")
    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint, scheme="http", allow_bucket_creation=True)
    fs.create_dir(name)
    return name


def put_sessions(fs, path, rows, row_group_size):
    table = pa.table({"session_id": pa.array(range(rows), pa.int64())})
    with fs.open_output_stream(path) as out:
        pq.write_table(table, out, row_group_size=row_group_size)


def test_query_parameters_and_options_and_env_fill_an_s3_uri(s3_endpoint, bucket, monkeypatch):
    in_uri = resolve(f"s3://{bucket}/in?endpoint_override={s3_endpoint}&scheme=http")
    assert isinstance(in_uri.filesystem, pafs.S3FileSystem) and in_uri.path == f"{bucket}/in"

    from_options = resolve(
        f"s3://{bucket}/in", StorageOptions(endpoint_override=s3_endpoint, scheme="http")
    )
    # allow_delayed_open: a small object is one PUT (see `storage.resolve`); a URI may say false.
    assert from_options.uri == (
        f"s3://{bucket}/in?endpoint_override={s3_endpoint}&scheme=http&allow_delayed_open=true"
    )

    # The URI wins over [storage]; [storage] only fills what the URI lacks.
    mixed = resolve(
        f"s3://{bucket}/in?endpoint_override={s3_endpoint}",
        StorageOptions(endpoint_override="elsewhere:1", scheme="http", region="us-east-1"),
    )
    assert f"endpoint_override={s3_endpoint}" in mixed.uri and "scheme=http" in mixed.uri
    assert "region=us-east-1" in mixed.uri and "elsewhere" not in mixed.uri

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3_endpoint}")
    from_env = resolve(f"s3://{bucket}/in")
    assert from_env.uri == (
        f"s3://{bucket}/in?endpoint_override={s3_endpoint}&scheme=http&allow_delayed_open=true"
    )

    for loc in (in_uri, from_options, mixed, from_env):
        with loc.filesystem.open_output_stream(loc.child("probe.txt").path) as out:
            out.write(b"ok")
    child = from_options.child("dt=2026-11-27/a b.parquet")
    assert child.path == f"{bucket}/in/dt=2026-11-27/a b.parquet"
    assert child.uri.startswith(f"s3://{bucket}/in/dt=2026-11-27/a%20b.parquet?endpoint_override=")


def test_an_actor_reopens_the_location_from_its_spec_with_env_credentials(s3_endpoint, bucket):
    out = resolve(
        f"s3://{bucket}/out", StorageOptions(endpoint_override=s3_endpoint, scheme="http")
    )
    spec = out.to_spec()
    pickled = pickle.dumps(out)
    for secret in CREDENTIALS.values():
        assert secret not in spec and secret.encode() not in pickled
    script = textwrap.dedent(
        f"""
        import pickle, sys
        out = pickle.loads({pickled!r})
        with out.filesystem.open_output_stream(out.child("from-actor.txt").path) as f:
            f.write(b"hello")
        """
    )
    # Another process, without [storage] or AWS_ENDPOINT_URL, and with only the forwarded env.
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), **credential_env()}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    with out.filesystem.open_input_stream(out.child("from-actor.txt").path) as f:
        assert f.read() == b"hello"


def test_s3_plan_commit_resume_round_trip(s3_endpoint, bucket):
    options = StorageOptions(endpoint_override=s3_endpoint, scheme="http")
    inp = resolve(f"s3://{bucket}/sessions", options)
    fs = inp.filesystem
    put_sessions(fs, f"{bucket}/sessions/dt=2026-11-27/part-0.parquet", 100, 10)
    put_sessions(fs, f"{bucket}/sessions/dt=2026-11-28/part-0.parquet", 60, 10)
    with fs.open_output_stream(f"{bucket}/sessions/dt=2026-11-28/broken.parquet") as f:
        f.write(b"PAR1 not really")
    out = resolve(f"s3://{bucket}/scored", options)

    inputs = scan_inputs(inp, PartitionFilter.parse(since="2026-11-27"))
    assert [i.relpath for i in inputs] == [
        "dt=2026-11-27/part-0.parquet",
        "dt=2026-11-28/broken.parquet",
        "dt=2026-11-28/part-0.parquet",
    ]
    assert isinstance(inputs[1], FailedInput)
    files = [i for i in inputs if not isinstance(i, FailedInput)]

    def run(run_id, shard_rows, limit=None):
        with OutputLock(out, run_id):
            manifest = Manifest.load(out)
            manifest.claim(model_name="m", model_sha256=SHA, options_digest=OPTS, run_id=run_id)
            cleanup = manifest.cleanup(run_id)
            manifest.supersede(files)
            plan = plan_shards(
                inputs,
                shard_rows,
                manifest.committed_ranges(files, model_sha256=SHA, options_digest=OPTS),
            )
            layout = pickle.loads(pickle.dumps(manifest.layout))  # as an actor receives it
            assert layout.writes_direct
            for shard in plan.shards[:limit]:
                source = pq.ParquetFile(
                    layout.location.filesystem.open_input_file(shard.input_path)
                )
                with layout.open_shard_sink(shard, run_id) as sink:
                    pq.write_table(source.read_row_groups(list(shard.row_groups)), sink)
                manifest.commit_shard(
                    shard, run_id=run_id, rows=shard.rows, model_sha256=SHA, options_digest=OPTS
                )
            return plan, cleanup

    def scored():
        infos = fs.get_file_info(
            pafs.FileSelector(f"{bucket}/scored/scores", recursive=True, allow_not_found=True)
        )
        paths = sorted(i.path for i in infos if i.type == pafs.FileType.File)
        return paths, sorted(
            v for p in paths for v in pq.read_table(p, filesystem=fs).column(0).to_pylist()
        )

    first, _ = run("run1", 30, limit=2)
    assert len(first.failed) == 1
    # A failing actor uploads nothing; a crash after an upload leaves a whole, unrecorded object.
    shard = first.shards[2]
    with pytest.raises(RuntimeError):
        with Manifest.load(out).layout.open_shard_sink(shard, "run1") as sink:
            sink.write(b"PAR1 partial")
            raise RuntimeError("actor failed")
    assert (
        fs.get_file_info(f"{bucket}/scored/{shard.output_relpath}").type == pafs.FileType.NotFound
    )
    orphan = f"{bucket}/scored/scores/dt=2026-11-28/part-0-rg00000-00003.parquet"
    put_sessions(fs, orphan, 30, 10)

    second, cleanup = run("run2", 25)
    assert cleanup.orphans == ("scores/dt=2026-11-28/part-0-rg00000-00003.parquet",)
    assert [s.shard_id for s in second.skipped] == [s.shard_id for s in first.shards[:2]]
    paths, ids = scored()
    assert ids == sorted(list(range(100)) + list(range(60)))
    assert all(p.startswith(f"{bucket}/scored/scores/dt=") for p in paths)

    third, _ = run("run3", 25)
    assert third.shards == () and third.skipped_rows == 160
    assert fs.get_file_info(f"{bucket}/scored/{LOCK}").type == pafs.FileType.NotFound

    with pytest.raises(OutputConflictError, match="holds scores of model m"):
        Manifest.load(out).check(model_name="m2", model_sha256="d" * 64, options_digest=OPTS)
    manifest = Manifest.load(out)
    manifest.claim(
        model_name="m2", model_sha256="d" * 64, options_digest=OPTS, run_id="run4", overwrite=True
    )
    assert scored() == ([], []) and not Manifest.load(out).records


def test_s3_lock_refuses_a_second_run(s3_endpoint, bucket):
    out = resolve(
        f"s3://{bucket}/out", StorageOptions(endpoint_override=s3_endpoint, scheme="http")
    )
    with OutputLock(out, "first"):
        with pytest.raises(LockError, match=f"run first, pid {os.getpid()}.*still running"):
            with OutputLock(out, "second"):
                pass
    with OutputLock(out, "second"):
        pass
