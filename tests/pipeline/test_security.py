"""The private local Ray is closed (docs/backfills.md): every socket on loopback, no dashboard, Ray's token
on the job endpoints its dashboard agent still serves, and the model checked before any actor.

The Ray examined is the test session's (``ray_cluster``), started by ``scorer.pipeline.cluster`` exactly as
``scorer score`` starts one; its processes are this process and its descendants.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from support.inputs import make_history

from scorer.errors import ChecksumError
from scorer.model.runtime import default_model_dir
from scorer.pipeline.entry import score

pytestmark = pytest.mark.usefixtures("ray_cluster")

DASHBOARD_PORT = 8265  # Ray's default; a dashboard would be served there


def _ray_processes() -> list[psutil.Process]:
    """The driver (this process) and every process of the Ray it started."""
    return [psutil.Process(), *psutil.Process().children(recursive=True)]


def _servers() -> list[tuple[str, str, int, int]]:
    """(process name, address, port, socket type) of every listening TCP and unconnected UDP
    socket of the local Ray."""
    found = []
    for process in _ray_processes():
        try:
            name = process.name()
            sockets = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue  # a worker that just exited
        for s in sockets:
            unconnected_udp = s.type == socket.SOCK_DGRAM and not s.raddr
            if s.status == psutil.CONN_LISTEN or unconnected_udp:
                found.append((name, s.laddr.ip, s.laddr.port, s.type))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1
    return ip.is_loopback


def _http(port: int, path: str, *, method: str = "GET", headers=None, body: bytes | None = None):
    """(status, content type, start of body) of a plain HTTP request to 127.0.0.1:port."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("content-type", ""), response.read(200)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read(200)


def test_every_socket_of_the_local_ray_is_on_loopback():
    servers = _servers()
    names = {name for name, *_ in servers}
    assert {"gcs_server", "raylet", "ray::DashboardAgent"} <= names, names  # Ray was examined
    outside = [server for server in servers if not _is_loopback(server[1])]
    assert not outside, f"listening beyond loopback: {outside}"


def test_no_dashboard_process_runs():
    """`include_dashboard=False` still starts Ray's dashboard process (for its usage-stats
    reporter); the private Ray skips it (`scorer.pipeline.cluster._no_dashboard_process`)."""
    commands = []
    for process in _ray_processes():
        try:
            commands.append(" ".join(process.cmdline()))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    assert any("raylet" in command for command in commands)  # Ray was examined
    assert not [c for c in commands if "dashboard/dashboard.py" in c], commands


def test_no_dashboard_is_served():
    import ray

    assert not ray._private.worker.get_dashboard_url()
    assert not ray._private.worker.global_worker.node.address_info.get("webui_url")
    tcp = [(name, port) for name, _, port, kind in _servers() if kind == socket.SOCK_STREAM]
    assert DASHBOARD_PORT not in {port for _, port in tcp}
    for name, port in tcp:
        try:
            _status, content_type, body = _http(port, "/")
        except (OSError, http.client.HTTPException):  # gRPC ports do not speak HTTP/1
            continue
        assert "html" not in content_type and b"<html" not in body.lower(), (
            f"{name} serves a web page on port {port}"
        )


def _agent_port() -> int:
    """The dashboard agent's HTTP port, as the agent recorded it in the session folder."""
    import ray

    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    recorded = session / f"dashboard_agent_listen_port_{ray.get_runtime_context().get_node_id()}"
    port = int(recorded.read_text())
    if port == -1:
        pytest.skip("the dashboard agent's HTTP server is off (its port was taken by another Ray)")
    owners = {name for name, _, p, _ in _servers() if p == port}
    assert owners == {"ray::DashboardAgent"}, f"port {port} belongs to {owners}, not our agent"
    return port


def _token_header() -> dict[str, str]:
    """The header Ray's own clients send: the token from RAY_AUTH_TOKEN or ~/.ray/auth_token."""
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    headers = get_auth_headers_if_auth_enabled({})
    assert headers.get("authorization", "").startswith("Bearer "), "token auth is off"
    return headers


_JOB = json.dumps({"entrypoint": "echo pwned", "submission_id": "scorer-security-test"}).encode()
_JSON = {"Content-Type": "application/json"}


def test_no_http_server_of_the_local_ray_takes_a_job_without_the_token():
    answered = 0
    for name, _, port, kind in _servers():
        if kind != socket.SOCK_STREAM:
            continue
        for path in ("/api/job_agent/jobs/", "/api/jobs/"):  # the agent's and the dashboard's
            try:
                status, _, body = _http(port, path, method="POST", headers=_JSON, body=_JOB)
            except (OSError, http.client.HTTPException):  # gRPC ports do not speak HTTP/1
                break
            answered += 1
            assert status >= 400, f"{name} on port {port} took a job at {path}: {status} {body}"
    assert answered  # the metrics and agent servers speak HTTP: the sweep reached them


def test_job_submission_to_the_dashboard_agent_needs_the_token():
    port = _agent_port()
    submit = dict(path="/api/job_agent/jobs/", method="POST", body=_JOB)

    status, _, body = _http(port, headers=_JSON, **submit)
    assert status == 401, body
    wrong = {"Authorization": "Bearer not-the-token"}
    status, _, body = _http(port, headers=_JSON | wrong, **submit)
    assert status == 403, body

    # With the token the agent answers the request itself: here, that no such job was submitted.
    logs = "/api/job_agent/jobs/scorer-security-test/logs"
    status, _, body = _http(port, logs, headers=_token_header())
    assert status == 404 and b"does not exist" in body, body


def test_a_tampered_model_is_refused_before_any_actor_starts(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("model.onnx", "model.json"):
        (model / name).write_bytes((default_model_dir() / name).read_bytes())
    with (model / "model.onnx").open("r+b") as graph:
        graph.seek(-1, 2)
        last = graph.read(1)
        graph.seek(-1, 2)
        graph.write(bytes([last[0] ^ 0xFF]))
    history = make_history(tmp_path / "in", sessions=200, files=1, days=1)

    def actors() -> set[int]:
        pids = set()
        for p in psutil.Process().children(recursive=True):
            # A child can end (or be a zombie) between the listing and the read of its cmdline.
            with contextlib.suppress(psutil.Error):
                if " ".join(p.cmdline()).startswith("ray::ScoringActor"):
                    pids.add(p.pid)
        return pids

    before = actors()
    with pytest.raises(ChecksumError, match="sha256"):
        score(str(history), str(tmp_path / "out"), model=str(model), actors=1)
    assert actors() <= before
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_token_auth_stays_on_when_ray_was_imported_first_and_the_shell_disables_it():
    # A notebook or a Ray job script imports ray before it scores: Ray has cached its config
    # by then, and the user's environment says RAY_AUTH_MODE=disabled.
    program = (
        "import ray\n"
        "from ray._raylet import AuthenticationMode, get_authentication_mode\n"
        "from scorer.pipeline.cluster import ray_session\n"
        "with ray_session(num_cpus=1) as cluster:  # it asks the GCS for the nodes: authenticated\n"
        "    assert get_authentication_mode() == AuthenticationMode.TOKEN\n"
        "print('token', cluster.local)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "token True" in done.stdout
