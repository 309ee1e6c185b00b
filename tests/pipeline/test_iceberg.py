"""`--format iceberg` (issue 27): the scores as an Apache Iceberg table, one snapshot per run.

Real runs on generated Parquet, real pyiceberg commits to real catalogs (the embedded SQLite one,
and a PostgreSQL server this test starts on loopback), real readers (pyiceberg, Polars); the
fault test kills real `scorer score` processes at points they were seen at: stopped by the
``SCORER_PAUSE_AT`` hook, or a new metadata file written while the test holds the catalog's
write lock, never after a guessed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table
from sqlalchemy.exc import OperationalError
from support.faults import SLOW_HISTORY, TOTAL_SHARDS, stopped, wait_for
from support.inputs import make_history
from support.outputs import assert_once, commits
from support.servers import free_port

from scorer.cli import cli
from scorer.errors import OutputConflictError
from scorer.pipeline.entry import score
from scorer.pipeline.tables import PAUSE_ENV, RUN_KEY, RUNS_KEY

SLOW_ICEBERG = ["--batch-rows", "5", "--shard-rows", "500", "--format", "iceberg", "--json"]
TABLE = "scorer.scores"


def _catalog(out: Path) -> Catalog:
    """The embedded catalog, opened as a reader would (docs/iceberg.md)."""
    db = out / "_scorer" / "iceberg" / "catalog.db"
    return load_catalog("intent_scorer", uri=f"sqlite:///{db}")


def _table(out: Path) -> Table:
    return _catalog(out).load_table(TABLE)


def _rows(table: Table, snapshot_id: int | None = None) -> pa.Table:
    """A snapshot's rows as docs/iceberg.md reads them: through pyiceberg's batch reader, which
    casts every file to the table's types (``to_arrow`` keeps the score files' dictionary
    columns and cannot concatenate them with another writer's plain strings)."""
    return table.scan(snapshot_id=snapshot_id).to_arrow_batch_reader().read_all()


def _claimed_run(out: Path) -> str:
    return json.loads((out / "_scorer" / "output.json").read_text())["run_id"]


def test_an_iceberg_run_is_one_snapshot_read_by_pyiceberg_and_polars(tmp_path):
    history = make_history(tmp_path / "in", sessions=4_000, files=2, days=2, row_group_rows=1_000)
    out = tmp_path / "out"
    first = score(str(history), str(out), shard_rows=1_000, format="iceberg")
    assert first.exit_code == 0
    catalog_uri = f"sqlite:///{out}/_scorer/iceberg/catalog.db"
    assert first.iceberg is not None and first.iceberg["catalog_uri"] == catalog_uri
    assert first.iceberg["table"] == TABLE

    table = _table(out)
    snapshot = table.current_snapshot()
    assert snapshot is not None and snapshot.snapshot_id == first.iceberg["snapshot_id"]
    assert snapshot.summary[RUN_KEY] == first.run_id and snapshot.summary[RUNS_KEY] == first.run_id
    assert [f.name for f in table.spec().fields] == ["dt"]
    scores = _rows(table)
    assert_once(history, scores)
    assert set(scores["dt"].to_pylist()) == {"2026-11-26", "2026-11-27"}  # from the partitions
    assert scores.schema.field("intent_calibrated").type == pa.float32()
    polars = pl.scan_iceberg(table).group_by("dt").agg(pl.len()).collect()
    assert sorted(polars["len"].to_list()) == [2_000, 2_000]
    run_row = pq.read_table(out / "stats" / "runs" / f"run_id={first.run_id}").to_pylist()[0]
    assert run_row["iceberg"] == first.iceberg
    assert not list((out / "scores").glob("metadata")), "metadata belongs under scores/_iceberg"

    # Resuming with nothing to do publishes nothing: no empty snapshot.
    again = score(str(history), str(out), shard_rows=1_000, format="iceberg")
    assert again.shards_skipped == first.shards_committed and again.iceberg == first.iceberg
    assert len(_table(out).snapshots()) == 1

    # An overwrite of one day replaces exactly that day, in one snapshot; the other day stays,
    # and the first snapshot stays readable (its files are kept by the next run's cleanup).
    day = "2026-11-27"
    second = score(
        str(history),
        str(out),
        shard_rows=1_000,
        format="iceberg",
        overwrite=True,
        partition={"dt": day},
    )
    assert second.exit_code == 0 and second.iceberg["snapshot_id"] != first.iceberg["snapshot_id"]
    table = _table(out)
    assert len(table.snapshots()) == 2
    assert table.current_snapshot().summary.operation.value == "overwrite"
    latest = _rows(table)
    assert_once(history, latest)
    runs = Counter(zip(latest["dt"].to_pylist(), latest["run_id"].to_pylist()))
    assert runs == {("2026-11-26", first.run_id): 2_000, (day, second.run_id): 2_000}
    score(str(history), str(out), shard_rows=1_000, format="iceberg")
    assert_once(history, _rows(_table(out), first.iceberg["snapshot_id"]))


def test_a_reader_polling_the_current_snapshot_only_sees_whole_runs(tmp_path):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    seen: dict[int, tuple[int, frozenset[str]]] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.01):
            if not (out / "_scorer" / "iceberg" / "catalog.db").exists():
                continue  # opening a SQL catalog creates it: wait for the scorer's
            try:
                table = _table(out)
            except NoSuchTableError:  # not a table until the first run publishes
                continue
            except OperationalError:  # both created the catalog's tables at once: open again
                continue
            snapshot = table.current_snapshot()
            if snapshot is not None and snapshot.snapshot_id not in seen:
                rows = _rows(table, snapshot.snapshot_id).select(["run_id"])
                seen[snapshot.snapshot_id] = (rows.num_rows, frozenset(rows["run_id"].to_pylist()))

    options = dict(batch_rows=50, shard_rows=500, format="iceberg")
    with ThreadPoolExecutor(1) as reader:
        polling = reader.submit(poll)
        try:
            first = score(str(history), str(out), **options)
            second = score(str(history), str(out), overwrite=True, **options)
        finally:
            stop.set()
        polling.result(timeout=30)
    assert seen, "the reader saw no snapshot"
    assert all(rows == 6_000 and len(runs) == 1 for rows, runs in seen.values()), seen
    assert {run for _, runs in seen.values() for run in runs} == {first.run_id, second.run_id}
    assert seen[second.iceberg["snapshot_id"]][1] == {second.run_id}


@pytest.mark.slow
def test_a_driver_killed_before_during_and_after_the_catalog_commit_publishes_once(
    tmp_path, drivers, monkeypatch
):
    history = make_history(tmp_path / "in", **SLOW_HISTORY)
    out = tmp_path / "out"
    command = [str(history), str(out), *SLOW_ICEBERG]
    db = out / "_scorer" / "iceberg" / "catalog.db"

    # (1) Shards committed, no catalog commit yet: killed mid-run.
    first = drivers.start(*command)
    wait_for(lambda: commits(out) >= 1, 180, "the first commit")
    drivers.signal(first, signal.SIGSTOP)
    assert commits(out) < TOTAL_SHARDS, "the run ended before it could be killed mid-run"
    drivers.signal(first, signal.SIGKILL)
    drivers.wait(first, 30)
    assert not db.exists(), "a killed run published"

    # (2) Before the catalog commit: stopped with the table read and nothing committed.
    monkeypatch.setenv(PAUSE_ENV, "publish")
    second = drivers.start(*command)
    wait_for(lambda: stopped(second), 180, "the driver stopped before its catalog commit")
    drivers.signal(second, signal.SIGKILL)
    drivers.wait(second, 30)
    assert not db.exists(), "a driver killed before its commit published"

    # (3) After the catalog commit, before the run stats: the table holds everything once, and
    # the snapshot names the run that published it.
    monkeypatch.setenv(PAUSE_ENV, "published")
    third = drivers.start(*command)
    wait_for(lambda: stopped(third), 180, "the driver stopped after its catalog commit")
    drivers.signal(third, signal.SIGKILL)
    drivers.wait(third, 30)
    table = _table(out)
    published = table.current_snapshot()
    assert len(table.snapshots()) == 1 and published.summary[RUN_KEY] == _claimed_run(out)
    assert_once(history, _rows(table))

    monkeypatch.delenv(PAUSE_ENV)
    fourth = drivers.start(*command)
    code, stdout, stderr = drivers.wait(fourth, 180)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["shards_skipped"] == TOTAL_SHARDS
    assert summary["iceberg"]["snapshot_id"] == published.snapshot_id, "published twice"
    assert len(_table(out).snapshots()) == 1

    # (4) During the catalog commit: an --overwrite run stopped before its commit, let go while
    # the test holds the SQLite catalog's write lock, and killed once its new metadata file is
    # written (the commit's last step before the catalog's UPDATE, which the lock holds back).
    monkeypatch.setenv(PAUSE_ENV, "publish")
    fifth = drivers.start(*command, "--overwrite")
    wait_for(lambda: stopped(fifth), 180, "the overwrite stopped before its catalog commit")
    metadata = out / "scores" / "_iceberg"
    before = set(metadata.glob("*.metadata.json"))
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # readers go on; no other writer until ROLLBACK
    try:
        drivers.signal(fifth, signal.SIGCONT)
        wait_for(lambda: set(metadata.glob("*.metadata.json")) - before, 60, "new metadata")
        drivers.signal(fifth, signal.SIGKILL)
        drivers.wait(fifth, 30)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    table = _table(out)
    assert table.current_snapshot().snapshot_id == published.snapshot_id
    assert_once(history, _rows(table))

    # The run that resumes the overwrite publishes all of it once, in one snapshot that
    # replaces every file of the first publish.
    monkeypatch.delenv(PAUSE_ENV)
    last = drivers.start(*command)
    code, stdout, stderr = drivers.wait(last, 180)
    assert code == 0, stderr
    summary = json.loads(stdout)
    table = _table(out)
    assert len(table.snapshots()) == 2
    current = table.current_snapshot()
    assert current.summary[RUN_KEY] == summary["run_id"]
    assert summary["iceberg"]["snapshot_id"] == current.snapshot_id
    scores = _rows(table)
    assert_once(history, scores)
    (overwriting,) = set(scores["run_id"].to_pylist())
    assert overwriting != published.summary[RUN_KEY]
    assert overwriting in current.summary[RUNS_KEY].split(",")


@pytest.mark.slow
def test_a_concurrent_appender_of_another_day_is_neither_lost_nor_doubled(
    tmp_path, drivers, monkeypatch
):
    history = make_history(tmp_path / "in", sessions=2_000, files=2, days=2, row_group_rows=500)
    out = tmp_path / "out"
    first = score(str(history), str(out), shard_rows=500, format="iceberg")
    assert first.exit_code == 0

    # Our overwrite of one day stopped before its commit; another job appends its own day.
    monkeypatch.setenv(PAUSE_ENV, "publish")
    ours = drivers.start(
        str(history), str(out), "--shard-rows", "500", "--format", "iceberg", "--json",
        "--overwrite", "--partition", "dt=2026-11-27",
    )  # fmt: skip
    wait_for(lambda: stopped(ours), 180, "the driver stopped before its catalog commit")
    theirs = _table(out)
    other_day = pa.table(
        {
            f.name: pa.array([None] * 3, f.type) if f.name not in ("session_id", "dt") else None
            for f in theirs.schema().as_arrow()
        }
        | {"session_id": pa.array([-1, -2, -3], pa.int64()), "dt": pa.array(["2026-12-01"] * 3)}
    ).cast(theirs.schema().as_arrow())
    theirs.append(other_day)
    drivers.signal(ours, signal.SIGCONT)
    code, stdout, stderr = drivers.wait(ours, 180)
    assert code == 0, stderr

    table = _table(out)
    assert len(table.snapshots()) == 3
    scores = _rows(table)
    days = Counter(scores["dt"].to_pylist())
    assert days == {"2026-11-26": 1_000, "2026-11-27": 1_000, "2026-12-01": 3}
    mine = scores.filter(pa.compute.not_equal(scores["dt"], "2026-12-01"))
    assert_once(history, mine)
    runs = Counter(zip(mine["dt"].to_pylist(), mine["run_id"].to_pylist()))
    assert runs == {
        ("2026-11-26", first.run_id): 1_000,
        ("2026-11-27", json.loads(stdout)["run_id"]): 1_000,
    }
    # Their file is not the scorer's: the next run's cleanup keeps it, publishing leaves it.
    monkeypatch.delenv(PAUSE_ENV)
    score(str(history), str(out), shard_rows=500, format="iceberg")
    assert Counter(_rows(_table(out))["dt"].to_pylist())["2026-12-01"] == 3


def test_the_bad_cases_exit_2_and_say_why(tmp_path):
    history = make_history(tmp_path / "in", sessions=1_000, files=1, days=1, row_group_rows=500)
    runner = CliRunner()

    # An object-store OUTPUT without a catalog of its own.
    s3 = "s3://bucket/out?endpoint_override=127.0.0.1:9&scheme=http"
    result = runner.invoke(cli, ["score", str(history), s3, "--format", "iceberg"])
    assert result.exit_code == 2 and "needs a catalog: set iceberg.catalog_uri" in result.output

    # An unknown [iceberg] key: named, with the file.
    config = tmp_path / "job.toml"
    config.write_text('format = "iceberg"\n[iceberg]\ncatalg_uri = "sqlite:///x.db"\n')
    result = runner.invoke(
        cli, ["score", str(history), str(tmp_path / "o"), "--config", str(config)]
    )
    assert result.exit_code == 2
    assert "unknown key 'iceberg.catalg_uri'" in result.output and str(config) in result.output

    # A table whose schema disagrees with the scores: nothing published, nothing lost.
    out = tmp_path / "out"
    (out / "_scorer" / "iceberg").mkdir(parents=True)
    catalog = _catalog(out)
    catalog.create_namespace("scorer")
    wrong = pa.schema(
        [("session_id", pa.int64()), ("intent_raw", pa.float64()), ("dt", pa.string())]
    )
    catalog.create_table(TABLE, schema=wrong, location=f"file://{tmp_path}/theirs")
    result = runner.invoke(cli, ["score", str(history), str(out), "--format", "iceberg"])
    assert result.exit_code == 2, result.output
    assert "column 'intent_calibrated' is absent in the table" in result.output
    assert _table(out).current_snapshot() is None
    assert commits(out) >= 1  # the shards stay committed: a fixed table publishes them

    # A Parquet run on an Iceberg OUTPUT would delete what snapshots reference.
    good = tmp_path / "good"
    score(str(history), str(good), format="iceberg")
    with pytest.raises(OutputConflictError, match="an Iceberg table: pass --format iceberg"):
        score(str(history), str(good))
    with pytest.raises(OutputConflictError, match="an Iceberg table: pass --format iceberg"):
        score(str(history), str(good), format="delta")


# -- a catalog on a real PostgreSQL server -------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@contextlib.contextmanager
def _postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (trust authentication); yields its port.

    PostgreSQL refuses to run as root: as root, its files and process belong to ``nobody``.
    """
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install postgresql"
        )
    root = Path(tempfile.mkdtemp(prefix="scorer-pg-"))
    root.chmod(0o755)
    data, port = root / "data", free_port()
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    def demote() -> None:
        if user is not None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, preexec_fn=demote, cwd=root)

    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "scorer", "--auth=trust")
        options = f"-h 127.0.0.1 -p {port} -k {root}"
        run(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        )
        try:
            yield str(port)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_catalog_on_postgresql_with_its_password_redacted(tmp_path):
    history = make_history(tmp_path / "in", sessions=2_000, files=2, days=2, row_group_rows=500)
    out = tmp_path / "out"
    with _postgres() as port:
        uri = f"postgresql+psycopg2://scorer:s3cret-pw@127.0.0.1:{port}/postgres"
        config = tmp_path / "job.toml"
        config.write_text(
            f'format = "iceberg"\n[iceberg]\ncatalog_uri = "{uri}"\nnamespace = "scoring"\n'
            'table = "intent_scores"\n'
        )
        runner = CliRunner()
        result = runner.invoke(
            cli, ["score", str(history), str(out), "--config", str(config), "--json"]
        )
        assert result.exit_code == 0, result.output
        assert "s3cret" not in result.output
        described = json.loads(result.stdout)["iceberg"]
        assert described["catalog_uri"] == f"postgresql+psycopg2://***@127.0.0.1:{port}/postgres"
        assert described["table"] == "scoring.intent_scores"
        assert not (out / "_scorer" / "iceberg").exists(), (
            "a configured catalog needs no embedded one"
        )

        table = load_catalog("intent_scorer", uri=uri).load_table("scoring.intent_scores")
        assert table.current_snapshot().snapshot_id == described["snapshot_id"]
        assert_once(history, _rows(table))
        runs = pq.read_table(out / "stats" / "runs")
        assert "s3cret" not in json.dumps(runs.to_pylist(), default=str)

        overwrite = runner.invoke(
            cli, ["score", str(history), str(out), "--config", str(config), "--overwrite", "--json"]
        )
        assert overwrite.exit_code == 0, overwrite.output
        table = load_catalog("intent_scorer", uri=uri).load_table("scoring.intent_scores")
        assert len(table.snapshots()) == 2
        scores = _rows(table)
        assert_once(history, scores)
        assert set(scores["run_id"].to_pylist()) == {json.loads(overwrite.stdout)["run_id"]}


def test_a_partition_overwrite_replaces_that_day_alone_in_delta_too(tmp_path):
    """The shared publish (`tables.changes`) removes files within the run's partitions only:
    an `--overwrite --partition` drops every commit record, yet the other days stay published."""
    from deltalake import DeltaTable

    history = make_history(tmp_path / "in", sessions=2_000, files=2, days=2, row_group_rows=500)
    out = tmp_path / "out"
    first = score(str(history), str(out), shard_rows=1_000, format="delta")
    day = {"dt": "2026-11-27"}
    second = score(
        str(history), str(out), shard_rows=1_000, format="delta", overwrite=True, partition=day
    )
    scores = DeltaTable(str(out / "scores")).to_pyarrow_table()
    assert_once(history, scores)
    runs = Counter(zip(scores["dt"].to_pylist(), scores["run_id"].to_pylist()))
    assert runs == {("2026-11-26", first.run_id): 1_000, ("2026-11-27", second.run_id): 1_000}


@pytest.mark.slow
def test_an_s3_output_with_a_configured_catalog_publishes_and_resumes(tmp_path):
    """An s3:// OUTPUT (moto on loopback) with its catalog configured: pyiceberg writes the
    metadata next to the scores with the endpoint and credentials the scorer's URI and env give."""
    import pyarrow.fs as pafs
    from support.servers import moto_s3

    from scorer.config import IcebergConfig, JobConfig
    from scorer.jobs.generate import generate

    credentials = {"AWS_ACCESS_KEY_ID": "iceberg-key", "AWS_SECRET_ACCESS_KEY": "iceberg-5ecret"}
    with moto_s3(credentials) as endpoint:
        s3 = pafs.S3FileSystem(
            endpoint_override=endpoint, scheme="http", allow_bucket_creation=True
        )
        s3.create_dir("lake")
        query = f"endpoint_override={endpoint}&scheme=http"
        source, output = f"s3://lake/sessions?{query}", f"s3://lake/scored?{query}"
        generate(source, sessions=2_000, files=2, days=2, seed=5, row_group_rows=500)
        uri = f"sqlite:///{tmp_path}/catalog.db"
        config = JobConfig(iceberg=IcebergConfig(catalog_uri=uri))
        first = score(source, output, config=config, shard_rows=1_000, format="iceberg")
        assert first.exit_code == 0 and first.iceberg["catalog_uri"] == uri
        assert s3.get_file_info(pafs.FileSelector("lake/scored/scores/_iceberg")), "no metadata"
        again = score(source, output, config=config, shard_rows=1_000, format="iceberg")
        assert again.shards_skipped == first.shards_committed and again.iceberg == first.iceberg
        table = load_catalog(
            "intent_scorer",
            uri=uri,
            **{"s3.endpoint": f"http://{endpoint}", "s3.region": "us-east-1"},
            **{"s3.access-key-id": "iceberg-key", "s3.secret-access-key": "iceberg-5ecret"},
        ).load_table(TABLE)
        scores = _rows(table)
        assert scores.num_rows == 2_000 and len(set(scores["session_id"].to_pylist())) == 2_000
        assert set(scores["dt"].to_pylist()) == {"2026-11-26", "2026-11-27"}
