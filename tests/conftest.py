"""Fixtures that start real parents, sites and job processes, and always end them.

Every process a test starts runs in its own process group and has its cwd under the test's
temporary folder; teardown SIGTERMs then SIGKILLs those groups, and the ``procs`` fixture fails
the test if any process with its cwd under that folder is still alive afterwards (job processes
run in their run dir inside the workspace, so a leaked job is caught too).

Only fixtures live here; what they are built from (the process harness, `ParentHandle`, the job
folder builder, the fake clock, raw peers) is in ``tests/support``, which test modules import.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil
import pytest
import zmq

from flrunner.util.processes import Processes

from .support import JobFolders, ParentHandle, Supervisor, provision_project, runtime_processes_under, wait_for
from .support.processes import describe_all, end_leftovers


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def mount_tmpfs(tmp: Path):
    """``mount_tmpfs(name="disk", size="8m")`` -> a small tmpfs mounted at ``tmp/name``: a disk that
    fills up. Tests run as root in CI; where the mount is refused the test is skipped with the
    reason. Request this fixture before ``start_parent``/``procs``, so the processes are ended
    before it is unmounted."""
    mounted: list[Path] = []

    def mount(name: str = "disk", size: str = "8m") -> Path:
        mnt = tmp / name
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs for a full disk ({r.stderr.strip() or r.returncode}): needs root")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in reversed(mounted):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # still busy: detach it now


@pytest.fixture
def procs(tmp: Path):
    """Start processes for a test; end them at teardown and fail if any process outlives it."""
    tracker = Processes(tmp)
    yield tracker
    tracker.stop_all()
    left = end_leftovers(tmp)
    assert not left, f"processes left behind (now killed): {left}"


@pytest.fixture
def start_parent(procs: Processes, tmp: Path):
    """``start_parent(*extra_cli_args, workspace=None, name="parent")`` -> `ParentHandle`."""
    handles: list[ParentHandle] = []

    def start(*args: str, workspace: Path | None = None, name: str = "parent") -> ParentHandle:
        h = ParentHandle(procs, workspace or tmp / "ws", name, list(args))
        handles.append(h)
        return h

    yield start
    for h in handles:
        h.admin.close()


@pytest.fixture
def parent(start_parent) -> ParentHandle:
    """A parent with short graces so abort and shutdown tests run fast."""
    return start_parent("--abort-grace", "1", "--term-grace", "1", "--site-timeout", "5")


@pytest.fixture
def start_site(procs: Processes):
    """``start_site(parent, name)`` -> the site's Popen; it is logged in when this returns."""

    def start(parent: ParentHandle, name: str, wait: bool = True) -> subprocess.Popen:
        p = procs.spawn(["-m", "flrunner", "site", "--name", name, "--server", parent.sites_endpoint], f"site-{name}")
        if wait:
            wait_for(lambda: any(c["name"] == name for c in parent.admin.clients()), 15, f"site {name} to log in")
        return p

    return start


@pytest.fixture
def make_job(tmp: Path):
    """``make_job(workflows, components=(), name="test-job", site_app=None, sites=None, **meta)`` -> a job folder.

    ``workflows`` and ``components`` are lists of ``(id, class, args)``; a class is a name in
    ``tests/job_components.py`` or ``module.Class`` for any ``tests/job_components*.py`` module (all
    of them are copied into the job's ``custom/`` folders).
    ``site_app``, if given, is ``{"components": [...], "executors": [(tasks, class name, args), ...]}``
    and is deployed to ``sites`` (a list of names, default ``["@ALL"]``-style: every site).
    Extra keyword arguments go into ``meta.json``.
    """
    return JobFolders(tmp)


@pytest.fixture
def peers():
    """``connect(endpoint, identity=None)`` -> a raw DEALER; every socket is closed at teardown."""
    ctx = zmq.Context()
    opened: list[zmq.Socket] = []

    def connect(endpoint: str, identity: bytes | None = None) -> zmq.Socket:
        assert endpoint.startswith(("ipc://", "tcp://127.0.0.1:")), endpoint
        sock = ctx.socket(zmq.DEALER)
        opened.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 5000)  # never hang a test on a dead parent
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        sock.connect(endpoint)
        return sock

    yield connect
    for sock in opened:
        sock.close(0)
    ctx.term()


@pytest.fixture
def project(tmp: Path) -> Path:
    """A provisioned project (``tmp/project``): kits for the parent, sites ``site-1`` and ``site-2``, admin ``alice``."""
    return provision_project(tmp, ["site-1", "site-2"], ["alice"])


@pytest.fixture
def sup(procs: Processes, tmp: Path):
    """``scripts/flrunner-supervisor``, run with cwd=tmp (a `Supervisor`); its watchdogs and parents are
    ended at teardown (then ``procs`` checks that nothing is left)."""
    runner = Supervisor(tmp)
    yield runner
    runner.end_all()


# --- session-wide: no runtime process outlives the test session ----------------------------------------

@pytest.fixture(scope="session", autouse=True)
def no_runtime_process_outlives_the_session(tmp_path_factory):
    """At the end of the session, fail the run if a parent, job process or site started by it is still
    alive: list them, kill them, then fail (as an error in this fixture's teardown)."""
    base = tmp_path_factory.getbasetemp()
    yield
    deadline = time.monotonic() + 3  # processes the last teardown signalled may still be exiting
    left = runtime_processes_under(base)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = runtime_processes_under(base)
    if not left:
        return
    described = describe_all(left)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            continue
    pytest.fail(f"{len(left)} flrunner process(es) outlived the test session (now killed):\n  "
                + "\n  ".join(described), pytrace=False)
