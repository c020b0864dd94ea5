"""How a job ends when its process is gone: restarted after a crash, or its final status recorded
with the exit code and signal.

The decision is a table (`ENDINGS`): the first rule that holds gives the job's final status, the
cause, and the reason written to its history. A job that may restart (``max_restarts`` in its
meta.json, an abnormal end, no abort, the parent not stopping) gets a new process instead, which
restores its last snapshot; its site apps keep running meanwhile.

Before the status is recorded the process group is killed (while its leader is still unreaped,
so the group id cannot have been reused), the process is reaped, and descendants that left the
group are killed off the loop (`parent.jobs.cleanup`).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from flrunner.errors import StoreUnavailable
from flrunner.linux import decode_exit
from flrunner.status import RunStatus
from parent.config import ParentConfig
from parent.events import Events
from parent.jobs.cleanup import kill_stragglers
from parent.jobs.held_writes import HeldWrites
from parent.jobs.launching import Launching
from parent.jobs.running import RunningJob, RunningJobs
from parent.jobs.scheduler import Scheduler
from parent.jobs.site_apps import SiteApps
from parent.jobs.statuses import JobStatuses
from parent.jobs.store import JobRecord
from parent.loop.loop import FdWatch
from parent.loop.offload import Offload

log = logging.getLogger(__name__)

#: How a restart's history entry begins (restarts are counted from the history).
RESTART_REASON = "restarted"


@dataclass(frozen=True)
class ExitFacts:
    """What is known of a job once its process is gone."""

    job: RunningJob
    record: JobRecord
    #: How the process ended ("exited with code 1", "killed by SIGKILL", "exit status unknown").
    how: str
    start_timeout: float


@dataclass(frozen=True)
class Ending:
    """How a job ends: its final status, the cause (the rule's name) and the reason recorded."""

    status: RunStatus
    cause: str
    reason: str
    #: Fields stored with the status (those of a reported final status the store refused then).
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """One row of `ENDINGS`: when it holds, and what it gives (status, reason)."""

    cause: str
    holds: Callable[[ExitFacts], bool]
    gives: Callable[[ExitFacts], tuple[RunStatus, str]]


#: The cause of an ending whose final status was stored before the process exited.
STORED = "stored"
#: The cause of an ending whose final status was reported, but refused by the store then.
REPORTED = "reported"

ABNORMAL, ABORTED = RunStatus.FINISHED_ABNORMAL, RunStatus.FINISHED_ABORTED

#: The first rule that holds decides how the job ends.
ENDINGS: tuple[Rule, ...] = (
    Rule(STORED, lambda f: f.record.status.is_final,
         lambda f: (f.record.status, "its final status was stored before its process exited")),
    Rule(REPORTED, lambda f: f.job.reported is not None,
         lambda f: (f.job.reported[0], f.job.reported[1])),  # type: ignore[index]
    Rule("hung", lambda f: f.job.hung,
         lambda f: (ABNORMAL, f"{f.job.abort_reason}; process {f.how}")),
    Rule("aborted", lambda f: f.job.abort_reason is not None,
         lambda f: (ABORTED, f"aborted: {f.job.abort_reason}; process {f.how}")),
    Rule("lost after a parent restart", lambda f: f.job.lost_reason is not None,
         lambda f: (ABNORMAL, str(f.job.lost_reason))),
    Rule("start timeout", lambda f: f.job.start_timed_out,
         lambda f: (ABNORMAL, f"start timeout: no hello within {f.start_timeout:g}s; process {f.how}")),
    Rule("crashed", lambda f: True,
         lambda f: (ABNORMAL, f"job process {f.how} without a final status")),
)


def decide(facts: ExitFacts) -> Ending:
    """How the job ends, by the first rule of `ENDINGS` that holds."""
    rule = next(r for r in ENDINGS if r.holds(facts))
    status, reason = rule.gives(facts)
    fields: dict[str, Any] = facts.job.reported[2] if rule.cause == REPORTED else {}  # type: ignore[index]
    return Ending(status, rule.cause, reason, dict(fields))


class Endings:
    """Watches job processes for their exit, and records how each job ended (or restarts it).

    Args:
        config: ``start_timeout`` (for the reason of a start timeout).
        store: the job store.
        statuses: records final statuses.
        running: the running jobs (and those between a crash and their restart).
        scheduler: tried again when a job ends (its slot and its sites are free); once it has
            stopped, nothing restarts.
        site_apps: stops a job's site apps when it ends.
        launching: starts the new process of a restarting job.
        events: told when a job's process is gone (`Events.job_ended`).
        loop: watches the processes' exit file descriptors.
        reaper: the lane that kills what an ended process left (off the loop).
    """

    def __init__(self, config: ParentConfig, store: HeldWrites, statuses: JobStatuses, running: RunningJobs,
                 scheduler: Scheduler, site_apps: SiteApps, launching: Launching, events: Events, loop: FdWatch,
                 reaper: Offload) -> None:
        self.config = config
        self.store = store
        self.statuses = statuses
        self.running = running
        self.scheduler = scheduler
        self.site_apps = site_apps
        self.launching = launching
        self.events = events
        self.loop = loop
        self.reaper = reaper

    def watch(self, job: RunningJob) -> None:
        """Call `on_exit` when ``job``'s process exits."""
        job_id = job.job_id
        self.loop.watch_fd(job.proc.exit_fd(), lambda: self.on_exit(job_id))

    def on_exit(self, job_id: str) -> None:
        """The job process exited: clean its group, reap it, and record how the job ended."""
        job = self.running.get(job_id)
        if job is None or not job.proc.exited():
            return
        # Signal the group while the leader is still unreaped, so the group id cannot be reused.
        job.proc.terminate(signal.SIGKILL)
        rc = job.proc.poll()
        self.loop.unwatch_fd(job.proc.exit_fd())
        job.proc.close()
        job.cancel_timers()
        self.running.remove(job_id)
        end = decode_exit(rc)
        rec = self.store.get(job_id)
        restart = self._restart_number(job, rec)
        self.events.job_ended(job_id, end.text, restart is not None)
        if restart is not None:
            self._restart(rec, job, end.text, restart)
            return
        # Descendants that left the job's group (setsid) are found by their job id, off the loop.
        self.reaper.run(lambda: kill_stragglers(job_id), lambda killed, exc: None)
        if job.sites:
            self.site_apps.stop(job_id, sorted(job.sites), f"job process {end.text}")
        ending = decide(ExitFacts(job, rec, end.text, self.config.start_timeout))
        if ending.cause == STORED:
            done = self.store.record_exit(job_id, end.code, end.signal)
            if done.store_error is None:  # else announced once stored
                self.statuses.announce(done)
        else:
            self.statuses.move(job_id, ending.status, ending.reason,
                               **{**ending.fields, "exit_code": end.code, "signal": end.signal})
        log.info("job %s: process %d %s", job_id, job.proc.pid, end.text)
        self.scheduler.kick(resources_changed=True)

    # --- crash-restarts ------------------------------------------------------------------------
    def _restart_number(self, job: RunningJob, rec: JobRecord) -> int | None:
        """Which restart this would be, if the job's process died abnormally and it may restart."""
        if rec.status.is_final or job.abort_reason is not None or job.hung or self.scheduler.stopped:
            return None
        allowed = int(rec.meta.get("max_restarts") or 0)
        done = sum(1 for h in rec.history if h["reason"].startswith(RESTART_REASON))
        return done + 1 if done < allowed else None

    def _restart(self, rec: JobRecord, old: RunningJob, how: str, number: int) -> None:
        """Start a new process for a job whose process died: it restores the last snapshot."""
        job_id = rec.job_id
        allowed = int(rec.meta.get("max_restarts") or 0)
        self.store.add_history(job_id, f"{RESTART_REASON} after its process {how} (restart {number} of {allowed})")
        log.warning("job %s: process %s; restarting it (%d of %d)", job_id, how, number, allowed)
        self.running.restarting[job_id] = old.sites

        def relaunch(killed: object, exc: BaseException | None) -> None:
            if self.running.restarting.pop(job_id, None) is None:
                return  # aborted (or the parent is stopping) while the old process was cleaned up
            current = self.store.get(job_id)
            if current.status.is_final or job_id in self.running:
                return
            if self.scheduler.stopped:
                self.statuses.move(job_id, RunStatus.FINISHED_ABORTED, "parent shutdown during a restart")
                self.site_apps.stop(job_id, sorted(old.sites), "the job ended")
                return
            job = self.launching.start_process(current, old.sites, resume=True)
            if job is not None:
                try:
                    self.store.update(job_id, pid=job.proc.pid, pid_create_time=job.proc.create_time,
                                      secret_hash=job.secret_hash)
                except StoreUnavailable as exc:  # a restarted parent then cannot re-adopt it: it ends ABNORMAL
                    log.error("job %s: its new process %d is not recorded: %s", job_id, job.proc.pid, exc)
                    return
                self.statuses.announce(self.store.get(job_id, with_history=False))

        # What the dead process left must be gone before the new one starts (both carry the job id).
        self.reaper.run(lambda: kill_stragglers(job_id), relaunch)
