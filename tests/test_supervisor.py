"""flrunner.supervisor, through scripts/flrunner-supervisor, with real watchdogs, parents and job processes.

The script runs with its cwd in the test's tmp folder, so the `procs` fixture's teardown check
(no process with its cwd under tmp survives) covers the watchdog, the parent and job processes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3

import psutil
import pytest

from flrunner.admin.client import AdminClient
from flrunner.supervisor import RestartPolicy

from .support import PARENT_OPTS, START, alive, processes_under, wait_for

def test_restart_policy_backs_off_then_gives_up():
    policy = RestartPolicy(initial_delay=0.5, max_delay=2.0, max_crashes=5, window=60.0)
    assert [policy.on_crash(t) for t in (0, 1, 2, 3)] == [0.5, 1.0, 2.0, 2.0]
    assert policy.on_crash(4) is None


def test_restart_policy_forgets_crashes_outside_the_window():
    policy = RestartPolicy(initial_delay=0.5, max_delay=30.0, max_crashes=3, window=60.0)
    assert [policy.on_crash(t) for t in (0, 10, 100, 200, 210)] == [0.5, 1.0, 0.5, 0.5, 1.0]


@pytest.mark.timeout(40)
def test_start_brings_a_parent_up_and_restarts_it_after_kill9(sup):
    r = sup("start", "--workspace", sup.ws, *START, *PARENT_OPTS)
    assert r.returncode == 0, r.stderr
    watchdog = sup.watchdog_pid()
    first = sup.parent()
    assert watchdog and first and psutil.Process(first["pid"]).ppid() == watchdog
    assert psutil.Process(watchdog).cmdline()[0] == f"flrunner-supervisor: {sup.ws}"
    # So the `procs` teardown check would catch a watchdog or parent left behind:
    assert {watchdog, first["pid"]} <= {p.pid for p in processes_under(sup.tmp)}

    again = sup("start", "--workspace", sup.ws, *START, *PARENT_OPTS)
    assert again.returncode == 1 and f"a supervisor (pid {watchdog}) already runs" in again.stderr

    os.kill(first["pid"], signal.SIGKILL)
    second = wait_for(lambda: (p := sup.parent()) and p["pid"] != first["pid"] and p, 15, "a restarted parent")
    assert psutil.Process(second["pid"]).ppid() == watchdog
    log = sup.log()
    assert f"the parent {first['pid']} was killed by SIGKILL" in log
    assert "restarting the parent in 0.5s (restart 1)" in log and f"started the parent {second['pid']}" in log

    status = sup("status", "--workspace", sup.ws, "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["serving"] and doc["supervisor"]["pid"] == watchdog and doc["supervisor"]["restarts"] == 1
    assert doc["parent"]["pid"] == second["pid"] and doc["parent"]["answers"]


@pytest.mark.timeout(40)
def test_stop_ends_the_watchdog_the_parent_and_running_jobs(sup, make_job):
    assert sup("start", "--workspace", sup.ws, *START, *PARENT_OPTS).returncode == 0
    watchdog, parent = sup.watchdog_pid(), sup.parent()
    with AdminClient(parent["admin"]) as admin:
        job_id = admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
        job = wait_for(lambda: (j := admin.status(job_id))["status"] == "RUNNING" and j["pid"] and j, 15, "the job to run")

    r = sup("stop", "--workspace", sup.ws)
    assert r.returncode == 0, r.stderr
    assert not any(alive(pid) for pid in (watchdog, parent["pid"], job["pid"]))
    assert not (sup.ws / "supervisor.pid").exists()
    status, = sqlite3.connect(sup.ws / "jobs.db").execute("SELECT status FROM jobs WHERE job_id=?", (job_id,)).fetchone()
    assert status == "FINISHED:ABORTED"
    assert "stopping the parent" in sup.log() and "supervisor" in sup.log().splitlines()[-1]

    again = sup("stop", "--workspace", sup.ws)
    assert again.returncode == 1 and "no supervisor is running" in again.stderr
    assert sup("status", "--workspace", sup.ws).returncode == 3


@pytest.mark.timeout(30)
def test_a_parent_that_exits_0_on_its_own_is_not_restarted(sup):
    assert sup("start", "--workspace", sup.ws, *START, *PARENT_OPTS).returncode == 0
    watchdog, parent = sup.watchdog_pid(), sup.parent()
    with AdminClient(parent["admin"]) as admin:
        admin.shutdown()
    wait_for(lambda: not alive(watchdog), 15, "the watchdog to exit")
    assert "exited with code 0" in sup.log() and "not restarting it" in sup.log()
    assert sup.parent() is None


@pytest.mark.timeout(40)
def test_run_exits_0_for_a_completed_job_and_1_for_a_failed_one(sup, make_job):
    good = make_job([("wf", "Progress", {"steps": 2})], name="good")
    r = sup("run", "--workspace", sup.ws, good, "--timeout", "20", *START, *PARENT_OPTS)
    assert r.returncode == 0, r.stderr
    assert "FINISHED:COMPLETED" in r.stdout and "step 2/2" in r.stderr
    assert sup.watchdog_pid() is not None  # run started a supervisor, which keeps the parent up

    bad = make_job([("wf", "Fail", {})], name="bad")
    r = sup("run", "--workspace", sup.ws, good, bad, "--timeout", "20")
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and "FINISHED:COMPLETED" in lines[0]
    assert "FINISHED:EXECUTION_EXCEPTION" in lines[1] and "the workflow failed on purpose" in lines[1]


@pytest.mark.timeout(30)
def test_run_refuses_an_invalid_job_folder_with_exit_2(sup, make_job):
    invalid = make_job([("wf", "Progress", {})], name="")
    r = sup("run", "--workspace", sup.ws, invalid)
    assert r.returncode == 2
    assert "meta.json: field 'name'" in r.stderr and str(invalid) in r.stderr
    assert sup.watchdog_pid() is None  # nothing was started for a batch that cannot run


@pytest.mark.timeout(40)
def test_the_watchdog_gives_up_when_the_parent_cannot_start(sup, start_parent):
    other = start_parent(workspace=sup.ws, name="other-parent")
    r = sup("start", "--workspace", sup.ws, "--max-crashes", "3", "--backoff-initial", "0.1", *START, *PARENT_OPTS)
    assert r.returncode == 1
    assert "giving up: the parent crashed 3 times" in r.stderr
    log = sup.log()
    assert log.count(f"another parent (pid {other.pid})") == 3
    assert "ERROR" in log and "giving up" in log
    assert sup.watchdog_pid() is None and not (sup.ws / "supervisor.pid").exists()
    assert other.admin.ping()["pid"] == other.pid  # the parent that holds the workspace is untouched


@pytest.mark.timeout(40)
def test_stop_kills_a_parent_and_its_jobs_when_the_parent_overstays(sup, make_job):
    slow = ["--", "--sites", "tcp://127.0.0.1:*", "--abort-grace", "30", "--term-grace", "30"]
    assert sup("start", "--workspace", sup.ws, "--stop-timeout", "1", *slow).returncode == 0
    watchdog, parent = sup.watchdog_pid(), sup.parent()
    with AdminClient(parent["admin"]) as admin:
        job_id = admin.submit(make_job([("wf", "Sleeper", {"seconds": 60, "stubborn": True})]))
        job = wait_for(lambda: ((j := admin.status(job_id)).get("progress") or {}).get("message") == "stubborn" and j,
                       15, "the stubborn job to run")

    r = sup("stop", "--workspace", sup.ws)
    assert r.returncode == 0, r.stderr
    assert not any(alive(pid) for pid in (watchdog, parent["pid"], job["pid"]))
    assert f"the parent {parent['pid']} did not stop within 1s: SIGKILL to it and its job processes" in sup.log()
