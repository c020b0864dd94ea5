"""Watching job processes: exit detection, the abort escalation, exit-status decoding.

Exit is detected through the process's pidfd, registered with the parent's poller: it becomes
readable the moment the process exits, with no polling loop and no SIGCHLD handler (a handler
would be inherited by forked children, and cannot run outside the main thread when the parent is
embedded).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from typing import Callable

import psutil

from flrunner.job import Job

from .launcher import JobProcess
from .timers import Timer, Timers

log = logging.getLogger(__name__)


@dataclass
class RunningJob:
    """A job whose process the parent started and has not yet seen exit."""

    job_id: str
    name: str
    proc: JobProcess
    secret_hash: str
    started_at: float
    identity: bytes | None = None
    synced_revision: int | None = None
    last_heard: float = 0.0
    abort_reason: str | None = None
    term_sent: bool = False
    start_timed_out: bool = False
    #: Stopped heartbeating; ends FINISHED:ABNORMAL once its process is gone.
    hung: bool = False
    #: Left by an earlier parent; waiting for it to say hello again.
    adopting: bool = False
    #: Left by an earlier parent and taken back by this one.
    readopted: bool = False
    #: Why the job is lost (it did not reconnect after a parent restart).
    lost_reason: str | None = None
    #: A final status its process reported that the store refused then: (status, reason, fields).
    reported: tuple | None = None
    #: The public key its process gave in its hello (its sites seal secure aux requests to it).
    sealing_key: bytes | None = None
    job: Job | None = None
    #: Sites whose part of the job was started (they get stop_job when it ends).
    sites: set[str] = field(default_factory=set)
    timers: list[Timer] = field(default_factory=list)
    _ps: psutil.Process | None = None

    def may_address(self, site: str) -> bool:
        """Whether this job may send to ``site``: a site it runs on, one its deploy map names (or
        any site for ``@ALL``); a job that names no site (server-only) may address any site."""
        if site in self.sites or self.job is None:
            return site in self.sites
        named, everyone = self.job.site_participants()
        return everyone or site in named or not named

    def default_targets(self, online: list[str]) -> list[str]:
        """The sites an aux request without targets goes to."""
        if self.sites:
            return sorted(self.sites)
        return [s for s in online if self.may_address(s)]

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()

    def process_info(self) -> psutil.Process | None:
        if self._ps is None:
            try:
                self._ps = psutil.Process(self.proc.pid)
                self._ps.cpu_percent(None)  # prime: the first reading is always 0
            except psutil.Error:
                return None
        return self._ps


def describe_exit(returncode: int | None) -> tuple[int | None, int | None, str]:
    """(exit code, signal number, readable text) for a Popen-style return code."""
    if returncode is None:
        return None, None, "exit status unknown"
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return None, sig, f"killed by {name}"
    return returncode, None, f"exited with code {returncode}"


class KillEscalation:
    """Abort a job process: ask nicely, then SIGTERM its group, then SIGKILL.

    Args:
        timers: the loop's timers.
        abort_grace: seconds between the abort request and SIGTERM.
        term_grace: seconds between SIGTERM and SIGKILL.
    """

    def __init__(self, timers: Timers, abort_grace: float, term_grace: float) -> None:
        self.timers = timers
        self.abort_grace = abort_grace
        self.term_grace = term_grace

    def start(self, job: RunningJob, ask: Callable[[], bool]) -> None:
        """Begin the escalation; ``ask`` sends the abort request and says whether it could."""
        asked = ask()
        if asked:
            job.timers.append(self.timers.call_later(self.abort_grace, self.terminate, job))
        else:
            self.terminate(job)

    def terminate(self, job: RunningJob) -> None:
        """SIGTERM the job's process group now, and SIGKILL it after ``term_grace`` (once per job)."""
        if job.term_sent:
            return
        job.term_sent = True
        log.info("job %s: SIGTERM to process group %d", job.job_id, job.proc.pid)
        job.proc.terminate(signal.SIGTERM)
        job.timers.append(self.timers.call_later(self.term_grace, self._kill, job))

    def _kill(self, job: RunningJob) -> None:
        log.warning("job %s: still running %.1fs after SIGTERM; SIGKILL to process group %d",
                    job.job_id, self.term_grace, job.proc.pid)
        job.proc.terminate(signal.SIGKILL)
