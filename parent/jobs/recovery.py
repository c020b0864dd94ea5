"""What a restarted parent does with the jobs a previous parent left running.

Job processes do not die with their parent. On start, before it takes new submissions, the
parent reconciles its store: each job that was ``DISPATCHED``/``RUNNING`` is re-adopted if its
process is still alive — the same pid *and* create time, since pids are reused — and says hello
again with its job secret within ``adopt_window`` seconds; otherwise it ends
``FINISHED:ABNORMAL`` ("lost while the parent was down"), after whatever is left of it is killed.
A re-adopted process is not this parent's child: its exit is seen through a pidfd (which works
for any process), and its exit status is unknown unless it reported a final status first.

Nothing is scheduled while re-adoption is pending (`ReadoptionGate`): a new job must not take
the place of one that is about to come back.
"""

from __future__ import annotations

import logging
import signal

import psutil

from flrunner.job import job_from_meta
from flrunner.status import RunStatus
from parent.config import ParentConfig
from parent.jobs.cleanup import kill_stragglers
from parent.jobs.held_writes import HeldWrites
from parent.jobs.kill_escalation import KillEscalation
from parent.jobs.running import ExitWatch, RunningJob, RunningJobs
from parent.jobs.scheduler import Scheduler
from parent.jobs.statuses import JobStatuses
from parent.jobs.store import JobRecord
from parent.launchers.adopted import AdoptedProcess
from parent.loop.timers import Timers

log = logging.getLogger(__name__)

#: The states of a job whose process was started.
LAUNCHED = (RunStatus.DISPATCHED, RunStatus.RUNNING)
#: The reason a job whose process is gone after a parent restart ends with.
LOST = "lost while the parent was down"


def find_live_process(pid: int | None, create_time: float | None) -> bool:
    """Whether the process ``pid`` that a job ran as is still alive (not a zombie, not a reused pid)."""
    if not pid or create_time is None:
        return False
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - create_time) < 0.05
    except psutil.Error:
        return False


class ReadoptionGate:
    """Scheduling starts once the parent serves and every job left running by a previous parent
    is re-adopted or given up.

    Args:
        running: the running jobs (those being re-adopted among them).
        scheduler: resumed when both hold (unless it has stopped).
    """

    def __init__(self, running: RunningJobs, scheduler: Scheduler) -> None:
        self.running = running
        self.scheduler = scheduler
        self._serving = False

    def serve(self) -> None:
        """The parent serves: scheduling starts, or starts once re-adoption is settled."""
        self._serving = True
        self.resume_scheduling_if_settled()

    def resume_scheduling_if_settled(self) -> None:
        """Resume scheduling if the parent serves and no job waits to be re-adopted any more."""
        if self._serving and not self.running.reconciling:
            self.scheduler.resume()


class Recovery:
    """Settles what a previous parent left: re-adopts live job processes, ends the others.

    Args:
        config: ``adopt_window``.
        store: the job store.
        statuses: ends the jobs that are lost.
        running: where re-adopted jobs go.
        scheduler: queues the jobs left ``SUBMITTED``.
        escalation: goes on with an abort that was under way.
        gate: resumes scheduling once re-adoption is settled.
        timers: the loop's timers.
        exits: watches a re-adopted process for its exit.
    """

    def __init__(self, config: ParentConfig, store: HeldWrites, statuses: JobStatuses, running: RunningJobs,
                 scheduler: Scheduler, escalation: KillEscalation, gate: ReadoptionGate, timers: Timers,
                 exits: ExitWatch) -> None:
        self.config = config
        self.store = store
        self.statuses = statuses
        self.running = running
        self.scheduler = scheduler
        self.escalation = escalation
        self.gate = gate
        self.timers = timers
        self.exits = exits

    def recover(self) -> None:
        """Re-adopt live job processes, end the others ``FINISHED:ABNORMAL`` (``ABORTED`` if their
        abort was under way), and queue the ``SUBMITTED`` jobs again."""
        for rec in self.store.list(LAUNCHED):
            if find_live_process(rec.pid, rec.pid_create_time) and rec.secret_hash:
                self._adopt(rec)
                continue
            status, reason = RunStatus.FINISHED_ABNORMAL, LOST
            if rec.abort_reason is not None and not rec.abort_hung:
                status, reason = RunStatus.FINISHED_ABORTED, f"aborted: {rec.abort_reason}; its process ended while " \
                                                             f"the parent was down"
            if rec.pid and kill_stragglers(rec.job_id, rec.pid):
                reason += f"; what was left of its process group {rec.pid} was killed"
            self.statuses.move(rec.job_id, status, reason)
        for rec in self.store.list([RunStatus.SUBMITTED]):
            self.scheduler.add(rec.job_id)

    def _adopt(self, rec: JobRecord) -> None:
        """Watch a job process left by an earlier parent and wait for it to say hello again."""
        try:
            proc = AdoptedProcess(rec.pid, rec.pid_create_time)  # type: ignore[arg-type]
        except OSError:  # it exited just now
            self.statuses.move(rec.job_id, RunStatus.FINISHED_ABNORMAL, LOST)
            return
        job = RunningJob(rec.job_id, rec.name, proc, rec.secret_hash or "", self.timers.clock(),
                         last_heard=self.timers.clock(), job=job_from_meta(rec.job_id, rec.meta), sites=set(rec.sites),
                         adopting=True)
        self.running.add(job)
        self.exits.watch(job)
        job.hello_timer = job.add_timer(self.timers.call_later(self.config.adopt_window, self._adoption_expired,
                                                               rec.job_id))
        if rec.abort_reason is not None:
            # Aborted before the previous parent died: the abort goes on (its graces were spent).
            job.abort_reason, job.hung = rec.abort_reason, rec.abort_hung
            log.warning("job %s: its abort (%s) was under way; ending its process", rec.job_id, rec.abort_reason)
            self.escalation.start(job, lambda: False)
        log.warning("job %s: its process %d outlived the previous parent; waiting %.0fs for it to reconnect",
                    rec.job_id, rec.pid, self.config.adopt_window)

    def _adoption_expired(self, job_id: str) -> None:
        job = self.running.get(job_id)
        if job is None or not job.adopting:
            return
        job.adopting = False
        job.lost_reason = f"{LOST}: its process did not reconnect within {self.config.adopt_window:g}s"
        job.proc.terminate(signal.SIGKILL)
        self.gate.resume_scheduling_if_settled()
