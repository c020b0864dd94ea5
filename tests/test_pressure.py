"""README's promises under pressure, with real processes: a parent restarted while a job is in
the middle of a call, a full disk, a paused parent, slow submissions.

Workflows are in ``tests/job_components_pressure.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from flrunner.admin.client import AdminClient
from flrunner.errors import ParentUnavailable

from .support import PARENT_OPTS, START, wait_for

CALLS = "job_components_pressure.CallsThroughRestarts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress(job: dict) -> dict:
    return job.get("progress") or {}


def re_adoptions(job: dict) -> int:
    return sum(1 for h in job["history"] if h["reason"].startswith("re-adopted"))


# --- a parent restart while a job is mid-call -----------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(150)
def test_engine_calls_in_flight_survive_kill9_of_the_parent_under_the_supervisor(sup, procs, make_job):
    """A job calling its engine in a tight loop (aux to a site, client sync, durable progress)
    across three kill -9s of its parent: no call raises, the job completes, and every round's
    progress the parent acknowledged is there."""
    sites = f"tcp://127.0.0.1:{free_port()}"
    r = sup("start", "--workspace", sup.ws, *START, *PARENT_OPTS, "--sites", sites, "--site-timeout", "4")
    assert r.returncode == 0, r.stderr
    parent = sup.parent()
    procs.spawn(["-m", "flrunner", "site", "--name", "site-1", "--server", sites], "site-1")
    with AdminClient(parent["admin"]) as admin:
        wait_for(lambda: [c for c in admin.clients() if c["name"] == "site-1"], 15, "site-1 to log in")
        site_app = {"executors": [(["echo"], "EchoExecutor", {})]}
        job_id = admin.submit(make_job([("wf", CALLS, {"site": "site-1"})], site_app=site_app))
        wait_for(lambda: progress(admin.status(job_id)).get("round", 0) >= 10, 20, "the job to be calling")

    for restart in range(1, 4):
        old = parent
        os.kill(old["pid"], signal.SIGKILL)
        parent = wait_for(lambda: (p := sup.parent()) and p["pid"] != old["pid"] and p, 20, "the restarted parent")
        with AdminClient(parent["admin"]) as admin:
            before = progress(admin.status(job_id)).get("round", 0)
            job = wait_for(lambda: (j := admin.status(job_id)) and re_adoptions(j) >= restart
                           and progress(j).get("round", 0) >= before + 10 and j, 30,
                           f"the job re-adopted ({restart}) and calling again")
            assert job["status"] == "RUNNING", job["history"][-1]

    run_dir = sup.ws / "jobs" / job_id
    (run_dir / "stop").touch()
    with AdminClient(parent["admin"]) as admin:
        job = wait_for(lambda: (j := admin.status(job_id))["status"].startswith("FINISHED:") and j, 30, "the end")
    assert job["status"] == "FINISHED:COMPLETED", (job["history"][-1], job.get("error"))
    calls = json.loads((run_dir / "calls.json").read_text())
    # Every aux exchange got a reply: the site's, or COMMUNICATION_ERROR for one lost with a parent.
    assert set(calls["rcs"]) <= {"OK", "COMMUNICATION_ERROR"}, calls
    assert calls["rcs"]["OK"] >= calls["round"] - 10, calls
    assert progress(job)["round"] == calls["round"]


# --- a paused parent ----------------------------------------------------------------------------

RUN_UNTIL_GO = "job_components_pressure.RunUntilGo"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_paused_parent_keeps_its_healthy_jobs_and_its_sites(start_parent, start_site, make_job):
    """SIGSTOP of the parent for several times every liveness limit (hung jobs, silent sites, a
    job's wait for a lost parent), then SIGCONT: no job is taken for hung, no site is dropped, and
    the jobs complete."""
    parent = start_parent("--hung-timeout", "2", "--site-timeout", "2", "--reconnect-grace", "2",
                          "--abort-grace", "1", "--term-grace", "1")
    for name in ("site-1", "site-2"):
        start_site(parent, name)
    ids = [parent.admin.submit(make_job([("wf", RUN_UNTIL_GO, {})])) for _ in range(3)]
    for job_id in ids:
        parent.wait_status(job_id, lambda j: progress(j).get("beat", 0) >= 2)

    os.kill(parent.pid, signal.SIGSTOP)
    try:
        time.sleep(7)  # the pause under test (a VM freeze, a debugger): nothing to wait on
    finally:
        os.kill(parent.pid, signal.SIGCONT)
    beats = {i: progress(parent.admin.status(i))["beat"] for i in ids}
    # Several hung-timeouts of listening time later, everything is still there.
    for job_id in ids:
        job = parent.wait_status(job_id, lambda j: j["status"] != "RUNNING"
                                 or progress(j).get("beat", 0) >= beats[job_id] + 15, timeout=20)
        assert job["status"] == "RUNNING", job["history"]
        assert not [h for h in job["history"] if "abort" in h["reason"] or "hung" in h["reason"]], job["history"]
    assert sorted(c["name"] for c in parent.admin.clients()) == ["site-1", "site-2"]
    log = (parent.workspace / "parent.log").read_text()
    assert "silent for over" not in log and "the parent was stalled for" in log

    for job_id in ids:
        (parent.workspace / "jobs" / job_id / "go").touch()
    for job_id in ids:
        assert parent.wait_final(job_id)["status"] == "FINISHED:COMPLETED"


@pytest.mark.timeout(60)
def test_a_job_aborted_for_hanging_ends_abnormal_even_if_it_then_reports_aborted(start_parent, make_job):
    parent = start_parent("--hung-timeout", "2", "--abort-grace", "10", "--term-grace", "1")
    job_id = parent.admin.submit(make_job([("wf", RUN_UNTIL_GO, {})]))
    pid = parent.wait_status(job_id, lambda j: progress(j).get("beat", 0) >= 1)["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        parent.wait_status(job_id, lambda j: any("abort requested: hung" in h["reason"] for h in j["history"]))
    finally:
        os.kill(pid, signal.SIGCONT)  # it wakes to the abort request and stops on it, reporting ABORTED
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:ABNORMAL", job["history"]
    assert "hung: no heartbeat" in job["history"][-1]["reason"] and "stopped on the abort" in job["history"][-1]["reason"]


# --- a job's output and a full disk ---------------------------------------------------------------

CHATTY = "job_components_pressure.Chatty"


def log_files(parent, job_id: str) -> dict[str, int]:
    run_dir = parent.workspace / "jobs" / job_id
    return {p.name: p.stat().st_size for p in run_dir.glob("log.txt*")}


@pytest.mark.timeout(90)
def test_a_job_log_is_rotated_at_its_cap_and_flrunner_logs_prints_its_end(start_parent, make_job):
    parent = start_parent("--job-log-size", "1M", "--job-log-backups", "2")
    job_id = parent.admin.submit(make_job([("wf", CHATTY, {"mb": 40})]))
    job = parent.wait_final(job_id, timeout=60)
    assert job["status"] == "FINISHED:COMPLETED", job["history"][-1]
    sizes = log_files(parent, job_id)
    assert set(sizes) == {"log.txt", "log.txt.1", "log.txt.2"}, sizes
    assert all(size <= (1 << 20) + 65536 for size in sizes.values()), sizes
    out = subprocess.run([sys.executable, "-m", "flrunner", "logs", job_id, "--workspace", str(parent.workspace)],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith(b"chatty done") or b"chatty done" in out.stdout[-4096:], out.stdout[-300:]
    assert len(out.stdout) == sum(sizes.values())


@pytest.mark.timeout(120)
def test_one_job_writing_200mb_cannot_fill_a_64mb_workspace(mount_tmpfs, start_parent, make_job):
    disk = mount_tmpfs("disk", "64m")
    parent = start_parent("--job-log-size", "4M", "--job-log-backups", "1", workspace=disk / "ws")
    calm = parent.admin.submit(make_job([("wf", RUN_UNTIL_GO, {})], name="calm"))
    chatty = parent.admin.submit(make_job([("wf", CHATTY, {"mb": 200})], name="chatty"))
    job = parent.wait_final(chatty, timeout=90)
    assert job["status"] == "FINISHED:COMPLETED", job["history"][-1]
    assert sum(log_files(parent, chatty).values()) <= 2 * (4 << 20) + 65536
    assert shutil.disk_usage(disk).free > 32 << 20
    (disk / "ws" / "jobs" / calm / "go").touch()
    assert parent.wait_final(calm)["status"] == "FINISHED:COMPLETED"


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: no write is left for close to fail on
        for size in (1 << 20, 4096):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_jobs_that_end_while_the_disk_is_full_end_with_their_real_status_once_it_is_freed(
        mount_tmpfs, start_parent, make_job):
    """With the workspace full, one job completes (its final status cannot be stored; it gives up
    sending it after its grace and exits) and one is killed: both are shown with their real end at
    once, never RUNNING, and are stored with it once space is freed; a third job, updating its
    progress all along, runs on."""
    disk = mount_tmpfs("disk", "32m")
    parent = start_parent("--reconnect-grace", "3", workspace=disk / "ws")
    done, killed, later = (parent.admin.submit(make_job([("wf", RUN_UNTIL_GO, {"interval": 0.5})], name=n))
                           for n in ("done", "killed", "later"))
    pids = {i: parent.wait_status(i, lambda j: progress(j).get("beat", 0) >= 1)["pid"] for i in (done, killed, later)}
    with sqlite3.connect(disk / "ws" / "jobs.db") as db:  # no WAL space left to reuse: writes need new space
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    try:
        fill(disk)
        (disk / "ws" / "jobs" / done / "go").touch()  # an empty file needs no data block
        os.kill(pids[killed], signal.SIGKILL)
        for job_id, status in ((done, "FINISHED:COMPLETED"), (killed, "FINISHED:ABNORMAL")):
            job = wait_for(lambda: (j := parent.admin.status(job_id))["status"] == status and j, 30,
                           f"job {job_id} shown {status}")
            assert job["store_error"] and "full" in job["store_error"], job
        assert parent.admin.ping()["store_error"]
        assert parent.admin.status(later)["status"] == "RUNNING"
    finally:
        (disk / "filler").unlink(missing_ok=True)
    for job_id, status, reason in ((done, "FINISHED:COMPLETED", "reported by the job process"),
                                   (killed, "FINISHED:ABNORMAL", "killed by SIGKILL without a final status")):
        job = parent.wait_status(job_id, lambda j: j["store_error"] is None, timeout=40)
        assert job["status"] == status, job
        assert reason in job["history"][-1]["reason"], job["history"]
    with sqlite3.connect(disk / "ws" / "jobs.db") as db:
        stored = dict(db.execute("SELECT job_id, status FROM jobs WHERE job_id IN (?, ?)", (done, killed)).fetchall())
    assert stored == {done: "FINISHED:COMPLETED", killed: "FINISHED:ABNORMAL"}
    beat = progress(parent.admin.status(later))["beat"]
    parent.wait_status(later, lambda j: progress(j)["beat"] > beat + 2)
    (disk / "ws" / "jobs" / later / "go").touch()
    assert parent.wait_final(later)["status"] == "FINISHED:COMPLETED"


# --- slow submissions ---------------------------------------------------------------------------

def big_job(make_job, files: int, name: str = "big") -> Path:
    folder = make_job([("wf", "Progress", {"steps": 1})], name=name)
    data = folder / "app_server" / "custom" / "data"
    data.mkdir()
    for i in range(files):
        (data / f"{i}.txt").write_bytes(b"x")
    return folder


def copying(parent) -> bool:
    """Whether the parent is in the middle of copying a job folder (a run dir not in its store yet)."""
    known = {j["job_id"] for j in parent.admin.jobs()}
    return any(d.name not in known for d in (parent.workspace / "jobs").iterdir())


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_large_folder_being_copied_delays_neither_a_small_submission_nor_a_restart(start_parent, make_job):
    parent = start_parent("--max-job-files", "100000", "--abort-grace", "1", "--term-grace", "1")
    crasher = parent.admin.submit(make_job([("wf", RUN_UNTIL_GO, {})], name="crasher", max_restarts=1))
    pid = parent.wait_status(crasher, lambda j: progress(j).get("beat", 0) >= 1)["pid"]
    big = big_job(make_job, 40_000)
    result: dict = {}

    def submit_big() -> None:
        with AdminClient(parent.info["admin"], timeout=120) as admin:
            result["job_id"] = admin.submit(big)

    thread = threading.Thread(target=submit_big)
    thread.start()
    try:
        wait_for(lambda: copying(parent), 30, "the parent to be copying the large folder")
        t0 = time.monotonic()
        small = parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})], name="small"))
        answered = time.monotonic() - t0
        os.kill(pid, signal.SIGKILL)
        restarted = parent.wait_status(crasher, lambda j: j["pid"] not in (None, pid) and j["status"] == "RUNNING")
        assert thread.is_alive(), "the large folder was copied before the test could overlap with it"
        print(f"small submit answered in {answered * 1000:.0f} ms while a 40,000-file folder was being copied")
        assert any(h["reason"].startswith("restarted") for h in restarted["history"]), restarted["history"]
        assert parent.wait_final(small)["status"] == "FINISHED:COMPLETED"
    finally:
        thread.join(120)
    assert parent.wait_final(result["job_id"], 60)["status"] == "FINISHED:COMPLETED"
    (parent.workspace / "jobs" / crasher / "go").touch()
    assert parent.wait_final(crasher)["status"] == "FINISHED:COMPLETED"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_submission_its_client_gave_up_on_does_not_become_a_job(start_parent, make_job):
    parent = start_parent("--max-job-files", "100000")
    big = big_job(make_job, 40_000)
    with AdminClient(parent.info["admin"], timeout=1.5) as impatient:
        with pytest.raises(ParentUnavailable):
            impatient.submit(big)
    log = parent.workspace / "parent.log"
    wait_for(lambda: "dropped: it was read only after its client stopped waiting" in log.read_text(), 90,
             "the parent to finish reading the folder and drop it")
    assert parent.admin.jobs() == []
    assert list((parent.workspace / "jobs").iterdir()) == []


# --- an acknowledged abort across a parent restart ----------------------------------------------

@pytest.mark.timeout(90)
def test_an_abort_acknowledged_just_before_the_parent_dies_is_carried_out_by_the_next_parent(start_parent, make_job):
    """Found by scripts/fuzz_parent.py: the abort lived only in the dead parent's memory."""
    parent = start_parent("--abort-grace", "30", "--term-grace", "30")
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 120, "stubborn": True})]))
    pid = parent.wait_status(job_id, lambda j: progress(j).get("message") == "stubborn")["pid"]
    assert parent.admin.abort(job_id, "wrong data")["status"] == "RUNNING"  # acknowledged: under way
    parent.kill9()
    again = start_parent("--abort-grace", "1", "--term-grace", "1", name="parent2")
    job = again.wait_final(job_id, timeout=30)
    assert job["status"] == "FINISHED:ABORTED" and "wrong data" in job["history"][-1]["reason"], job["history"]
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10,
             "the job process to be gone")


@pytest.mark.timeout(60)
def test_an_aborted_job_whose_process_died_with_the_parent_ends_aborted(start_parent, make_job):
    parent = start_parent("--abort-grace", "30", "--term-grace", "30")
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 120, "stubborn": True})]))
    pid = parent.wait_status(job_id, lambda j: progress(j).get("message") == "stubborn")["pid"]
    parent.admin.abort(job_id, "wrong data")
    parent.kill9()
    os.kill(pid, signal.SIGKILL)
    again = start_parent(name="parent2")
    job = again.wait_final(job_id, timeout=30)
    assert job["status"] == "FINISHED:ABORTED", job["history"]
    assert "wrong data" in job["history"][-1]["reason"] and "while the parent was down" in job["history"][-1]["reason"]
