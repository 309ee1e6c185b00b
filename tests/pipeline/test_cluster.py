"""The scorer on a real 2-node Ray cluster started here with `ray start`, token auth on.

Ray 2.60's gRPC servers (GCS, raylets) listen on every interface unless the node's address is
127.0.0.1, and a second node cannot join as 127.0.0.1 (Ray swaps it for the primary interface's
address). So the cluster runs in a private network namespace whose only interface is `lo`: nodes
at 127.0.0.2 and 127.0.0.3, and nothing it listens on is reachable from anywhere else. Every
command that talks to it (the drivers, `ray job submit`, an S3 server) runs in that namespace
too. Teardown kills exactly the processes in the namespace, by pid.

The cluster's environment has no AWS credentials, as on a real cluster: what the actors need
for s3:// must come from the driver through the runtime environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from support.faults import stopped_writing_a_shard, wait_for

from scorer.jobs.generate import generate

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEAD, WORKER, PORT, DASHBOARD = "127.0.0.2", "127.0.0.3", 6379, 8265
ADDRESS = f"{HEAD}:{PORT}"
DAY = "2026-11-27"

# Brings `lo` up in the new namespace (it starts down), then holds the namespace open.
_HOLDER = """
import fcntl, signal, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
print("up", flush=True)
signal.pause()
"""


class Cluster:
    """A 2-node Ray in a private network namespace; `run` executes a command inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = secrets.token_hex(16)
        self.temp_dir = root / "ray"
        home = root / "home"  # no ~/.ray/auth_token of the user's
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
        self.env = env | {
            "HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
        }
        root_user = os.geteuid() == 0
        unshare = ["unshare", "-n"] if root_user else ["unshare", "-rn"]
        self.holder = subprocess.Popen(
            [*unshare, sys.executable, "-c", _HOLDER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self.holder.stdout.readline().strip() != "up":
            self.holder.wait(timeout=10)
            pytest.skip(
                f"no private network namespace here ({self.holder.stderr.read().strip()}); "
                "these tests never run Ray on a non-loopback interface"
            )
        self.netns = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        self.enter = ["nsenter", "-t", str(self.holder.pid), "-n"]
        if not root_user:
            self.enter[3:3] = ["-U", "--preserve-credentials"]

    def run(self, *args, env=None, timeout=120, check=False) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.enter, *map(str, args)],
            env=env or self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def popen(self, *args, env=None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(
            [*self.enter, *map(str, args)], env=env or self.env, cwd=REPO, text=True, **kwargs
        )

    def start(self) -> None:
        common = ["--num-cpus", "1", "--temp-dir", self.temp_dir, "--disable-usage-stats"]
        self.run(
            BIN / "ray",
            "start",
            "--head",
            "--node-ip-address",
            HEAD,
            "--port",
            PORT,
            "--dashboard-host",
            HEAD,
            "--dashboard-port",
            DASHBOARD,
            *common,
            check=True,
        )
        self.run(
            BIN / "ray",
            "start",
            "--address",
            ADDRESS,
            "--node-ip-address",
            WORKER,
            *common,
            check=True,
        )

    def processes(self) -> list[psutil.Process]:
        """Every process in the namespace but the holder: all of them started by this fixture."""
        found = []
        for proc in psutil.process_iter():
            try:
                if (
                    proc.pid != self.holder.pid
                    and os.readlink(f"/proc/{proc.pid}/ns/net") == self.netns
                ):
                    found.append(proc)
            except OSError:
                continue
        return found

    def worker_raylet(self) -> psutil.Process:
        for proc in self.processes():
            try:
                if proc.name() == "raylet" and f"--node_ip_address={WORKER}" in proc.cmdline():
                    return proc
            except psutil.Error:
                continue
        raise AssertionError("no raylet of the worker node")

    def stop(self) -> None:
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.holder.send_signal(signal.SIGKILL)
        self.holder.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster():
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is needed to keep the test cluster on loopback")
    # Short: Ray's unix socket paths live under the temp dir and must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="scl-", dir="/tmp"))
    made = Cluster(root)
    try:
        made.start()
        yield made
    finally:
        made.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """8,000 labelled sessions, 4 files over 2 days, 40 row groups of 200 rows: 40 small shards."""
    root = tmp_path_factory.mktemp("sessions")
    generate(root, sessions=8_000, files=4, days=2, seed=5, row_group_rows=200)
    return root


def _score_command(sessions, out, *extra):
    """`scorer score` on the cluster, 40 shards of 200 rows."""
    return [BIN / "scorer", "score", sessions, out, "--address", ADDRESS, "--json",
            "--shard-rows", "200", *extra]  # fmt: skip


def _score(cluster, sessions, out, *extra, env=None, timeout=180):
    return cluster.run(
        *_score_command(sessions, out, *extra),
        env=env,
        timeout=timeout,
    )


def _scoring_actors_under(raylet: psutil.Process) -> list[psutil.Process]:
    """The scoring actors of one node: Ray starts a node's workers as children of its raylet."""
    found = []
    for process in raylet.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if " ".join(process.cmdline()).startswith("ray::ScoringActor"):
                found.append(process)
    return found


def _exactly_once(sessions, out):
    keys = ds.dataset(out / "scores", format="parquet").to_table(columns=["session_id"])[
        "session_id"
    ]
    expected = ds.dataset(sessions, format="parquet").count_rows()
    assert len(keys) == expected == pc.count_distinct(keys).as_py()


def _shard_stats(out, run_id):
    return pq.read_table(out / "stats" / "shards" / f"run_id={run_id}").to_pylist()


def test_a_run_spreads_over_both_nodes_exactly_once_on_loopback_only(cluster, sessions, tmp_path):
    out = tmp_path / "out"
    result = _score(cluster, sessions, out, "--cpus-per-actor", "1", "--memory-per-actor-mb", "256")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["nodes"] == 2 and summary["actors"] == 2 and summary["shards_committed"] == 40
    assert set(summary["rows_per_node"]) == {HEAD, WORKER}
    committed = [
        row for row in _shard_stats(out, summary["run_id"]) if row["status"] == "committed"
    ]
    assert len({row["node_id"] for row in committed}) == 2
    assert {row["node_ip"] for row in committed} == {HEAD, WORKER}
    _exactly_once(sessions, out)

    # Nothing the cluster runs can be reached but over loopback: the namespace has only `lo`,
    # and every connection it holds is between loopback addresses.
    interfaces = Path(f"/proc/{cluster.holder.pid}/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in interfaces] == ["lo"]
    for proc in cluster.processes():
        for conn in proc.net_connections("inet"):
            for addr in (conn.laddr, conn.raddr):
                if addr and addr.ip not in ("0.0.0.0", "::"):
                    assert addr.ip.removeprefix("::ffff:").startswith("127."), (proc, conn)


def test_a_driver_without_the_token_fails_fast_saying_what_to_set(cluster, sessions, tmp_path):
    no_mode = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    started = time.monotonic()
    result = _score(cluster, sessions, tmp_path / "a", env=no_mode, timeout=60)
    assert result.returncode == 2 and time.monotonic() - started < 20
    assert "requires token authentication. Set RAY_AUTH_MODE=token" in result.stderr
    assert "ray get-auth-token" in result.stderr and cluster.token not in result.stderr

    wrong = cluster.env | {"RAY_AUTH_TOKEN": "not-the-token"}
    result = _score(cluster, sessions, tmp_path / "b", env=wrong, timeout=60)
    assert result.returncode == 2 and "refused this process's token" in result.stderr
    assert "InvalidAuthToken" not in result.stderr  # Ray's retry log stays quiet


def test_ray_job_submit_of_the_nightly_job(cluster, sessions, tmp_path):
    config = tmp_path / "nightly.toml"
    config.write_text(
        f'input = "{sessions}"\noutput = "{tmp_path / "out"}"\nshard_rows = 1000\n'
        "[ray]\ncpus_per_actor = 1.0\nmemory_per_actor_mb = 256\n"
    )
    result = cluster.run(
        BIN / "ray",
        "job",
        "submit",
        "--address",
        f"http://{HEAD}:{DASHBOARD}",
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/nightly_backfill.py",
        "--config",
        config,
        "--date",
        DAY,
        timeout=240,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    scored = ds.dataset(
        tmp_path / "out" / "scores", format="parquet", partitioning="hive"
    ).to_table()
    assert set(scored["dt"].to_pylist()) == {DAY} and scored.num_rows == 4_000


def test_s3_to_s3_on_a_cluster_that_has_no_credentials(cluster, tmp_path):
    port, secret = 9000, "secret-" + secrets.token_hex(8)
    moto = cluster.popen(
        BIN / "moto_server",
        "-H",
        "127.0.0.1",
        "-p",
        port,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    creds = cluster.env | {
        "AWS_ACCESS_KEY_ID": "cluster-test",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    query = f"endpoint_override=127.0.0.1:{port}&scheme=http"
    try:
        cluster.run(
            sys.executable,
            "-c",
            f"""
import time, pyarrow.fs as fs
for _ in range(100):
    try:
        fs.S3FileSystem(endpoint_override="127.0.0.1:{port}", scheme="http",
                        allow_bucket_creation=True).create_dir("lake"); break
    except OSError: time.sleep(0.2)
""",
            env=creds,
            check=True,
        )
        cluster.run(
            BIN / "scorer",
            "generate",
            f"s3://lake/sessions?{query}",
            "--sessions",
            3000,
            "--files",
            2,
            "--days",
            1,
            "--seed",
            3,
            env=creds,
            check=True,
        )
        result = cluster.run(
            BIN / "scorer",
            "score",
            f"s3://lake/sessions?{query}",
            f"s3://lake/scored?{query}",
            "--address",
            ADDRESS,
            "--json",
            env=creds,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout)
        assert summary["rows"] == 3000 and summary["shards_failed"] == 0
        assert secret not in result.stdout + result.stderr
        check = cluster.run(
            sys.executable,
            "-c",
            f"""
import pyarrow.dataset as ds, pyarrow.fs as pafs
s3 = pafs.S3FileSystem(endpoint_override="127.0.0.1:{port}", scheme="http")
print(ds.dataset("lake/scored/scores", filesystem=s3, format="parquet").count_rows())
""",
            env=creds,
            check=True,
        )
        assert check.stdout.strip() == "3000"
        # The secret reached the actors only through their runtime environment: no Ray log holds it.
        for path in cluster.temp_dir.rglob("*"):
            if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", ".json"):
                assert secret not in path.read_text(errors="replace"), path
    finally:
        moto.kill()
        moto.wait(timeout=10)


def test_losing_the_worker_node_mid_run_retries_its_shard_on_the_head(cluster, sessions, tmp_path):
    """Last in the module: the worker node does not come back."""
    out = tmp_path / "out"
    raylet = cluster.worker_raylet()
    log = tmp_path / "driver.err"  # read at the end: a pipe left unread could fill and stall it
    with open(log, "w") as err:
        # 100 batches a shard: each stays in flight long enough to be seen.
        driver = cluster.popen(
            *_score_command(sessions, out, "--batch-rows", "2"),
            stdout=subprocess.PIPE,
            stderr=err,
        )

    def worker_node_actors() -> list[psutil.Process]:
        if driver.poll() is not None:
            raise AssertionError("the run ended before a shard was seen on the worker node")
        return _scoring_actors_under(raylet)

    # The node is lost while one of its actors is seen writing a shard (stopped there, so the
    # shard cannot finish first): its raylet and every process under it die at once.
    wait_for(
        lambda: stopped_writing_a_shard(out, worker_node_actors),
        120,
        "a shard in flight on the worker node",
    )
    node = [raylet, *raylet.children(recursive=True)]
    for process in node:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    stdout, _ = driver.communicate(timeout=150)
    stderr = log.read_text()
    assert driver.returncode == 0 and stdout, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["shards_failed"] == 0 and summary["shards_committed"] == 40
    stats = _shard_stats(out, summary["run_id"])
    died = [row for row in stats if row["status"] == "failed"]
    assert died and all("actor died" in row["error"] for row in died)
    head_node = {row["node_id"] for row in stats if row["node_ip"] == HEAD}
    for row in died:
        retried = [
            r for r in stats if r["shard_id"] == row["shard_id"] and r["status"] == "committed"
        ]
        assert len(retried) == 1 and retried[0]["attempt"] == row["attempt"] + 1
        assert retried[0]["node_id"] in head_node
    _exactly_once(sessions, out)
