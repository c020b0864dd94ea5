"""The workspace under an unlucky operator: files deleted while the parent runs, a workspace the
parent cannot use at start, and a WAL left large after a burst. Real parents, real job processes.

- parent.json, the socket dir (in the workspace, or the short one under /tmp for a long
  workspace path) and parent.lock deleted while the parent runs are put back at the next
  housekeeping tick; a running job keeps working throughout.
- A corrupt job store, a read-only workspace, a workspace that is a file, a path too long and a
  taken sites port each stop ``flrunner parent`` with one line naming what is wrong and exit
  status 1, never a traceback; `FLRunner.start` raises the same named errors.
- After a burst of writes and a quiet period the WAL is truncated to 0 bytes.

Waits are on files, pids and status (``wait_for``), never bare sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flrunner import FLRunner, JobStoreError, WorkspaceError
from flrunner.admin.client import AdminClient, find_parent
from flrunner.errors import EndpointError, ParentUnavailable
from flrunner.workspace import Workspace
from parent.jobs.store import JobStore

from .support import ParentHandle, Processes, wait_for

TICKER = "job_components_faults.Ticker"


def cli_jobs(workspace: Path) -> subprocess.CompletedProcess:
    """``flrunner jobs --json`` on ``workspace``, as an operator would type it."""
    return subprocess.run([sys.executable, "-m", "flrunner", "jobs", "--json", "--workspace", str(workspace),
                           "--timeout", "3"], capture_output=True, text=True, timeout=60)


def admin_reaches(parent: ParentHandle) -> bool:
    """Whether a new admin connection, found through parent.json, gets an answer from ``parent``."""
    try:
        info = find_parent(parent.workspace)
    except ParentUnavailable:
        return False
    if info.get("pid") != parent.pid:
        return False
    with AdminClient(info["admin"], timeout=2) as admin:
        try:
            admin.jobs()
        except ParentUnavailable:
            return False
    return True


def parent_log(parent: ParentHandle) -> str:
    return (parent.workspace / "parent.log").read_text(errors="replace")


# --- deleted while the parent runs ----------------------------------------------------------------
def test_deleted_parent_json_is_recreated(parent):
    info_path = parent.workspace / "parent.json"
    before = json.loads(info_path.read_text())
    info_path.unlink()
    wait_for(info_path.exists, 10, "the parent to recreate parent.json")
    assert json.loads(info_path.read_text()) == before  # the same endpoints and start time
    result = cli_jobs(parent.workspace)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert "parent.json was deleted while this parent" in parent_log(parent)


def test_parent_json_of_another_running_parent_is_left_alone(parent):
    info_path = parent.workspace / "parent.json"
    # This test's own process stands in for "another parent that is running".
    other = dict(json.loads(info_path.read_text()), pid=os.getpid())
    info_path.write_text(json.dumps(other))
    wait_for(lambda: "names another running parent" in parent_log(parent), 10, "the parent to report it")
    assert json.loads(info_path.read_text())["pid"] == os.getpid()
    info_path.unlink()  # once the other one is gone, this parent publishes itself again
    wait_for(lambda: admin_reaches(parent), 10, "the parent to publish itself again")


def test_deleted_lock_file_is_taken_again(parent, procs: Processes):
    lock = parent.workspace / "parent.lock"
    lock.unlink()
    wait_for(lambda: "parent.lock was deleted" in parent_log(parent), 10, "the parent to lock a new parent.lock")
    second = procs.spawn(["-m", "flrunner", "parent", "--workspace", str(parent.workspace), "--sites",
                          "tcp://127.0.0.1:*", "--launcher", "cold"], "second")
    try:
        rc = second.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a second parent runs on the workspace:\n{procs.output('second')}")
    assert rc == 1
    assert "another parent" in procs.output("second")
    assert admin_reaches(parent)


@pytest.mark.parametrize("where", ["in the workspace", "under /tmp"])
def test_deleted_socket_dir_is_recreated_and_jobs_keep_running(where, start_parent, make_job, tmp):
    workspace = tmp / "ws" if where == "in the workspace" else tmp / ("deep" * 20) / "ws"
    ws = Workspace(workspace)
    assert ws.get_socket_dir().startswith("/tmp/flrunner-") == (where == "under /tmp")
    parent = start_parent(workspace=workspace)
    job_id = parent.admin.submit(make_job([("wf", TICKER, {"steps": 10_000, "interval": 0.1,
                                                            "finish_file": "finish"})]))
    step = lambda: ((parent.admin.status(job_id).get("progress") or {}).get("step") or 0)  # noqa: E731
    wait_for(lambda: step() >= 2, 20, "the job to report progress")

    shutil.rmtree(ws.get_socket_dir())
    wait_for(lambda: admin_reaches(parent), 10, "a new admin connection to reach the parent")
    result = cli_jobs(workspace)
    assert result.returncode == 0, result.stderr
    assert [j["job_id"] for j in json.loads(result.stdout)] == [job_id]
    assert os.stat(ws.get_socket_dir()).st_mode & 0o777 == 0o700
    assert "socket dir" in parent_log(parent)

    # The running job reports on through its connection, and finishes.
    reached = step()
    wait_for(lambda: step() >= reached + 3, 20, "the job to report further progress")
    (workspace / "jobs" / job_id / "finish").touch()
    assert parent.wait_final(job_id)["status"] == "FINISHED:COMPLETED"
    # A job process started now connects through the socket bound again.
    again = parent.admin.submit(make_job([("wf", "Progress", {"steps": 2})]))
    assert parent.wait_final(again)["status"] == "FINISHED:COMPLETED"


# --- a workspace the parent cannot use -----------------------------------------------------------------------
def parent_refuses(procs: Processes, workspace: str | Path, name: str, *args: str) -> str:
    """Start ``flrunner parent`` on ``workspace``; it must exit 1 with one line on stderr: return it."""
    p = procs.spawn(["-m", "flrunner", "parent", "--workspace", str(workspace), "--sites", "tcp://127.0.0.1:*",
                     "--launcher", "cold", *args], name)
    try:
        rc = p.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the parent started on {str(workspace)[:200]}:\n{procs.output(name)}")
    out = procs.output(name)  # the parent prints nothing on stdout: this is its stderr
    assert "Traceback" not in out, out
    assert rc == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flrunner parent: error: "), out
    assert len(lines[0]) < 600, lines[0]
    return lines[0]


def test_corrupt_job_store(procs, tmp):
    workspace = tmp / "ws"
    workspace.mkdir()
    (workspace / "jobs.db").write_bytes(os.urandom(64 * 1024))
    line = parent_refuses(procs, workspace, "corrupt")
    assert f"job store {workspace}/jobs.db is not a SQLite database" in line
    assert "move it aside" in line


def test_job_store_with_damaged_pages(procs, tmp):
    workspace = tmp / "ws"
    workspace.mkdir()
    store = JobStore(str(workspace / "jobs.db"))
    for i in range(40):
        store.add(f"job-{i}", "n", "/nowhere", {"padding": "x" * 500})
    store.close()  # a clean close folds the WAL into jobs.db
    with open(workspace / "jobs.db", "r+b") as f:  # a SQLite file opens; its third page is garbage
        f.seek(2 * 4096)
        f.write(b"\xff" * 4096)
    line = parent_refuses(procs, workspace, "damaged")
    assert f"job store {workspace}/jobs.db is corrupt (Page 3: " in line and "move it aside" in line


def test_workspace_that_is_a_file(procs, tmp):
    (tmp / "ws").write_text("not a folder")
    line = parent_refuses(procs, tmp / "ws", "file")
    assert line.endswith(f"workspace {tmp / 'ws'} is a file, not a directory")


def test_workspace_path_too_long(procs, tmp):
    line = parent_refuses(procs, tmp / ("x" * 300) / "ws", "long-name")
    assert "is too long" in line and "300 bytes, over the limit of 255 (NAME_MAX)" in line
    deep = tmp.joinpath(*["y" * 200] * 25)
    line = parent_refuses(procs, deep, "long-path")
    assert "is too long" in line and "over the limit of 4096 (PATH_MAX)" in line


def test_sites_port_taken(procs, tmp):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = parent_refuses(procs, tmp / "ws", "port", "--sites", f"tcp://127.0.0.1:{port}")
    assert line.endswith(f"cannot bind the sites socket to tcp://127.0.0.1:{port}: Address already in use")


@pytest.fixture
def read_only_mount(tmp):
    """A small tmpfs in the test's folder; the test remounts it read-only with the returned function."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    mnt = tmp / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def make_read_only() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)

    yield mnt, make_read_only
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_read_only_new_workspace(procs, read_only_mount):
    mnt, make_read_only = read_only_mount
    make_read_only()
    line = parent_refuses(procs, mnt / "ws", "ro-new")
    assert line.endswith(f"workspace {mnt / 'ws'}: cannot create {mnt / 'ws' / 'jobs'}: read-only file system")


def test_read_only_used_workspace(start_parent, procs, read_only_mount):
    mnt, make_read_only = read_only_mount
    start_parent(workspace=mnt / "ws", name="first").stop()
    make_read_only()
    line = parent_refuses(procs, mnt / "ws", "ro-used")
    assert f"workspace {mnt / 'ws'}: cannot open" in line and line.endswith("read-only file system")


def test_embedded_start_raises_the_same_named_errors(tmp, procs):
    (tmp / "file").write_text("not a folder")
    with pytest.raises(WorkspaceError, match="is a file, not a directory"):
        FLRunner.start(tmp / "file")
    (tmp / "ws").mkdir()
    (tmp / "ws" / "jobs.db").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(JobStoreError, match="is not a SQLite database"):
        FLRunner.start(tmp / "ws")
    (tmp / "ws" / "jobs.db").unlink()  # the same workspace now starts: nothing was left taken
    runner = FLRunner.start(tmp / "ws")
    try:
        with pytest.raises(EndpointError, match="cannot bind the sites socket"):
            FLRunner.start(tmp / "ws2", sites_endpoint=runner.sites_endpoint)
    finally:
        runner.stop()


# --- the WAL ---------------------------------------------------------------------------------------------
def test_wal_is_truncated_after_a_quiet_period(tmp, procs, make_job):
    workspace = tmp / "ws"
    runner = FLRunner.start(workspace, wal_checkpoint_quiet=1.5, housekeeping_interval=0.2)
    try:
        wal = workspace / "jobs.db-wal"
        job = make_job([("wf", "Progress", {"steps": 3})])
        ids = [runner.submit(job) for _ in range(12)]
        assert wal.stat().st_size > 0  # the burst is in the WAL (and jobs are still running)
        for job_id in ids:
            assert runner.wait(job_id, timeout=60)["status"] == "FINISHED:COMPLETED"
        wait_for(lambda: wal.stat().st_size == 0, 15, "the WAL to be truncated after the quiet period")
        assert [runner.status(i)["status"] for i in ids] == ["FINISHED:COMPLETED"] * len(ids)
        with contextlib.closing(sqlite3.connect(f"file:{workspace / 'jobs.db'}?mode=ro", uri=True)) as db:
            rows = dict(db.execute("SELECT job_id, status FROM jobs").fetchall())
            steps = db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
        assert rows == dict.fromkeys(ids, "FINISHED:COMPLETED")
        assert steps >= 4 * len(ids)  # SUBMITTED, DISPATCHED, RUNNING, FINISHED for each
    finally:
        runner.stop()
