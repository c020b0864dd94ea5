"""What a job's process reports of its run — its status, progress and execution error — made
durable before it is acknowledged.

A report the store cannot take now is refused (NOT_READY: the job process sends it again), not
held; should the process give up or die first, its final status is still what its exit records
(`parent.jobs.endings`, the ``reported`` rule). A final status is announced once, with the exit
code, when the process is gone.
"""

from __future__ import annotations

import logging
from typing import Any

from flrunner.errors import BadRequest, Conflict, StoreUnavailable
from flrunner.status import CHILD_REPORTABLE, RunStatus, clip_error, is_final, progress_problem
from parent.jobs.held_writes import HeldWrites
from parent.jobs.kill_escalation import KillEscalation
from parent.jobs.running import RunningJob
from parent.jobs.statuses import JobStatuses
from parent.jobs.store import JobRecord
from parent.loop.timers import Timers

log = logging.getLogger(__name__)


class RunReports:
    """Stores the run status a job's process reports.

    Args:
        store: the job store.
        statuses: announces a stored change.
        timers: the loop's timers.
        escalation: ends a process that lingers after its final status.
        exit_grace: seconds a process may take to exit after its final status is stored.
    """

    def __init__(self, store: HeldWrites, statuses: JobStatuses, timers: Timers, escalation: KillEscalation,
                 exit_grace: float) -> None:
        self.store = store
        self.statuses = statuses
        self.timers = timers
        self.escalation = escalation
        self.exit_grace = exit_grace

    def report(self, job: RunningJob, status: str | None, progress: Any, error: str | None) -> JobRecord:
        """Store a job process's status report durably (the reply is sent after this returns).

        Raises:
            BadRequest: an unknown status, one a job process may not report, or bad progress.
            Conflict: the job has ended already.
            StoreUnavailable: the store cannot take it now (nothing was stored).
        """
        fields: dict[str, Any] = {}
        final = status is not None and is_final(status)
        if progress is not None:
            problem = progress_problem(progress)
            if problem is None:
                fields["progress"] = progress
            elif not final:
                raise BadRequest(f"op 'run_status': field 'progress' {problem}")
            else:  # never lose a final status over its extras
                log.warning("job %s: progress dropped from the final status: %s", job.job_id, problem)
        if error is not None:
            fields["error"] = clip_error(error)
        rec = self.store.get(job.job_id, with_history=False)
        if status is None or status == rec.status.value:
            if fields:
                self.store.update(job.job_id, **fields)
                rec = self.store.get(job.job_id, with_history=False)
                self.statuses.announce(rec)
            return rec
        try:
            wanted = RunStatus(status)
        except ValueError:
            raise BadRequest(f"op 'run_status': unknown status '{status[:64]}'") from None
        if wanted not in CHILD_REPORTABLE:
            raise BadRequest(f"op 'run_status': a job process cannot report '{status}'")
        if rec.status.is_final:
            raise Conflict(f"job {job.job_id} already ended {rec.status.value}; '{status}' ignored")
        reason = "reported by the job process"
        if error:
            reason += f": {error.splitlines()[-1][:500] if error.strip() else error}"
        elif wanted is RunStatus.FINISHED_ABORTED and job.hung:
            # Aborted because it stopped heartbeating: that is how it ends, whatever it says.
            wanted, reason = RunStatus.FINISHED_ABNORMAL, f"{job.abort_reason}; it then stopped on the abort"
        elif wanted is RunStatus.FINISHED_ABORTED and job.abort_reason:
            reason = f"aborted: {job.abort_reason}"
        try:
            rec = self.store.transition(job.job_id, wanted, reason, hold=False, **fields)
        except StoreUnavailable:
            # Not acknowledged, so the job process sends it again. Should it give up (or die)
            # first, its exit records this outcome, not "without a final status".
            job.reported = (wanted, reason, fields)
            raise
        log.info("job %s: %s (%s)", job.job_id, wanted.value, reason)
        if not wanted.is_final:
            self.statuses.announce(rec)
        # A final status is announced once, when the process has exited and its exit code is
        # recorded with it (`Endings.on_exit`), so watchers see the job's end one time, complete.
        if wanted.is_final and job.abort_reason is None:
            # The job process should exit right after this ack; if something keeps it alive
            # (a stray non-daemon thread, a hung exit handler) end its group after the graces.
            job.add_timer(self.timers.call_later(self.exit_grace, self.escalation.terminate, job))
        return rec
