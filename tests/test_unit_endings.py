"""Unit tests of `parent.jobs.endings.decide`: how a job ends once its process is gone, rule by rule
and in the table's order."""

from __future__ import annotations

from typing import Any

import pytest

from flrunner.status import RunStatus
from parent.jobs.endings import ENDINGS, ExitFacts, decide
from parent.jobs.running import RunningJob
from parent.jobs.store import JobRecord

ABNORMAL, ABORTED = RunStatus.FINISHED_ABNORMAL, RunStatus.FINISHED_ABORTED


def facts(status: RunStatus = RunStatus.RUNNING, how: str = "exited with code 1", **job: Any) -> ExitFacts:
    running = RunningJob("job-1", "test", proc=None, secret_hash="x", started_at=0.0)  # type: ignore[arg-type]
    for name, value in job.items():
        setattr(running, name, value)
    record = JobRecord("job-1", "test", status, 0.0, "/nowhere", {})
    return ExitFacts(running, record, how, start_timeout=60.0)


@pytest.mark.parametrize("case, given, status, cause, reason", [
    ("a final status was stored", facts(RunStatus.FINISHED_COMPLETED), RunStatus.FINISHED_COMPLETED, "stored",
     "its final status was stored before its process exited"),
    ("its final status reached us, the store refused it",
     facts(reported=(RunStatus.FINISHED_COMPLETED, "reported by the job process", {"progress": "done"})),
     RunStatus.FINISHED_COMPLETED, "reported", "reported by the job process"),
    ("it stopped heartbeating", facts(hung=True, abort_reason="hung: no heartbeat for 31.0s"), ABNORMAL, "hung",
     "hung: no heartbeat for 31.0s; process exited with code 1"),
    ("it was aborted", facts(abort_reason="aborted by admin", how="killed by SIGTERM"), ABORTED, "aborted",
     "aborted: aborted by admin; process killed by SIGTERM"),
    ("it did not come back after a parent restart", facts(lost_reason="lost while the parent was down: ..."),
     ABNORMAL, "lost after a parent restart", "lost while the parent was down: ..."),
    ("it never said hello", facts(start_timed_out=True, how="killed by SIGKILL"), ABNORMAL, "start timeout",
     "start timeout: no hello within 60s; process killed by SIGKILL"),
    ("it just died", facts(), ABNORMAL, "crashed", "job process exited with code 1 without a final status"),
])
def test_each_rule_gives_its_status_cause_and_reason(case, given, status, cause, reason):
    ending = decide(given)
    assert (ending.status, ending.cause, ending.reason) == (status, cause, reason), case


def test_a_refused_final_status_keeps_its_fields():
    ending = decide(facts(reported=(RunStatus.FINISHED_EXECUTION_EXCEPTION, "reported: boom", {"error": "boom"})))
    assert ending.fields == {"error": "boom"}
    assert decide(facts()).fields == {}


def test_the_first_rule_that_holds_wins():
    # Stored beats everything; hung beats aborted (a hung job is aborted too); aborted beats a
    # start timeout or a lost process.
    assert decide(facts(RunStatus.FINISHED_COMPLETED, hung=True, abort_reason="x")).cause == "stored"
    assert decide(facts(hung=True, abort_reason="hung: ...")).cause == "hung"
    assert decide(facts(abort_reason="x", start_timed_out=True, lost_reason="y")).cause == "aborted"
    assert decide(facts(lost_reason="y", start_timed_out=True)).cause == "lost after a parent restart"
    assert [rule.cause for rule in ENDINGS][-1] == "crashed"  # the catch-all is last
