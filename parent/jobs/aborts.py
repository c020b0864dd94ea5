"""Aborting jobs: a queued job ends at once; a running one is asked to stop, then its process
group gets SIGTERM, then SIGKILL (`parent.jobs.kill_escalation`).

The abort is written to the job's history with the request, so a parent restarted before the
job ends carries it through (`parent.jobs.recovery`). How the job then ends — ``ABORTED``, or
``ABNORMAL`` for a hung one — is decided when its process is gone (`parent.jobs.endings`).
"""

from __future__ import annotations

import logging
import signal

from flrunner.errors import Conflict, FlrunnerError
from flrunner.status import RunStatus
from parent.events import Events
from parent.jobs.held_writes import HeldWrites
from parent.jobs.kill_escalation import KillEscalation
from parent.jobs.running import RunningJobs
from parent.jobs.scheduler import Scheduler
from parent.jobs.site_apps import SiteApps
from parent.jobs.statuses import JobStatuses
from parent.jobs.store import JobRecord

log = logging.getLogger(__name__)


class Aborts:
    """Aborts jobs, queued or running.

    Args:
        store: the job store.
        statuses: moves a queued job to ``FINISHED:ABORTED``.
        running: the running jobs (and those between a crash and their restart).
        scheduler: forgets an aborted job that waits.
        site_apps: stops the site apps of a job aborted between a crash and its restart.
        escalation: ask, SIGTERM, SIGKILL.
        events: asks a job's process to abort (`Events.ask_to_abort`).
    """

    def __init__(self, store: HeldWrites, statuses: JobStatuses, running: RunningJobs, scheduler: Scheduler,
                 site_apps: SiteApps, escalation: KillEscalation, events: Events) -> None:
        self.store = store
        self.statuses = statuses
        self.running = running
        self.scheduler = scheduler
        self.site_apps = site_apps
        self.escalation = escalation
        self.events = events

    def abort(self, job_id: str, reason: str = "aborted by admin") -> JobRecord:
        """Abort a job: a queued one ends at once; a running one is asked, then SIGTERM, then SIGKILL.

        Raises:
            NotFound: no such job (``job_id`` may be a unique prefix).
            Conflict: the job has ended already.
        """
        rec = self.statuses.resolve(job_id)
        job_id = rec.job_id
        if rec.status.is_final:
            raise Conflict(f"job {job_id} already ended {rec.status.value}")
        job = self.running.get(job_id)
        if job is None:
            self.scheduler.remove(job_id)
            sites = self.running.restarting.pop(job_id, None)  # between a crash and its restart
            if sites:
                self.site_apps.stop(job_id, sorted(sites), f"aborted: {reason}")
            return self.statuses.move(job_id, RunStatus.FINISHED_ABORTED, reason)
        if job.abort_reason is not None:
            return rec
        job.abort_reason = reason
        # Durable with the request, so a parent restarted before the job ends carries it through.
        self.store.add_history(job_id, f"abort requested: {reason}", abort_reason=reason, abort_hung=job.hung)
        log.info("job %s: abort requested (%s)", job_id, reason)
        self.escalation.start(job, lambda: self.events.ask_to_abort(job_id, reason))
        return self.store.get(job_id)

    def abort_all(self, reason: str) -> None:
        """Abort every running job, and every job between a crash and its restart."""
        for job_id in list(self.running) + list(self.running.restarting):
            try:
                self.abort(job_id, reason)
            except FlrunnerError:
                pass

    def kill_all(self) -> None:
        """SIGKILL every running job's process group (no graces: the second stop signal, or a failed loop)."""
        for job in self.running.values():
            job.proc.terminate(signal.SIGKILL)
