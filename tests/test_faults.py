"""Faults a real server goes through, with real processes: the parent killed and restarted, job
processes killed in every phase or frozen, grandchildren that leave the job's session, a job
that crashes and resumes from its snapshot, a late status, and 20 jobs through a parent restart.

Workflows are in ``tests/job_components_faults.py``. A workflow that reports progress writes each
step the parent acknowledged to a file in its run dir (after `update_job_run_status` returned),
so the test can check the job store (read with sqlite3 right after a ``kill -9`` of the parent)
against what the job process was told was durable.

Waits are on status changes, files and pids (``wait_for``), never bare sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import psutil
import pytest

from flrunner.snapshot import RunSnapshot

from .support import job_copy, wait_for

TICKER = "job_components_faults.Ticker"

#: A job process held before it can say hello: ``sitecustomize`` runs before ``python -m child``
#: imports anything, so a cold-started job process waits here while ``<FLTEST_HOLD_DIR>/hold``
#: exists (the warm launcher forks an already started interpreter, so the hold needs ``--launcher
#: cold``; see `COLD`). Only job processes (``FLRUNNER_JOB_ID`` set) are held.
HOLD_HOOK = '''
import os, time
_dir = os.environ.get("FLTEST_HOLD_DIR")
if _dir and os.environ.get("FLRUNNER_JOB_ID") and os.path.exists(os.path.join(_dir, "hold")):
    open(os.path.join(_dir, "%d.held" % os.getpid()), "w").close()
    _end = time.time() + 60
    while time.time() < _end and os.path.exists(os.path.join(_dir, "hold")):
        time.sleep(0.05)
'''


def _parent_flag(flag: str, value: str) -> bool:
    """Whether ``flrunner parent`` accepts ``flag value``."""
    from flrunner.admin.cli import build_parser

    try:
        args, unknown = build_parser().parse_known_args(["parent", flag, value])
    except SystemExit:
        return False
    return not unknown


#: Start job processes from a fresh interpreter (where the CLI offers a choice of launcher).
COLD = ["--launcher", "cold"] if _parent_flag("--launcher", "cold") else []


# --- helpers --------------------------------------------------------------------------------------

def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: nobody may reap orphans in a container)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def job_processes(job_id: str) -> list[psutil.Process]:
    """Live processes carrying the job's id in their environment: the job process and everything
    it started, whatever session or parent they have now."""
    found = []
    for p in psutil.process_iter(["pid", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if p.environ().get("FLRUNNER_JOB_ID") == job_id:
                found.append(p)
        except psutil.Error:
            continue
    return found


def run_dir(tmp: Path, job_id: str) -> Path:
    return tmp / "ws" / "jobs" / job_id


def acked(tmp: Path, job_id: str) -> list[tuple[int, float]]:
    """The steps the job process saw acknowledged, with the time of each ack."""
    path = run_dir(tmp, job_id) / "acked.txt"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        step, _, when = line.partition(" ")
        if when:  # a line being written is complete only with its time
            out.append((int(step), float(when)))
    return out


def stored_steps(tmp: Path) -> dict[str, int | None]:
    """Each job's progress step as the job store has it (read directly, the parent may be dead)."""
    db = sqlite3.connect(tmp / "ws" / "jobs.db")
    try:
        rows = db.execute("SELECT job_id, progress FROM jobs").fetchall()
    finally:
        db.close()
    return {job_id: (json.loads(p) or {}).get("step") if p else None for job_id, p in rows}


def assert_no_acked_update_lost(tmp: Path, job_id: str, stored: int | None, restarted_at: float) -> int:
    """Every update acknowledged before the restart is in what the store held after the kill.

    The job process sends one update at a time, so the store holds the last acknowledged step,
    or the next one (stored, then the parent died before its ack went out). Returns that step.
    """
    steps = acked(tmp, job_id)
    assert [s for s, _ in steps] == list(range(1, len(steps) + 1)), "steps acknowledged twice or out of order"
    before = [s for s, t in steps if t < restarted_at]
    assert before, f"job {job_id}: no update was acknowledged before the kill"
    assert stored is not None and stored in (before[-1], before[-1] + 1), \
        f"job {job_id}: the store has step {stored} after the kill, the job process saw step {before[-1]} acknowledged"
    return before[-1]


def re_adopted(job: dict) -> bool:
    return any("re-adopted" in h["reason"] for h in job["history"])


def finished(job: dict) -> list[dict]:
    return [h for h in job["history"] if h["status"].startswith("FINISHED:")]


def progress(job: dict) -> dict:
    return job.get("progress") or {}


@pytest.fixture
def hold(tmp, monkeypatch):
    """Hold cold-started job processes before their hello while ``hold/hold`` exists; yields the
    folder where each held process leaves ``<pid>.held``."""
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_HOOK)
    folder = tmp / "hold"
    folder.mkdir()
    (folder / "hold").touch()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("FLTEST_HOLD_DIR", str(folder))
    yield folder
    (folder / "hold").unlink(missing_ok=True)


# --- the parent dies ------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill9_of_the_parent_re_adopts_every_running_job_and_they_complete(start_parent, make_job, tmp):
    parent = start_parent()
    job = make_job([("wf", TICKER, {"steps": 60, "interval": 0.1})])
    ids = [parent.admin.submit(job) for _ in range(3)]
    pids = {i: parent.wait_status(i, lambda j: progress(j).get("step", 0) >= 3)["pid"] for i in ids}
    parent.kill9()
    stored = stored_steps(tmp)
    restarted_at = time.time()
    assert not any(gone(pid) for pid in pids.values()), "a job process died with its parent"

    again = start_parent(name="parent2")
    for job_id in ids:
        job = again.wait_final(job_id, timeout=30)
        assert job["status"] == "FINISHED:COMPLETED", job
        assert job["pid"] == pids[job_id] and re_adopted(job), job["history"]
        assert [h["status"] for h in job["history"]] == ["SUBMITTED", "DISPATCHED", "RUNNING", "RUNNING",
                                                         "FINISHED:COMPLETED"]
        assert progress(job)["step"] == 60
        assert_no_acked_update_lost(tmp, job_id, stored[job_id], restarted_at)
        assert [s for s, _ in acked(tmp, job_id)] == list(range(1, 61))
    wait_for(lambda: all(gone(pid) for pid in pids.values()), 10, "the re-adopted job processes to exit")


def test_kill9_of_the_parent_before_a_jobs_hello_the_next_parent_adopts_it(start_parent, make_job, hold, tmp):
    parent = start_parent(*COLD)
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 2})]))
    held = wait_for(lambda: list(hold.glob("*.held")), 20, "the job process to be held before its hello")
    pid = int(held[0].name.split(".")[0])
    parent.kill9()
    again = start_parent(*COLD, name="parent2")
    (hold / "hold").unlink()  # the job process goes on, and says its first hello to the new parent
    job = again.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED" and job["pid"] == pid, job
    assert [h["status"] for h in job["history"]] == ["SUBMITTED", "DISPATCHED", "DISPATCHED", "RUNNING",
                                                     "FINISHED:COMPLETED"]
    assert re_adopted(job)


def test_re_adopted_job_processes_are_watched_like_native_ones(start_parent, make_job, tmp):
    """Killed or aborted after a parent restart, a re-adopted job ends at once, with its whole tree."""
    parent = start_parent("--abort-grace", "1", "--term-grace", "1")
    job = make_job([("wf", "job_components_faults.SpawnDetached", {})])
    ids = [parent.admin.submit(job) for _ in range(2)]
    jobs = [parent.wait_status(i, lambda j: progress(j).get("message") == "spawned") for i in ids]
    spawned = {j["job_id"]: [progress(j)[k] for k in ("plain", "session", "orphan")] for j in jobs}
    parent.kill9()
    again = start_parent("--abort-grace", "1", "--term-grace", "1", name="parent2")
    killed, aborted = (again.wait_status(i, re_adopted) for i in ids)

    t0 = time.monotonic()
    os.kill(killed["pid"], signal.SIGKILL)
    job = again.wait_final(killed["job_id"])
    print(f"kill -9 of a re-adopted job process -> {job['status']} in {(time.monotonic() - t0) * 1000:.0f} ms")
    assert job["status"] == "FINISHED:ABNORMAL" and "without a final status" in job["history"][-1]["reason"], job

    again.admin.abort(aborted["job_id"], "test says stop")
    assert again.wait_final(aborted["job_id"])["status"] == "FINISHED:ABORTED"
    for job_id, pids in spawned.items():
        wait_for(lambda: all(gone(pid) for pid in pids) and not job_processes(job_id), 10,
                 f"every process of re-adopted job {job_id} to be gone")


@pytest.mark.slow
def test_a_fedavg_job_survives_kill9_of_the_parent(start_parent, start_site, tmp):
    # The sites reconnect to the same endpoint, so both parents listen on one fixed port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sites = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    parent = start_parent("--site-timeout", "10", "--sites", sites)
    for name in ("site-1", "site-2"):
        start_site(parent, name)
    folder = fedavg_job(tmp, "fedavg", train_timeout=6.0)
    job_id = parent.admin.submit(folder)
    parent.wait_status(job_id, lambda j: progress(j).get("round", 0) >= 3, timeout=40)
    parent.kill9()
    again = start_parent("--site-timeout", "10", "--sites", sites, name="parent2")
    job = again.wait_final(job_id, timeout=40)
    assert re_adopted(job)
    assert job["status"] == "FINISHED:COMPLETED", job["history"][-1]["reason"]


@pytest.mark.slow
def test_parent_down_longer_than_the_grace_job_processes_end_themselves_and_are_recorded_lost(
        start_parent, make_job, tmp):
    args = ("--reconnect-grace", "2", "--abort-grace", "1", "--term-grace", "1")
    parent = start_parent(*args)
    ticker = parent.admin.submit(make_job([("wf", TICKER, {"steps": 10_000, "interval": 0.1})]))
    sleeper = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 120})]))
    pids = [parent.wait_status(ticker, lambda j: progress(j).get("step", 0) >= 2)["pid"],
            parent.wait_status(sleeper, lambda j: progress(j).get("message") == "sleeping")["pid"]]
    parent.kill9()
    t0 = time.monotonic()
    # Without a parent: ~2s to notice, 2s of grace, then abort and exit within the orphan grace.
    wait_for(lambda: all(gone(pid) for pid in pids), 20, "the orphaned job processes to exit by themselves")
    print(f"orphaned job processes exited {time.monotonic() - t0:.1f}s after the parent died")
    assert not job_processes(ticker) and not job_processes(sleeper)

    again = start_parent(*args, name="parent2")
    for job_id in (ticker, sleeper):
        job = again.admin.status(job_id)
        assert job["status"] == "FINISHED:ABNORMAL", job
        assert "lost while the parent was down" in job["history"][-1]["reason"], job["history"]
        assert len(finished(job)) == 1
    assert again.admin.ps()["jobs"] == []


# --- a job process dies, phase by phase -------------------------------------------------------------

def test_kill9_of_a_job_process_before_its_hello_is_abnormal(start_parent, make_job, hold):
    parent = start_parent(*COLD)
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})]))
    held = wait_for(lambda: list(hold.glob("*.held")), 20, "the job process to be held before its hello")
    pid = int(held[0].name.split(".")[0])
    assert parent.admin.status(job_id)["status"] == "DISPATCHED"  # no hello yet
    os.kill(pid, signal.SIGKILL)
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:ABNORMAL", job
    assert [h["status"] for h in job["history"]] == ["SUBMITTED", "DISPATCHED", "FINISHED:ABNORMAL"]
    assert job["signal"] == signal.SIGKILL and "killed by SIGKILL" in job["history"][-1]["reason"]
    assert gone(pid) and not job_processes(job_id)
    # The parent is unharmed: the next job (not held) runs.
    (hold / "hold").unlink()
    assert parent.wait_final(parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})])))["status"] \
        == "FINISHED:COMPLETED"


def test_a_job_process_stuck_before_its_hello_ends_with_start_timeout(start_parent, make_job, hold):
    parent = start_parent(*COLD, "--start-timeout", "2", "--abort-grace", "1", "--term-grace", "1")
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})]))
    held = wait_for(lambda: list(hold.glob("*.held")), 20, "the job process to be held before its hello")
    pid = int(held[0].name.split(".")[0])
    job = parent.wait_final(job_id, timeout=20)
    assert job["status"] == "FINISHED:ABNORMAL", job
    assert "start timeout" in job["history"][-1]["reason"], job["history"]
    assert job["signal"] == signal.SIGKILL
    wait_for(lambda: gone(pid) and not job_processes(job_id), 5, "the stuck job process to be gone")


def test_kill9_of_a_running_job_process_ends_abnormal_and_its_whole_tree(parent, make_job, tmp):
    job_id = parent.admin.submit(make_job([("wf", "job_components_faults.SpawnDetached", {})]))
    job = parent.wait_status(job_id, lambda j: progress(j).get("message") == "spawned")
    spawned = [progress(job)[k] for k in ("plain", "session", "orphan")]
    assert not any(gone(pid) for pid in spawned)
    os.kill(job["pid"], signal.SIGKILL)
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:ABNORMAL" and job["signal"] == signal.SIGKILL, job
    assert "killed by SIGKILL without a final status" in job["history"][-1]["reason"]
    wait_for(lambda: all(gone(pid) for pid in spawned) and not job_processes(job_id), 10,
             "every process the job started to be gone")


def test_kill9_after_the_final_status_is_durable_keeps_the_status_and_records_the_signal(parent, make_job, tmp):
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 2})],
                                          [("linger", "job_components_faults.LingerAfterFinalStatus", {})]))
    marker = wait_for(lambda: (run_dir(tmp, job_id) / "final-acked").exists() and run_dir(tmp, job_id) / "final-acked",
                      20, "the job process to linger after its final status was acknowledged")
    pid = int(marker.read_text())
    assert parent.admin.status(job_id)["status"] == "FINISHED:COMPLETED"  # durable before the ack
    os.kill(pid, signal.SIGKILL)
    job = parent.wait_status(job_id, lambda j: j["signal"] is not None)
    assert job["status"] == "FINISHED:COMPLETED" and job["signal"] == signal.SIGKILL, job
    assert len(finished(job)) == 1
    wait_for(lambda: gone(pid) and not job_processes(job_id), 5, "the job process to be gone")


def test_kill9_while_the_final_status_is_in_flight_ends_in_one_consistent_final_status(parent, make_job, tmp):
    """The job process freezes the parent (SIGSTOP) just before sending its final status and is
    killed once the status is on its way. Resumed, the parent either reads that status before it
    sees the exit (COMPLETED, then the signal recorded) or after it (ABNORMAL "without a final
    status", and the late status is refused): either way one final status, and nothing left."""
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 2})],
                                          [("freeze", "job_components_faults.FreezeParentBeforeFinalStatus", {})]))
    rd = run_dir(tmp, job_id)
    try:
        wait_for(lambda: (rd / "final-sent").exists(), 20, "the final status to be sent to the frozen parent")
        assert int((rd / "parent-frozen").read_text()) == parent.pid
        assert psutil.Process(parent.pid).status() == psutil.STATUS_STOPPED
        pid = int((rd / "final-sent").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: gone(pid), 5, "the job process to die")
    finally:
        os.kill(parent.pid, signal.SIGCONT)
    job = parent.wait_status(job_id, lambda j: j["status"].startswith("FINISHED:") and j["signal"] is not None)
    print(f"in-flight final status, then kill -9: {job['status']}")
    assert job["signal"] == signal.SIGKILL, job
    assert len(finished(job)) == 1, job["history"]
    if job["status"] == "FINISHED:ABNORMAL":
        assert "without a final status" in job["history"][-1]["reason"]
    else:
        assert job["status"] == "FINISHED:COMPLETED", job
    assert not job_processes(job_id)
    assert parent.admin.ping()["pid"] == parent.pid


@pytest.mark.slow
def test_a_sigstopped_job_process_is_detected_as_hung_and_killed(start_parent, make_job):
    parent = start_parent("--hung-timeout", "2", "--abort-grace", "1", "--term-grace", "1")
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    pid = parent.wait_status(job_id, lambda j: progress(j).get("message") == "sleeping")["pid"]
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        job = parent.wait_final(job_id, timeout=20)
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGCONT)
    print(f"SIGSTOP -> FINISHED:ABNORMAL in {time.monotonic() - t0:.1f}s (hung timeout 2s, graces 1s + 1s)")
    assert job["status"] == "FINISHED:ABNORMAL", job
    reason = job["history"][-1]["reason"]
    assert "heartbeat" in reason and "hung" in reason, reason
    assert job["signal"] == signal.SIGKILL
    wait_for(lambda: gone(pid) and not job_processes(job_id), 5, "the hung job process to be gone")


@pytest.mark.parametrize("ending", ["abort", "normal end", "parent shutdown"])
def test_grandchildren_in_their_own_session_are_killed_when_the_job_ends(parent, make_job, tmp, ending):
    job_id = parent.admin.submit(make_job([("wf", "job_components_faults.SpawnDetached", {})]))
    job = parent.wait_status(job_id, lambda j: progress(j).get("message") == "spawned")
    spawned = {k: progress(job)[k] for k in ("plain", "session", "orphan")}
    assert os.getsid(spawned["session"]) == spawned["session"]  # a session of its own
    assert psutil.Process(spawned["orphan"]).ppid() != job["pid"]  # not even the job's descendant
    if ending == "abort":
        parent.admin.abort(job_id, "test says stop")
        assert parent.wait_final(job_id)["status"] == "FINISHED:ABORTED"
    elif ending == "normal end":
        (run_dir(tmp, job_id) / "go").touch()
        assert parent.wait_final(job_id)["status"] == "FINISHED:COMPLETED"
    else:
        assert parent.stop() == 0
        db = sqlite3.connect(tmp / "ws" / "jobs.db")
        status, = db.execute("SELECT status FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        db.close()
        assert status == "FINISHED:ABORTED"
    wait_for(lambda: all(gone(pid) for pid in spawned.values()), 10,
             f"the job's grandchildren {spawned} to be gone after the {ending}")
    assert not job_processes(job_id)


def test_parent_shutdown_kills_the_detached_grandchildren_of_every_job(start_parent, make_job):
    """Several jobs ending at the same moment at shutdown: the straggler kill of each must run before
    the parent exits (it once was queued off the loop, and cancelled when the parent stopped)."""
    parent = start_parent("--abort-grace", "1", "--term-grace", "1")
    # Stubborn jobs ignore the abort and SIGTERM: the escalation SIGKILLs all of them at the same moment.
    job = make_job([("wf", "job_components_faults.SpawnDetached", {"stubborn": True})])
    ids = [parent.admin.submit(job) for _ in range(5)]
    spawned = []
    for job_id in ids:
        job = parent.wait_status(job_id, lambda j: progress(j).get("message") == "spawned")
        spawned += [progress(job)[k] for k in ("plain", "session", "orphan")]
    try:
        assert parent.stop() == 0
        wait_for(lambda: all(gone(pid) for pid in spawned), 5, "the grandchildren of every job to be gone")
    finally:
        for pid in spawned:  # what the parent left, so that the test's teardown finds nothing
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


# --- crash-resume -------------------------------------------------------------------------------------

def fedavg_job(tmp: Path, name: str, train_timeout: float = 30.0, **meta) -> Path:
    """The FedAvg example: 10 rounds, each site waiting 0.5s per round, extra ``meta``."""
    folder = job_copy(tmp, name, {"num_rounds": 10, "train_timeout": train_timeout}, {"delay": 0.5})
    meta_path = folder / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **meta}))
    return folder


@pytest.mark.slow
def test_a_fedavg_job_killed_in_round_7_resumes_at_round_7_with_the_same_final_model(parent, start_site, tmp):
    for name in ("site-1", "site-2"):
        start_site(parent, name)
    reference = parent.admin.submit(fedavg_job(tmp, "reference"))
    crashing = parent.admin.submit(fedavg_job(tmp, "crashing", max_restarts=1))
    # Progress shows round 6 once round 6 is persisted: the job process is then in round 7.
    job = parent.wait_status(crashing, lambda j: progress(j).get("round", 0) >= 6, timeout=40)
    pid = job["pid"]
    os.kill(pid, signal.SIGKILL)
    snapshot = RunSnapshot.load(str(run_dir(tmp, crashing) / "snapshot.msgpack"))
    assert snapshot.get_component_snapshot("model_state")["round"] == 6, "not killed in round 7"

    job = parent.wait_final(crashing, timeout=40)
    assert job["status"] == "FINISHED:COMPLETED", job
    restarts = [h for h in job["history"] if h["reason"].startswith("restarted")]
    assert len(restarts) == 1 and "SIGKILL" in restarts[0]["reason"] and "1 of 1" in restarts[0]["reason"], \
        job["history"]
    assert job["pid"] != pid and progress(job)["round"] == 10
    log = (run_dir(tmp, crashing) / "log.txt").read_text()
    assert "resuming after round 6/10" in log
    assert parent.wait_final(reference, timeout=40)["status"] == "FINISHED:COMPLETED"
    ref_model = json.loads((run_dir(tmp, reference) / "final_model.json").read_text())
    model = json.loads((run_dir(tmp, crashing) / "final_model.json").read_text())
    assert model["rounds"] == 10 and [h["round"] for h in model["history"]] == list(range(1, 11))
    assert model == ref_model  # weights bit for bit, and the per-round history


# --- durability and monotonic status --------------------------------------------------------------------

def test_kill9_of_the_parent_during_a_burst_of_status_updates_loses_no_acknowledged_one(start_parent, make_job, tmp):
    parent = start_parent()
    job_id = parent.admin.submit(make_job([("wf", TICKER, {"steps": 10**6, "interval": 0, "finish_file": "finish"})]))
    wait_for(lambda: len(acked(tmp, job_id)) >= 300, 20, "a burst of acknowledged updates")
    parent.kill9()
    stored = stored_steps(tmp)[job_id]
    restarted_at = time.time()
    again = start_parent(name="parent2")
    again.wait_status(job_id, re_adopted)
    (run_dir(tmp, job_id) / "finish").touch()
    job = again.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED", job
    last = assert_no_acked_update_lost(tmp, job_id, stored, restarted_at)
    assert progress(job)["step"] == acked(tmp, job_id)[-1][0]
    print(f"{last} updates acknowledged before kill -9; the store had step {stored}")


def test_a_late_status_cannot_move_a_finished_job(parent, make_job, tmp):
    job_id = parent.admin.submit(make_job([("wf", "job_components_faults.ReportAfterTheEnd", {})]))
    job = parent.wait_status(job_id, lambda j: j["status"].startswith("FINISHED:") and j["exit_code"] is not None)
    late = json.loads((run_dir(tmp, job_id) / "late.json").read_text())
    assert late["FINISHED:COMPLETED"] == "FINISHED:COMPLETED"
    for status in ("RUNNING", "FINISHED:ABORTED", "FINISHED:EXECUTION_EXCEPTION"):
        assert late[status].startswith("Conflict: ") and "already ended FINISHED:COMPLETED" in late[status], late
    assert late["FINISHED:ABNORMAL"].startswith("BadRequest: ")  # never the job process's to report
    assert late["late progress"] == "FINISHED:COMPLETED"
    assert job["status"] == "FINISHED:COMPLETED" and job["exit_code"] == 0, job
    assert progress(job) == {"message": "done", "step": 1}  # a finished job keeps its progress
    assert len(finished(job)) == 1
    assert [h["status"] for h in job["history"]] == ["SUBMITTED", "DISPATCHED", "RUNNING", "FINISHED:COMPLETED"]


# --- the 20-jobs scenario -----------------------------------------------------------------------------

def test_twenty_running_jobs_survive_kill9_of_the_parent_and_all_complete(start_parent, make_job, tmp):
    n = 20
    parent = start_parent("--max-jobs", str(n))
    job = make_job([("wf", TICKER, {"steps": 10**5, "interval": 0.1, "finish_file": "finish"})])
    ids = [parent.admin.submit(job) for _ in range(n)]
    wait_for(lambda: all(len(acked(tmp, i)) >= 3 for i in ids), 60, f"all {n} jobs to report progress",
             interval=0.1)
    pids = {j["job_id"]: j["pid"] for j in parent.admin.jobs()}
    parent.kill9()
    stored = stored_steps(tmp)
    restarted_at = time.time()
    t0 = time.monotonic()

    again = start_parent("--max-jobs", str(n), name="parent2")
    wait_for(lambda: all(re_adopted(again.admin.status(i)) for i in ids), 30, f"all {n} jobs to be re-adopted",
             interval=0.1)
    print(f"restart -> all {n} jobs re-adopted in {time.monotonic() - t0:.2f}s")
    for i in ids:
        (run_dir(tmp, i) / "finish").touch()
    for i in ids:
        job = again.wait_final(i, timeout=30)
        assert job["status"] == "FINISHED:COMPLETED", job
        assert job["pid"] == pids[i]
        assert_no_acked_update_lost(tmp, i, stored[i], restarted_at)
        assert progress(job)["step"] == acked(tmp, i)[-1][0]
    wait_for(lambda: all(gone(pid) for pid in pids.values()), 10, "every job process to exit")
