"""Job processes over tcp with CURVE (for cluster launchers): real parents and job processes."""

from __future__ import annotations

import socket

import psutil
import pytest
import zmq

from flrunner.security.kit import load_kit
from flrunner.transport.wire import Message, decode, encode

from .support import provision_project


@pytest.fixture
def project(tmp):
    return provision_project(tmp, ["site-1"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_peers(pid: int) -> set[int]:
    """The remote ports of a process's established tcp connections."""
    return {c.raddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.raddr}


@pytest.mark.parametrize("launcher", ["warm", "cold"])
def test_job_processes_connect_over_tcp_with_curve(start_parent, project, make_job, launcher):
    parent = start_parent("--kit", str(project / "parent"), "--jobs", "tcp://127.0.0.1:*", "--launcher", launcher)
    endpoint = parent.info["jobs"]
    assert endpoint.startswith("tcp://127.0.0.1:")
    port = int(endpoint.rsplit(":", 1)[1])
    sleeper = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    pid = parent.wait_status(sleeper, lambda j: j["status"] == "RUNNING")["pid"]
    assert port in tcp_peers(pid)
    parent.admin.abort(sleeper)
    assert parent.wait_final(sleeper)["status"] == "FINISHED:ABORTED"
    done = parent.admin.submit(make_job([("wf", "Progress", {"steps": 3})]))
    assert parent.wait_final(done)["status"] == "FINISHED:COMPLETED"


def hello(endpoint: str, curve: tuple[bytes, bytes, bytes] | None, timeout_ms: int = 1500) -> Message | None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = curve
    sock.connect(endpoint)
    try:
        sock.send_multipart(encode(Message("hello", {"job_id": "x" * 36, "secret": "guess", "pid": 1}, id=1)))
        return decode(sock.recv_multipart()) if sock.poll(timeout_ms) else None
    finally:
        sock.close()


def test_the_tcp_jobs_socket_needs_curve_and_a_jobs_secret(start_parent, project, make_job):
    parent = start_parent("--kit", str(project / "parent"), "--jobs", "tcp://127.0.0.1:*")
    endpoint = parent.info["jobs"]
    assert hello(endpoint, None) is None  # plaintext never completes the handshake
    reply = hello(endpoint, (*zmq.curve_keypair(), load_kit(project / "parent").public_key))
    assert reply is not None and reply.rc in ("UNAUTHORIZED", "NOT_FOUND"), reply
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})]))
    assert parent.wait_final(job_id)["status"] == "FINISHED:COMPLETED"  # the real job is served all along


@pytest.mark.slow
def test_a_tcp_job_is_re_adopted_by_a_restarted_parent(start_parent, project, make_job):
    args = ["--kit", str(project / "parent"), "--jobs", f"tcp://127.0.0.1:{free_port()}"]
    parent = start_parent(*args)
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 4})]))
    pid = parent.wait_status(job_id, lambda j: j["status"] == "RUNNING")["pid"]
    parent.kill9()
    again = start_parent(*args, name="parent2")
    job = again.wait_final(job_id, timeout=30)
    assert job["status"] == "FINISHED:COMPLETED" and job["pid"] == pid, job["history"]
    assert any("re-adopted" in h["reason"] for h in job["history"]), job["history"]


def test_a_tcp_jobs_endpoint_needs_a_kit(procs, tmp):
    p = procs.spawn(["-m", "flrunner", "parent", "--workspace", str(tmp / "ws"), "--sites", "tcp://127.0.0.1:*",
                     "--jobs", "tcp://127.0.0.1:*"], "parent-no-kit")
    assert p.wait(20) == 1
    assert "needs the parent's kit" in procs.output("parent-no-kit")
