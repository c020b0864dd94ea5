"""`RunningJob`: what the parent knows of a job whose process it started (or re-adopted) and has
not yet seen exit; `RunningJobs`: all of them, and the jobs between a crash and their restart.

The exit is detected through the process's pidfd, registered with the parent's poller: it becomes
readable the moment the process exits, with no polling loop and no SIGCHLD handler (a handler
would be inherited by forked children, and cannot run outside the main thread when the parent is
embedded).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

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
    #: Its process proved itself with the job's secret (it may then be asked to abort, and must
    #: heartbeat).
    said_hello: bool = False
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
    #: The wait for its hello (the start timeout, or the adoption window): a hello cancels it.
    hello_timer: Timer | None = None
    #: Its ``timeout`` from meta.json, once it runs.
    timeout_timer: Timer | None = None
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

    def add_timer(self, timer: Timer) -> Timer:
        """Keep ``timer`` to be cancelled when the process is gone; returns it."""
        self.timers.append(timer)
        return timer

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


class RunningJobs:
    """The jobs whose processes run (or are being re-adopted), by job id, and the jobs between a
    crash of their process and its restart.

    Args:
        clock: the loop's clock, for when a job's process was last heard from.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._jobs: dict[str, RunningJob] = {}
        #: Jobs between a crash and their restart: the sites their site apps run on.
        self.restarting: dict[str, set[str]] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def values(self) -> list[RunningJob]:
        return list(self._jobs.values())

    def get(self, job_id: str) -> RunningJob | None:
        return self._jobs.get(job_id)

    def add(self, job: RunningJob) -> None:
        self._jobs[job.job_id] = job

    def remove(self, job_id: str) -> None:
        del self._jobs[job_id]

    def heard_from(self, job_id: str) -> RunningJob | None:
        """A running job's process sent something: it is alive now. None if it is not running."""
        job = self._jobs.get(job_id)
        if job is not None:
            job.last_heard = self.clock()
        return job

    def sealing_key(self, job_id: str) -> bytes | None:
        """The public key of a running job's process (None: not running, or no hello yet)."""
        job = self._jobs.get(job_id)
        return job.sealing_key if job is not None else None

    @property
    def reconciling(self) -> bool:
        """True while jobs left by a previous parent wait to be re-adopted (nothing is scheduled then)."""
        return any(job.adopting for job in self._jobs.values())


class ExitWatch(Protocol):
    """Watches a started (or re-adopted) job's process for its exit, which `parent.jobs.endings`
    then records."""

    def watch(self, job: RunningJob) -> None:
        """Call back on the loop when ``job``'s process exits."""
