"""README's promises under pressure, with real processes: a parent restarted while a job is in
the middle of a call, a full disk, a paused parent, slow submissions.

Workflows are in ``tests/job_components_pressure.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from flrunner.admin import AdminClient

from .conftest import wait_for
from .test_supervisor import PARENT_OPTS, START, Supervisor, sup  # noqa: F401  (sup is a fixture)

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

@pytest.mark.timeout(150)
def test_engine_calls_in_flight_survive_kill9_of_the_parent_under_the_supervisor(sup, procs, make_job):  # noqa: F811
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
