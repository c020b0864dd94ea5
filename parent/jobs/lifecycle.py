"""`JobLifecycle`: the job domain's one door — every job's life in one parent, from submission
to its final status, in small parts with one job each:

- `parent.jobs.submission`: a job folder checked, copied, recorded ``SUBMITTED`` and queued;
- `parent.jobs.scheduler`: when a queued job starts, and on which sites;
- `parent.jobs.launching`: its process started, its hello, heartbeats and timeouts;
- `parent.jobs.reports`: the run status its process reports, made durable;
- `parent.jobs.aborts`: abort, then SIGTERM, then SIGKILL;
- `parent.jobs.endings`: how it ended once its process is gone (or its restart after a crash);
- `parent.jobs.recovery`: what a restarted parent does with the jobs it finds.

It speaks job ids only, and reaches the rest of the parent through the events port
(`parent.events.Events`). The handlers call the parts (``jobs.submissions.prepare``,
``jobs.launching.authenticate``, ...); what spans parts is here.
"""

from __future__ import annotations

import logging

from flrunner.job import Job, job_from_meta
from flrunner.workspace import Workspace
from parent.config import ParentConfig
from parent.events import Events
from parent.jobs.aborts import Aborts
from parent.jobs.endings import Endings
from parent.jobs.held_writes import HeldWrites
from parent.jobs.kill_escalation import KillEscalation
from parent.jobs.launching import Launching
from parent.jobs.recovery import ReadoptionGate, Recovery
from parent.jobs.reports import RunReports
from parent.jobs.running import RunningJob, RunningJobs
from parent.jobs.scheduler import Scheduler
from parent.jobs.site_apps import SiteApps
from parent.jobs.statuses import JobStatuses
from parent.jobs.store import JobRecord
from parent.jobs.submission import Submissions
from parent.launchers.base import Launcher
from parent.loop.loop import FdWatch
from parent.loop.offload import Offload
from parent.loop.timers import Timers
from parent.sites.registry import SiteRegistry

log = logging.getLogger(__name__)


class JobLifecycle:
    """Owns every job's lifecycle in one parent.

    Args:
        config: the parent's settings.
        workspace: run dirs, logs.
        store: the job store (refused writes held).
        launcher: starts job processes.
        timers: the loop's timers.
        running: the running jobs (shared with the edge, which looks jobs up by id).
        registry: the logged-in sites (for scheduling).
        site_apps: a job's part on its sites.
        events: the rest of the parent.
        loop: watches the job processes' exit file descriptors.
        reaper: the lane that kills what ended processes left (off the loop).
        job_endpoint: where job processes connect.
        server_key: the parent's CURVE public key when the job socket uses CURVE.
    """

    def __init__(self, config: ParentConfig, workspace: Workspace, store: HeldWrites, launcher: Launcher,
                 timers: Timers, running: RunningJobs, registry: SiteRegistry, site_apps: SiteApps, events: Events,
                 loop: FdWatch, reaper: Offload, job_endpoint: str, server_key: str | None = None) -> None:
        self.store = store
        self.running = running
        self.statuses = JobStatuses(store, events)
        # Paused until the parent serves and re-adoption is settled (`ReadoptionGate`).
        self.scheduler = Scheduler(config, store, registry, site_apps, timers, self._launch, self.statuses.move,
                                   lambda: len(self.running), self._job_of, paused=True)
        self.gate = ReadoptionGate(running, self.scheduler)
        escalation = KillEscalation(timers, config.abort_grace, config.term_grace)
        self.submissions = Submissions(config, workspace, store, self.statuses, self.scheduler)
        self.aborts = Aborts(store, self.statuses, running, self.scheduler, site_apps, escalation, events)
        self.reports = RunReports(store, self.statuses, timers, escalation, config.abort_grace)
        self.launching = Launching(config, workspace, store, self.statuses, launcher, timers, running, site_apps,
                                   self.aborts, self.gate, self, events, job_endpoint, server_key)
        self.endings = Endings(config, store, self.statuses, running, self.scheduler, site_apps, self.launching,
                               events, loop, reaper)
        self.recovery = Recovery(config, store, self.statuses, running, self.scheduler, escalation, self.gate,
                                 timers, self)
        self._recovered = False

    # --- state -------------------------------------------------------------------------------------
    @property
    def accepting(self) -> bool:
        """False once the parent stops: no new job, no restart."""
        return self.submissions.accepting

    @property
    def reconciling(self) -> bool:
        """True while re-adoption is pending: submissions wait (NOT_READY) and nothing is scheduled."""
        return self.running.reconciling

    @property
    def ready(self) -> bool:
        """What a previous parent left is settled: recovered, and nothing waits to be re-adopted."""
        return self._recovered and not self.running.reconciling

    @property
    def busy(self) -> bool:
        """Job processes still run."""
        return len(self.running) > 0

    # --- start and stop ----------------------------------------------------------------------------
    def recover(self) -> None:
        """Settle what a previous parent left (`parent.jobs.recovery`), and remove what a crash
        in the middle of a submission left (`Submissions.remove_leftovers`)."""
        self.recovery.recover()
        self.submissions.remove_leftovers()
        self._recovered = True

    def start(self) -> None:
        """The parent serves: start scheduling (once re-adoption is settled)."""
        self.gate.serve()

    def shutdown(self, reason: str) -> None:
        """Stop taking jobs and abort every running one; queued jobs stay SUBMITTED for the next start."""
        log.info("stopping: %s; aborting %d running job(s)", reason, len(self.running))
        self.scheduler.stop()
        self.aborts.abort_all(f"parent shutdown ({reason})")

    def kill_all(self) -> None:
        """SIGKILL every running job's process group (no graces)."""
        self.aborts.kill_all()

    # --- between the parts ------------------------------------------------------------------------
    def watch(self, job: RunningJob) -> None:
        """`ExitWatch` of launching and recovery: a started or re-adopted process is watched for
        its exit, which `Endings` records."""
        self.endings.watch(job)

    def writes_stored(self, rec: JobRecord) -> None:
        """Held writes of a job were stored at last: announce its state, and schedule again."""
        self.statuses.announce(rec)
        if not self.store.holding():
            self.scheduler.kick(resources_changed=True)

    def _launch(self, job_id: str, sites: set[str]) -> None:
        self.launching.launch(job_id, sites)

    def _job_of(self, job_id: str) -> Job:
        return job_from_meta(job_id, self.store.get(job_id, with_history=False).meta)

