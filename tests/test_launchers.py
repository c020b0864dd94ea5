"""Both launchers, for the things a launcher must get right: a job runs, its exit is seen with
its code or signal, abort ends its whole group, jobs do not leak into each other, and the warm
launcher survives the loss of its template."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from .support import wait_for

LAUNCHERS = ["warm", "cold"]


@pytest.fixture(params=LAUNCHERS)
def launched(request, start_parent):
    return start_parent("--launcher", request.param, "--abort-grace", "1", "--term-grace", "1"), request.param


def final_with_exit(parent, job_id):
    return parent.wait_status(job_id, lambda j: j["status"].startswith("FINISHED:") and
                              (j["exit_code"] is not None or j["signal"] is not None))


def test_a_job_runs_and_its_exit_code_is_recorded(launched, make_job):
    parent, _ = launched
    job = final_with_exit(parent, parent.admin.submit(make_job([("wf", "Progress", {"steps": 2})])))
    assert job["status"] == "FINISHED:COMPLETED" and job["exit_code"] == 0
    job = final_with_exit(parent, parent.admin.submit(make_job([("wf", "Exit", {"code": 9})])))
    assert job["status"] == "FINISHED:ABNORMAL" and job["exit_code"] == 9


def test_kill9_is_abnormal_with_the_signal(launched, make_job):
    parent, _ = launched
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    pid = parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("message") == "sleeping")["pid"]
    os.kill(pid, signal.SIGKILL)
    job = final_with_exit(parent, job_id)
    assert job["status"] == "FINISHED:ABNORMAL" and job["signal"] == signal.SIGKILL


def test_abort_ends_a_stubborn_job_and_its_group(launched, make_job):
    parent, _ = launched
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 120, "stubborn": True, "grandchild": True})]))
    job = parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("message") == "stubborn")
    grandchild = job["progress"]["grandchild_pid"]
    assert os.getpgid(grandchild) == job["pid"]  # the job leads its own process group
    parent.admin.abort(job_id)
    job = final_with_exit(parent, job_id)
    assert job["status"] == "FINISHED:ABORTED" and job["signal"] == signal.SIGKILL
    wait_for(lambda: not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE,
             5, "the grandchild to be gone")


def test_jobs_do_not_see_each_others_state(launched, make_job):
    parent, kind = launched
    seen = []
    for _ in range(2):
        job = parent.wait_final(parent.admin.submit(make_job([("wf", "Leaky", {})])))
        assert job["status"] == "FINISHED:COMPLETED"
        seen.append(job["progress"])
    assert seen[1]["found"] == {"module_global": None, "env": None, "sys_path": []}
    assert seen[0]["pid"] != seen[1]["pid"]
    if kind == "warm":  # both forked from the same template, which is not the parent
        assert seen[0]["ppid"] == seen[1]["ppid"] != parent.pid


def test_the_warm_launcher_replaces_a_dead_template(start_parent, make_job):
    parent = start_parent("--launcher", "warm")
    first = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    job = parent.wait_status(first, lambda j: (j.get("progress") or {}).get("message") == "sleeping")
    template = psutil.Process(job["pid"]).ppid()
    assert "child.template" in " ".join(psutil.Process(template).cmdline()) or \
        "flrunner-template" in " ".join(psutil.Process(template).cmdline())
    os.kill(template, signal.SIGKILL)
    # The running job is still watched (through its pidfd) and a new job gets a new template.
    second = parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})]))
    assert parent.wait_final(second)["status"] == "FINISHED:COMPLETED"
    os.kill(job["pid"], signal.SIGKILL)
    assert parent.wait_final(first)["status"] == "FINISHED:ABNORMAL"
