"""A job's life in a real parent with real job processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import psutil
import pytest

from flrunner.errors import Conflict

from .support import wait_for


def statuses(job: dict) -> list[str]:
    return [h["status"] for h in job["history"]]


def test_trivial_job_completes_with_history(parent, make_job):
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 3})]))
    # The final status is durable first; the process's exit is recorded when it happens.
    job = parent.wait_status(job_id, lambda j: j["status"].startswith("FINISHED:") and j["exit_code"] is not None)
    assert job["status"] == "FINISHED:COMPLETED"
    assert statuses(job) == ["SUBMITTED", "DISPATCHED", "RUNNING", "FINISHED:COMPLETED"]
    assert all(h["reason"] and h["time"] > 0 for h in job["history"])
    assert job["progress"] == {"message": "step 3/3", "step": 3}
    assert job["exit_code"] == 0 and job["signal"] is None


def test_history_is_durable_after_the_parent_is_gone(parent, make_job, tmp):
    job_id = parent.admin.submit(make_job([("wf", "Progress", {"steps": 2})]))
    parent.wait_final(job_id)
    parent.kill9()
    db = sqlite3.connect(tmp / "ws" / "jobs.db")
    status, = db.execute("SELECT status FROM jobs WHERE job_id=?", (job_id,)).fetchone()
    history = [r[0] for r in db.execute("SELECT status FROM history WHERE job_id=? ORDER BY seq", (job_id,))]
    assert status == "FINISHED:COMPLETED"
    assert history == ["SUBMITTED", "DISPATCHED", "RUNNING", "FINISHED:COMPLETED"]


def test_execution_error_ends_execution_exception(parent, make_job):
    job = parent.wait_final(parent.admin.submit(make_job([("wf", "Fail", {})])))
    assert job["status"] == "FINISHED:EXECUTION_EXCEPTION"
    assert "the workflow failed on purpose" in job["error"]
    assert "failed on purpose" in job["history"][-1]["reason"]


def test_app_that_cannot_load_names_the_component(parent, make_job):
    job = parent.wait_final(parent.admin.submit(make_job([("broken", "BadInit", {})])))
    assert job["status"] == "FINISHED:EXECUTION_EXCEPTION"
    assert "component 'broken'" in job["error"] and "cannot construct" in job["error"]


def test_exit_without_final_status_is_abnormal_with_exit_code(parent, make_job):
    job = parent.wait_final(parent.admin.submit(make_job([("wf", "Exit", {"code": 7})])))
    assert job["status"] == "FINISHED:ABNORMAL"
    assert job["exit_code"] == 7 and job["signal"] is None
    assert "exited with code 7" in job["history"][-1]["reason"]


def test_kill9_of_a_job_process_is_abnormal_with_the_signal(parent, make_job):
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    job = parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("message") == "sleeping")
    t0 = time.monotonic()
    os.kill(job["pid"], signal.SIGKILL)
    job = parent.wait_final(job_id)
    took = time.monotonic() - t0
    assert job["status"] == "FINISHED:ABNORMAL"
    assert job["signal"] == signal.SIGKILL and job["exit_code"] is None
    assert "SIGKILL" in job["history"][-1]["reason"]
    print(f"kill -9 -> FINISHED:ABNORMAL observed by the test in {took * 1000:.1f} ms")


def test_abort_of_a_cooperative_job(parent, make_job):
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    job = parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("message") == "sleeping")
    parent.admin.abort(job_id, "test says stop")
    job = parent.wait_status(job_id, lambda j: j["status"].startswith("FINISHED:") and j["exit_code"] is not None)
    assert job["status"] == "FINISHED:ABORTED"
    assert "test says stop" in job["history"][-1]["reason"]
    assert job["exit_code"] == 0  # it stopped by itself and reported
    assert not psutil.pid_exists(job["pid"]) or psutil.Process(job["pid"]).status() == psutil.STATUS_ZOMBIE


def test_abort_of_a_job_that_ignores_it_escalates_to_sigkill(parent, make_job):
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 120, "stubborn": True, "grandchild": True})]))
    job = parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("message") == "stubborn")
    grandchild = job["progress"]["grandchild_pid"]
    assert psutil.pid_exists(grandchild)
    parent.admin.abort(job_id)
    job = parent.wait_final(job_id, timeout=15)
    assert job["status"] == "FINISHED:ABORTED"
    assert job["signal"] == signal.SIGKILL  # SIGTERM was ignored; the escalation went on
    wait_for(lambda: not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE,
             5, "the job's grandchild to be gone")


def test_abort_of_a_queued_job_and_of_a_finished_one(start_parent, make_job):
    parent = start_parent("--max-jobs", "1", "--abort-grace", "1", "--term-grace", "1")
    first = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    second = parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})]))
    assert parent.admin.status(second)["status"] == "SUBMITTED"
    parent.admin.abort(second)
    assert parent.admin.status(second)["status"] == "FINISHED:ABORTED"
    with pytest.raises(Conflict, match="already ended"):
        parent.admin.abort(second)
    parent.admin.abort(first)
    assert parent.wait_final(first)["status"] == "FINISHED:ABORTED"


def test_concurrency_limit_queues_then_starts_each_job(start_parent, make_job):
    parent = start_parent("--max-jobs", "2")
    active: set[str] = set()
    most = 0
    with parent.feed() as feed:
        ids = [parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 0.3})])) for _ in range(5)]
        done: set[str] = set()
        while len(done) < len(ids):
            event = feed.next(20)
            assert event is not None, "no status change for 20s"
            if event["status"] in ("DISPATCHED", "RUNNING"):
                active.add(event["job_id"])
            elif event["status"].startswith("FINISHED:"):
                active.discard(event["job_id"])
                done.add(event["job_id"])
            most = max(most, len(active))
    assert most == 2
    assert all(parent.admin.status(i)["status"] == "FINISHED:COMPLETED" for i in ids)


def test_job_timeout_from_meta_aborts(parent, make_job):
    job = parent.wait_final(parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})], timeout=0.5)))
    assert job["status"] == "FINISHED:ABORTED"
    assert "timeout" in job["history"][-1]["reason"]


def test_graceful_shutdown_aborts_running_and_keeps_queued(start_parent, make_job, tmp):
    parent = start_parent("--max-jobs", "1", "--abort-grace", "1", "--term-grace", "1")
    running = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    queued = parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})]))
    parent.wait_status(running, lambda j: j["status"] == "RUNNING")
    assert parent.stop() == 0
    db = sqlite3.connect(tmp / "ws" / "jobs.db")
    rows = dict(db.execute("SELECT job_id, status FROM jobs"))
    assert rows[running] == "FINISHED:ABORTED"
    assert rows[queued] == "SUBMITTED"
    reason, = db.execute("SELECT reason FROM history WHERE job_id=? ORDER BY seq DESC LIMIT 1", (running,)).fetchone()
    assert "parent shutdown" in reason
    assert not (tmp / "ws" / "parent.json").exists()
    # The next parent runs what was queued.
    again = start_parent(name="parent2")
    assert again.wait_final(queued)["status"] == "FINISHED:COMPLETED"


def test_restart_after_kill9_re_adopts_the_running_job(start_parent, make_job):
    parent = start_parent()
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    pid = parent.wait_status(job_id, lambda j: j["status"] == "RUNNING")["pid"]
    parent.kill9()
    assert psutil.pid_exists(pid)  # job processes do not die with their parent
    again = start_parent(name="parent2")
    job = again.wait_status(job_id, lambda j: any("re-adopted" in h["reason"] for h in j["history"]))
    assert job["status"] == "RUNNING" and job["pid"] == pid
    again.admin.abort(job_id, "done testing")
    assert again.wait_final(job_id)["status"] == "FINISHED:ABORTED"
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 5,
             "the re-adopted job process to be gone")


def test_a_job_not_back_within_the_adopt_window_is_lost(start_parent, make_job):
    parent = start_parent()
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    pid = parent.wait_status(job_id, lambda j: j["status"] == "RUNNING")["pid"]
    parent.kill9()
    os.kill(pid, signal.SIGSTOP)  # it cannot reconnect
    try:
        again = start_parent("--adopt-window", "1", name="parent2")
        job = again.wait_final(job_id, timeout=15)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert job["status"] == "FINISHED:ABNORMAL"
    assert "did not reconnect" in job["history"][-1]["reason"]


def test_second_parent_on_the_same_workspace_is_refused(parent, procs, tmp):
    p = procs.spawn(["-m", "flrunner", "parent", "--workspace", str(tmp / "ws"), "--sites", "tcp://127.0.0.1:*"], "second")
    assert p.wait(20) == 1
    assert "another parent" in procs.output("second")


def test_a_stray_thread_does_not_keep_a_finished_job_process_alive(parent, make_job):
    job_id = parent.admin.submit(make_job([("wf", "LeaveThreadRunning", {})]))
    job = parent.wait_status(job_id, lambda j: j["status"].startswith("FINISHED:") and j["exit_code"] is not None)
    assert job["status"] == "FINISHED:COMPLETED" and job["exit_code"] == 0


@pytest.mark.parametrize("clash", ["child", "parent"])
def test_a_job_module_named_like_one_of_flrunners_packages_gets_an_error_naming_the_clash(parent, make_job, clash):
    job = make_job([("wf", f"{clash}.Workflow", {})])
    (job / "app_server" / "custom" / f"{clash}.py").write_text(
        "from flrunner import Controller\n\nclass Workflow(Controller):\n    def control_flow(self, abort_signal, fl_ctx):\n"
        "        pass\n")
    final = parent.wait_final(parent.admin.submit(job))
    assert final["status"] == "FINISHED:EXECUTION_EXCEPTION"
    assert f"custom/{clash}.py' has the name of flrunner's own package '{clash}'" in final["error"], final["error"]
