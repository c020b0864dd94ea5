"""An FL platform embedding the runner in-process, and attaching to a running parent."""

from __future__ import annotations

import threading

import pytest

from flrunner import FLRunner, JobFolderError
from flrunner.errors import BadRequest

from .support import wait_for


@pytest.fixture
def embedded(tmp, procs):
    # `procs` is requested so the leak check covers the job processes this parent starts.
    runner = FLRunner.start(tmp / "ws", abort_grace=1.0, term_grace=1.0)
    yield runner
    runner.stop()


def test_embedded_parent_runs_a_job_and_reports_every_change(embedded, make_job):
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def on_status(job: dict) -> None:
        seen.append((job["job_id"], job["status"]))
        if job["status"].startswith("FINISHED:"):
            done.set()

    cancel = embedded.on_status(on_status)
    job_id = embedded.submit(make_job([("wf", "Progress", {"steps": 2})]))
    final = embedded.wait(job_id, timeout=20)
    assert final["status"] == "FINISHED:COMPLETED"
    assert done.wait(5)
    cancel()
    statuses = [s for j, s in seen if j == job_id]
    assert statuses[0] == "SUBMITTED" and statuses[-1] == "FINISHED:COMPLETED"
    assert ["DISPATCHED", "RUNNING"] == [s for s in dict.fromkeys(statuses) if s in ("DISPATCHED", "RUNNING")]
    assert [j["job_id"] for j in embedded.jobs()] == [job_id]
    assert embedded.status(job_id)["history"][-1]["status"] == "FINISHED:COMPLETED"


def test_embedded_abort_and_errors(embedded, make_job, tmp):
    job_id = embedded.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
    wait_for(lambda: embedded.status(job_id)["status"] == "RUNNING", 10, "the job to run")
    embedded.abort(job_id, "platform says stop")
    assert embedded.wait(job_id, timeout=10)["status"] == "FINISHED:ABORTED"
    with pytest.raises(BadRequest, match="meta.json"):
        embedded.submit(tmp)  # not a job folder
    with pytest.raises(TimeoutError):
        embedded.wait(embedded.submit(make_job([("wf", "Sleeper", {"seconds": 60})])), timeout=0.5)
    assert JobFolderError.rc == "BAD_REQUEST"


def test_attach_to_a_running_parent(parent, make_job, tmp):
    runner = FLRunner.attach(tmp / "ws")
    try:
        job_id = runner.submit(make_job([("wf", "Progress", {"steps": 1})]))
        assert runner.wait(job_id, timeout=20)["status"] == "FINISHED:COMPLETED"
        assert runner.ps()["parent"]["pid"] == parent.pid
    finally:
        runner.stop()
    assert parent.proc.poll() is None  # attaching and stopping the handle leaves the parent running


def test_stopping_the_embedded_parent_aborts_running_jobs(tmp, procs, make_job):
    runner = FLRunner.start(tmp / "ws2", abort_grace=1.0, term_grace=1.0)
    try:
        job_id = runner.submit(make_job([("wf", "Sleeper", {"seconds": 60})]))
        wait_for(lambda: runner.status(job_id)["status"] == "RUNNING", 10, "the job to run")
    finally:
        runner.stop()
    again = FLRunner.start(tmp / "ws2")
    try:
        job = again.status(job_id)
        assert job["status"] == "FINISHED:ABORTED" and "parent shutdown" in job["history"][-1]["reason"]
    finally:
        again.stop()


def test_a_job_end_is_announced_once_with_its_exit_code(embedded, make_job):
    seen: list[dict] = []
    cancel = embedded.on_status(seen.append)
    try:
        with embedded.events() as feed:
            job_id = embedded.submit(make_job([("wf", "Progress", {"steps": 2})]))
            embedded.wait(job_id, timeout=20)
            ends = []
            while (event := feed.next(1.0)) is not None:
                if event["job_id"] == job_id and event["status"].startswith("FINISHED:"):
                    ends.append(event)
        wait_for(lambda: any(j["job_id"] == job_id and j["status"].startswith("FINISHED:") for j in seen), 5,
                 "on_status to see the end")
    finally:
        cancel()
    assert [(e["status"], e["exit_code"]) for e in ends] == [("FINISHED:COMPLETED", 0)]
    on_status_ends = [(j["status"], j["exit_code"]) for j in seen if j["job_id"] == job_id and j["status"].startswith("FINISHED:")]
    assert on_status_ends == [("FINISHED:COMPLETED", 0)]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_many_concurrent_submissions_all_get_in(embedded, make_job):
    """More submissions at once than the parent reads at once (it answers NOT_READY beyond eight):
    every client asks again until it gets in."""
    folders = [make_job([("wf", "Progress", {"steps": 1})], name=f"burst-{i}") for i in range(60)]
    ids: list[str] = []
    errors: list[str] = []

    def submit(folder) -> None:
        runner = FLRunner(embedded.admin_endpoint, timeout=60)
        try:
            ids.append(runner.submit(folder))
        except Exception as exc:  # recorded: the assertion below names it
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            runner.stop()

    threads = [threading.Thread(target=submit, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert errors == [] and len(set(ids)) == 60
    for job_id in ids:
        assert embedded.wait(job_id, timeout=60)["status"] == "FINISHED:COMPLETED"
