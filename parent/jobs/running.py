"""`RunningJob`: what the parent knows of a job whose process it started (or re-adopted) and has
not yet seen exit.

The exit is detected through the process's pidfd, registered with the parent's poller: it becomes
readable the moment the process exits, with no polling loop and no SIGCHLD handler (a handler
would be inherited by forked children, and cannot run outside the main thread when the parent is
embedded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psutil

from flrunner.job import Job

from parent.launchers.base import JobProcess
from parent.loop.timers import Timer

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
