"""Launching a job's process and keeping an eye on it while it runs: its bootstrap, its hello,
its heartbeats, its start timeout and its job timeout.

A job's process gets a fresh per-job secret in its bootstrap (the store keeps only its hash) and
proves itself with it in its hello (`Launching.authenticate`); the connection it said hello on
then stands for the job (that mapping is the edge's, `parent.edge.job_connections`). A process
that does not say hello within ``start_timeout`` is killed; one silent for longer than
``hung_timeout`` afterwards is aborted as hung; a job that runs longer than its ``timeout`` is
aborted. How each of these ends the job is decided when the process is gone
(`parent.jobs.endings`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import signal
import time

from flrunner.errors import Conflict, LaunchError, NotFound, Unauthorized
from flrunner.job import job_from_meta
from flrunner.status import RunStatus
from flrunner.workspace import Workspace
from parent.config import ParentConfig
from parent.events import Events
from parent.jobs.aborts import Aborts
from parent.jobs.held_writes import HeldWrites
from parent.jobs.recovery import ReadoptionGate
from parent.jobs.running import ExitWatch, RunningJob, RunningJobs
from parent.jobs.site_apps import SiteApps
from parent.jobs.statuses import JobStatuses
from parent.jobs.store import JobRecord
from parent.launchers.base import Launcher, LaunchSpec
from parent.loop.timers import Timers

log = logging.getLogger(__name__)


def hash_secret(secret: str) -> str:
    """What the store keeps of a job secret (never the secret itself)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Launching:
    """Starts job processes and watches over them until they exit.

    Args:
        config: the timeouts, the job process's settings.
        workspace: the run dirs and logs.
        store: the job store.
        statuses: moves jobs to ``DISPATCHED``, ``RUNNING``, or ``FAILED_TO_RUN``.
        launcher: starts job processes.
        timers: the loop's timers.
        running: the running jobs.
        site_apps: tells a job's sites the key of its process.
        aborts: aborts a hung job, or one over its timeout.
        gate: resumes scheduling once a re-adopted job is back.
        exits: watches each started process for its exit.
        events: asks a job's process to abort (an abort requested before its hello).
        job_endpoint: where job processes connect (the job socket).
        server_key: the parent's CURVE public key (Z85) when the job socket uses CURVE (tcp).
    """

    def __init__(self, config: ParentConfig, workspace: Workspace, store: HeldWrites, statuses: JobStatuses,
                 launcher: Launcher, timers: Timers, running: RunningJobs, site_apps: SiteApps, aborts: Aborts,
                 gate: ReadoptionGate, exits: ExitWatch, events: Events, job_endpoint: str,
                 server_key: str | None = None) -> None:
        self.config = config
        self.ws = workspace
        self.store = store
        self.statuses = statuses
        self.launcher = launcher
        self.timers = timers
        self.running = running
        self.site_apps = site_apps
        self.aborts = aborts
        self.gate = gate
        self.exits = exits
        self.events = events
        self.job_endpoint = job_endpoint
        self.server_key = server_key

    # --- start ------------------------------------------------------------------------------------
    def launch(self, job_id: str, sites: set[str]) -> None:
        """Start the job's process (the scheduler has started its site apps on ``sites``)."""
        rec = self.store.get(job_id, with_history=False)
        if rec.status is not RunStatus.SUBMITTED:
            return
        job = self.start_process(rec, sites, resume=False)
        if job is None:
            return
        self.statuses.move(job_id, RunStatus.DISPATCHED, f"launched by the {self.launcher.name} launcher as pid "
                           f"{job.proc.pid}", pid=job.proc.pid, pid_create_time=job.proc.create_time,
                           secret_hash=job.secret_hash, sites=sorted(sites))

    def start_process(self, rec: JobRecord, sites: set[str], resume: bool) -> RunningJob | None:
        """Launch a job's process and watch it; on failure the job ends ``FINISHED:FAILED_TO_RUN``
        (``FINISHED:ABNORMAL`` for a restart: ``resume``)."""
        job_id = rec.job_id
        secret = secrets.token_urlsafe(32)
        cfg = self.config
        bootstrap = {
            "job_id": job_id, "job_name": rec.name, "secret": secret, "endpoint": self.job_endpoint,
            "workspace": self.ws.get_root_dir(), "heartbeat_interval": cfg.child_heartbeat_interval,
            "parent_loss_timeout": cfg.parent_loss_timeout, "log_level": cfg.log_level,
            "orphan_grace": cfg.abort_grace + cfg.term_grace, "resume": resume,
            "reconnect_grace": cfg.reconnect_grace, "parent_pid": os.getpid(),
            "log_max_bytes": cfg.job_log_max_bytes, "log_backups": cfg.job_log_backups,
        }
        if self.server_key is not None:
            bootstrap["server_key"] = self.server_key
        spec = LaunchSpec(job_id, rec.name, bootstrap, self.ws.get_app_log_file_path(job_id),
                          self.ws.get_run_dir(job_id))
        try:
            proc = self.launcher.launch(spec)
        except Exception as exc:  # any launcher failure, e.g. out of fds for the pidfd
            reason = str(exc) if isinstance(exc, LaunchError) else f"the {self.launcher.name} launcher failed: " \
                                                                    f"{type(exc).__name__}: {exc}"
            log.error("job %s: %s", job_id, reason)
            if resume:  # it ran before: a failed restart ends it like the crash that caused it
                self.statuses.move(job_id, RunStatus.FINISHED_ABNORMAL, f"the restart failed: {reason}")
            else:
                self.statuses.move(job_id, RunStatus.FINISHED_FAILED_TO_RUN, reason)
            if sites:
                self.site_apps.stop(job_id, sorted(sites), "the job process could not be started")
            return None
        now = self.timers.clock()
        job = RunningJob(job_id, rec.name, proc, hash_secret(secret), now, last_heard=now,
                         job=job_from_meta(job_id, rec.meta), sites=set(sites))
        self.running.add(job)
        self.exits.watch(job)
        job.hello_timer = job.add_timer(self.timers.call_later(cfg.start_timeout, self._start_timed_out, job_id))
        return job

    def _start_timed_out(self, job_id: str) -> None:
        job = self.running.get(job_id)
        if job is None or job.said_hello:
            return
        log.error("job %s: no hello within %.1fs; killing it", job_id, self.config.start_timeout)
        job.start_timed_out = True
        job.proc.terminate(signal.SIGKILL)

    # --- hello ------------------------------------------------------------------------------------
    def authenticate(self, job_id: str, secret: str, pid: int) -> RunningJob:
        """The running job whose process says hello with this secret.

        Raises:
            Unauthorized: a wrong job, secret or pid.
            Conflict: the job ended already (its final status reached a parent that died before
                answering): its process then exits at once.
        """
        job = self.running.get(job_id)
        if job is None or not hmac.compare_digest(job.secret_hash, hash_secret(secret)):
            self._refuse_hello(job_id, secret)
        assert job is not None
        # A sanity check only (the peer states its own pid): the secret is the proof of identity.
        if pid != job.proc.pid:
            raise Unauthorized(f"hello refused: pid {pid} is not the job's process")
        return job

    def _refuse_hello(self, job_id: str, secret: str) -> None:
        """Why a hello is refused. A job process whose final status reached the previous parent
        (which died before answering) is told its job has ended, so it exits at once rather than
        wait out its reconnect grace; anyone else learns nothing about the job."""
        try:
            rec: JobRecord | None = self.store.get(job_id, with_history=False)
        except NotFound:
            rec = None
        if rec is not None and rec.status.is_final and rec.secret_hash \
                and hmac.compare_digest(rec.secret_hash, hash_secret(secret)):
            raise Conflict(f"hello refused: job {job_id} already ended {rec.status.value}")
        raise Unauthorized("hello refused: unknown job id or wrong secret")

    def said_hello(self, job: RunningJob, sealing_key: bytes | None) -> JobRecord:
        """An `authenticate`d job's process said hello (on a connection now bound to its job):
        it runs.

        Its ``sealing_key`` goes to the sites its app runs on, after every hello: a process
        relaunched after a crash has a new key, and a re-adopted one tells sites that missed it.
        """
        job_id = job.job_id
        job.said_hello = True
        job.last_heard = self.timers.clock()
        job.sealing_key = sealing_key
        if sealing_key is not None and job.sites:
            self.site_apps.send_job_key(job_id, sorted(job.sites), sealing_key)
        if job.hello_timer is not None:
            job.hello_timer.cancel()
        if job.adopting:
            job.adopting = False
            job.readopted = True
            self.store.add_history(job_id, f"re-adopted: process {job.proc.pid} reconnected to the parent "
                                           f"{os.getpid()}")
            log.warning("job %s: re-adopted (process %d)", job_id, job.proc.pid)
            self.gate.resume_scheduling_if_settled()
        rec = self.store.get(job_id)
        if rec.status is RunStatus.DISPATCHED:
            rec = self.statuses.move(job_id, RunStatus.RUNNING, f"job process {job.proc.pid} said hello")
        timeout = rec.meta.get("timeout")
        if timeout and (job.timeout_timer is None or job.timeout_timer.cancelled):
            # Counted from when it started running, also for a re-adopted or restarted process.
            started = next((h["time"] for h in rec.history if h["status"] == RunStatus.RUNNING.value), time.time())
            left = max(0.0, float(timeout) - (time.time() - started))
            job.timeout_timer = job.add_timer(self.timers.call_later(left, self._timed_out, job_id, float(timeout)))
        if job.abort_reason is not None:
            self.events.ask_to_abort(job_id, job.abort_reason)
        return rec

    # --- while it runs ----------------------------------------------------------------------------
    def _timed_out(self, job_id: str, timeout: float) -> None:
        job = self.running.get(job_id)
        if job is None or job.abort_reason is not None:
            return
        if self.store.get(job_id, with_history=False).status.is_final:
            return  # it reported its end and is on its way out
        self.aborts.abort(job_id, f"timeout: ran longer than {timeout:g}s")

    def check_heartbeats(self) -> None:
        """Abort (with escalation) every job process silent for longer than ``hung_timeout``.

        Called from the parent's housekeeping tick: O(running jobs) once a second, not per message.
        """
        now = self.timers.clock()
        for job in self.running.values():
            silent = now - job.last_heard
            if not job.said_hello or job.abort_reason is not None or silent <= self.config.hung_timeout:
                continue
            if self.store.get(job.job_id, with_history=False).status.is_final:
                continue  # it reported its end; its exit is being handled
            job.hung = True
            log.error("job %s: no heartbeat for %.1fs; treating it as hung", job.job_id, silent)
            self.aborts.abort(job.job_id, f"hung: no heartbeat for {silent:.1f}s (limit {self.config.hung_timeout:g}s)")
