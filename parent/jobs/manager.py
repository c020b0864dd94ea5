"""The job manager: submit, schedule, launch, watch, abort, and record how every job ends.

This module is the domain of jobs: it knows the store, the launcher and the timers, and talks
to the outside only through the callbacks the parent gives it (push a message to a job process,
watch a file descriptor, announce a status change).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import shutil
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from flrunner.util.bundles import BundleLimitError, extract_bundle
from flrunner.errors import BadRequest, Conflict, FlrunnerError, LaunchError, NotFound, StoreUnavailable, Unauthorized
from flrunner.linux import decode_exit
from flrunner.protocol import job_ops
from flrunner.transport.wire import Message
from flrunner.job import Job, JobDefinition, load_job_folder, site_participants
from flrunner.status import CHILD_REPORTABLE, RunStatus, clip_error, is_final, progress_problem
from flrunner.workspace import Workspace

from parent.jobs.cleanup import kill_stragglers
from parent.config import ParentConfig
from parent.jobs.held_writes import HeldWrites
from parent.jobs.folder_copy import CopyLimits, copy_scanned, scan_job_folder
from parent.jobs.store import JobRecord
from parent.launchers.base import Launcher, LaunchSpec
from parent.jobs.recovery import find_live_process
from parent.launchers.adopted import AdoptedProcess
from parent.sites.registry import SiteRegistry
from parent.jobs.scheduler import Scheduler
from parent.jobs.site_apps import SiteApps
from parent.jobs.kill_escalation import KillEscalation
from parent.jobs.running import RunningJob
from parent.loop.timers import Timers

log = logging.getLogger(__name__)

LAUNCHED = (RunStatus.DISPATCHED, RunStatus.RUNNING)
#: How a restart's history entry begins (restarts are counted from the history).
RESTART_REASON = "restarted"
def hash_secret(secret: str) -> str:
    """What the store keeps of a job secret (never the secret itself)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class ManagerHooks:
    """How the job manager reaches the rest of the parent."""

    watch_fd: Callable[[int, Callable[[], None]], None]
    unwatch_fd: Callable[[int], None]
    push_to_child: Callable[[bytes, Message], None]
    on_change: Callable[[JobRecord], None]
    #: The job's process is gone (before its final status is settled): (job, how, restarting).
    on_job_exit: Callable[[RunningJob, str, bool], None] = lambda job, how, restarting: None
    #: Run blocking work off the loop: (work, done(result, exc)) with done called on the loop.
    offload: Callable[[Callable[[], Any], Callable[[Any, BaseException | None], None]], None] = \
        lambda work, done: done(work(), None)


class JobManager:
    """Owns every job's lifecycle in one parent."""

    def __init__(self, config: ParentConfig, workspace: Workspace, store: HeldWrites, launcher: Launcher,
                 timers: Timers, hooks: ManagerHooks, endpoint: Callable[[], str], registry: SiteRegistry,
                 site_apps: SiteApps) -> None:
        self.config = config
        self.ws = workspace
        self.store = store
        self.launcher = launcher
        self.timers = timers
        self.hooks = hooks
        self.endpoint = endpoint
        #: The parent's CURVE public key (Z85) when the jobs socket uses CURVE (a tcp jobs endpoint).
        self.jobs_server_key: str | None = None
        self.site_apps = site_apps
        self.scheduler = Scheduler(config, store, registry, site_apps, timers, self._launch, self._transition,
                                   lambda: len(self.running), lambda job_id: job_from_meta(
                                       job_id, self.store.get(job_id, with_history=False).meta))
        self.scheduler.paused = True  # until the parent serves; see start()
        self.running: dict[str, RunningJob] = {}
        self.by_identity: dict[bytes, str] = {}
        #: Jobs between a crash and their restart: their sites.
        self.restarting: dict[str, set[str]] = {}
        self.escalation = KillEscalation(timers, config.abort_grace, config.term_grace)
        self.accepting = True
        self._serving = False
        #: Run dirs of refused submissions that could not be removed at once (EMFILE): retried.
        self._unremoved: set[str] = set()

    def start(self) -> None:
        """The parent serves: start scheduling (once re-adoption is settled)."""
        self._serving = True
        self.offload_reconciled()

    # --- start-up -------------------------------------------------------------------------------
    def recover(self) -> None:
        """Settle what a previous parent left (see `parent.jobs.recovery`): re-adopt live job processes,
        end the others ``FINISHED:ABNORMAL``, and queue the ``SUBMITTED`` jobs again."""
        for rec in self.store.list(LAUNCHED):
            if find_live_process(rec.pid, rec.pid_create_time) and rec.secret_hash:
                self._adopt(rec)
                continue
            status, reason = RunStatus.FINISHED_ABNORMAL, "lost while the parent was down"
            if rec.abort_reason is not None and not rec.abort_hung:
                status, reason = RunStatus.FINISHED_ABORTED, f"aborted: {rec.abort_reason}; its process ended while " \
                                                             f"the parent was down"
            if rec.pid and kill_stragglers(rec.job_id, rec.pid):
                reason += f"; what was left of its process group {rec.pid} was killed"
            self._transition(rec.job_id, status, reason)
        for rec in self.store.list([RunStatus.SUBMITTED]):
            self.scheduler.add(rec.job_id)
        self._remove_unrecorded_run_dirs()

    def _remove_unrecorded_run_dirs(self) -> None:
        """Remove what a crash in the middle of a `prepare` left: run dirs of jobs the store does not
        know, and upload staging folders. Nothing is being prepared yet (the loop has not started)."""
        known = {rec.job_id for rec in self.store.list()}
        try:
            entries = list(os.scandir(self.ws.get_jobs_dir()))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.name in known or not entry.is_dir(follow_symlinks=False):
                continue
            log.warning("removing run dir %s: job %s is not in the job store (left by a submission that did "
                        "not complete)", entry.path, entry.name)
            shutil.rmtree(entry.path, ignore_errors=True)
        shutil.rmtree(os.path.join(self.ws.get_root_dir(), "uploads"), ignore_errors=True)

    def _adopt(self, rec: JobRecord) -> None:
        """Watch a job process left by an earlier parent and wait for it to say hello again."""
        try:
            proc = AdoptedProcess(rec.pid, rec.pid_create_time)  # type: ignore[arg-type]
        except OSError:  # it exited just now
            self._transition(rec.job_id, RunStatus.FINISHED_ABNORMAL, "lost while the parent was down")
            return
        job = RunningJob(rec.job_id, rec.name, proc, rec.secret_hash or "", self.timers.clock(),
                         last_heard=self.timers.clock(), job=job_from_meta(rec.job_id, rec.meta), sites=set(rec.sites),
                         adopting=True)
        self.running[rec.job_id] = job
        self.hooks.watch_fd(proc.exit_fd(), lambda: self.on_exit(rec.job_id))
        job.timers.append(self.timers.call_later(self.config.adopt_window, self._adoption_expired, rec.job_id))
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
        job.lost_reason = f"lost while the parent was down: its process did not reconnect within " \
                          f"{self.config.adopt_window:g}s"
        job.proc.terminate(signal.SIGKILL)
        self.offload_reconciled()

    @property
    def reconciling(self) -> bool:
        """True while re-adoption is pending: submissions wait (NOT_READY) and nothing is scheduled."""
        return any(job.adopting for job in self.running.values())

    def offload_reconciled(self) -> None:
        """Scheduling starts once every left-over job is re-adopted or given up."""
        if not self.reconciling and self.scheduler.paused and self.accepting and self._serving:
            self.scheduler.paused = False
            self.scheduler.kick()

    # --- submit and schedule -------------------------------------------------------------------------
    def prepare(self, job_dir: str, origin: str | None = None) -> tuple[str, JobDefinition, str]:
        """Validate a job folder and copy it into the workspace under a new job id.

        File system work only (it runs off the loop); `accept` then records and queues the job.
        Returns the job id, the definition, and where the job came from (``origin``, else the
        folder's path) for the job store and the log.

        The folder is scanned before anything is written (`parent.jobs.folder_copy`: symlink and
        special-file rules, the ``max_job_files`` and ``max_job_bytes`` caps), then copied as
        scanned. Whatever fails once the run dir exists, the run dir is removed.

        Raises:
            JobFolderError: the folder is invalid (the message names file and field, or the path).
            BadRequest: the folder is over a cap, or the copy failed (e.g. the disk is full).
        """
        for left in list(self._unremoved):
            self._remove_run_dir(left)
        jd = load_job_folder(job_dir)
        scan = scan_job_folder(jd.folder, CopyLimits(self.config.max_job_files, self.config.max_job_bytes))
        job_id = str(uuid.uuid4())
        run_dir = self.ws.get_run_dir(job_id)
        try:
            os.makedirs(os.path.dirname(run_dir), exist_ok=True)
            os.mkdir(run_dir)
        except OSError as exc:
            raise BadRequest(f"cannot create the job's run dir in the workspace: {exc}") from None
        try:
            job_folder = self.ws.get_job_folder(job_id)
            copy_scanned(scan, job_folder)
            # The server app is copied from our copy, not from the submitter's folder, which may
            # have changed since the scan.
            copy_scanned(scan.subtree(jd.server_app.name, os.path.join(job_folder, jd.server_app.name)),
                         self.ws.get_app_dir(job_id))
        except BaseException:  # anything (a full disk, EMFILE, KeyboardInterrupt): no half-made run dir
            self._remove_run_dir(run_dir)
            raise
        return job_id, jd, origin or str(jd.folder.resolve())

    def discard(self, job_id: str) -> None:
        """Forget a prepared job that is not to be accepted (its client stopped waiting)."""
        self._remove_run_dir(self.ws.get_run_dir(job_id))

    def _remove_run_dir(self, run_dir: str) -> None:
        """Remove the run dir of a refused submission, or remember to try again with the next one."""
        shutil.rmtree(run_dir, ignore_errors=True)
        if os.path.lexists(run_dir):
            # rmtree needs file descriptors too: out of them (EMFILE), it fails as the copy did.
            if run_dir not in self._unremoved:
                log.warning("cannot remove %s (left by a refused submission) yet; trying again with the next "
                            "submission", run_dir)
            self._unremoved.add(run_dir)
        else:
            self._unremoved.discard(run_dir)

    def prepare_upload(self, bundle: bytes, origin: str) -> tuple[str, JobDefinition, str]:
        """`prepare` a job folder uploaded as a tar.gz (remote admins do not share the parent's disk).

        The bundle is unpacked into a private staging folder of the workspace with the site
        bundles' rules (plain files and folders only, nothing leaving the folder) and the job
        folder caps (``max_job_files`` entries, ``max_job_bytes`` and ``max_upload_unpacked``
        bytes, checked before anything is written), and the staging folder is removed afterwards
        whatever happens.

        Raises:
            BadRequest: the bundle is not a tar.gz, or holds a link, a device, a path leaving the
                folder, or more than the caps allow.
            JobFolderError: the unpacked folder is not a valid job.
        """
        uploads = os.path.join(self.ws.get_root_dir(), "uploads")
        os.makedirs(uploads, mode=0o700, exist_ok=True)
        staging = os.path.join(uploads, uuid.uuid4().hex)
        try:
            try:
                extract_bundle(bundle, staging, min(self.config.max_upload_unpacked, self.config.max_job_bytes),
                               self.config.max_job_files)
            except BundleLimitError as exc:
                raise BadRequest(f"op 'submit': the uploaded job folder is refused: {exc}; an upload may hold "
                                 f"{self.config.max_job_files} files (raise with flrunner parent --max-job-files) of "
                                 f"{self.config.max_job_bytes} bytes (--max-job-bytes; uploads also at most "
                                 f"{self.config.max_upload_unpacked}, max_upload_unpacked)") from None
            except (ValueError, OSError) as exc:
                raise BadRequest(f"op 'submit': the uploaded job folder cannot be unpacked: {exc}") from None
            return self.prepare(staging, origin)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def accept(self, job_id: str, jd: JobDefinition, origin: str) -> JobRecord:
        """Record a prepared job as SUBMITTED (durably) and hand it to the scheduler."""
        if not self.accepting or len(self.scheduler.waiting) >= self.config.max_queued_jobs:
            shutil.rmtree(self.ws.get_run_dir(job_id), ignore_errors=True)
            if not self.accepting:
                raise Conflict("the parent is shutting down and accepts no new jobs")
            raise Conflict(f"{self.config.max_queued_jobs} jobs are already waiting; submit later")
        try:
            rec = self.store.add(job_id, jd.name, origin, jd.meta)
        except StoreUnavailable:
            self._remove_run_dir(self.ws.get_run_dir(job_id))
            raise
        log.info("job %s (%s) submitted from %s", job_id, jd.name, origin)
        self.hooks.on_change(rec)
        self.scheduler.add(job_id)
        return self.store.get(job_id)

    def submit(self, job_dir: str) -> JobRecord:
        """`prepare` and `accept` in one call (for embedding and tests; the admin socket offloads)."""
        if not self.accepting:
            raise Conflict("the parent is shutting down and accepts no new jobs")
        return self.accept(*self.prepare(job_dir))

    def _launch(self, job_id: str, sites: set[str]) -> None:
        """Start the job process (the scheduler has started its site apps on ``sites``)."""
        rec = self.store.get(job_id, with_history=False)
        if rec.status is not RunStatus.SUBMITTED:
            return
        job = self._start_process(rec, sites, resume=False)
        if job is None:
            return
        self._transition(job_id, RunStatus.DISPATCHED, f"launched by the {self.launcher.name} launcher as pid "
                         f"{job.proc.pid}", pid=job.proc.pid, pid_create_time=job.proc.create_time,
                         secret_hash=job.secret_hash, sites=sorted(sites))

    def _start_process(self, rec: JobRecord, sites: set[str], resume: bool) -> RunningJob | None:
        """Launch a job process and watch it; on failure the job ends FINISHED:FAILED_TO_RUN."""
        job_id = rec.job_id
        secret = secrets.token_urlsafe(32)
        bootstrap = {
            "job_id": job_id, "job_name": rec.name, "secret": secret, "endpoint": self.endpoint(),
            "workspace": self.ws.get_root_dir(), "heartbeat_interval": self.config.child_heartbeat_interval,
            "parent_loss_timeout": self.config.parent_loss_timeout, "log_level": self.config.log_level,
            "orphan_grace": self.config.abort_grace + self.config.term_grace, "resume": resume,
            "reconnect_grace": self.config.reconnect_grace, "parent_pid": os.getpid(),
            "log_max_bytes": self.config.job_log_max_bytes, "log_backups": self.config.job_log_backups,
        }
        if self.jobs_server_key is not None:
            bootstrap["server_key"] = self.jobs_server_key
        spec = LaunchSpec(job_id, rec.name, bootstrap, self.ws.get_app_log_file_path(job_id), self.ws.get_run_dir(job_id))
        try:
            proc = self.launcher.launch(spec)
        except Exception as exc:  # any launcher failure, e.g. out of fds for the pidfd
            reason = str(exc) if isinstance(exc, LaunchError) else f"the {self.launcher.name} launcher failed: " \
                                                                    f"{type(exc).__name__}: {exc}"
            log.error("job %s: %s", job_id, reason)
            if resume:  # it ran before: a failed restart ends it like the crash that caused it
                self._transition(job_id, RunStatus.FINISHED_ABNORMAL, f"the restart failed: {reason}")
            else:
                self._transition(job_id, RunStatus.FINISHED_FAILED_TO_RUN, reason)
            if sites:
                self.site_apps.stop(job_id, sorted(sites), "the job process could not be started")
            return None
        job = RunningJob(job_id, rec.name, proc, hash_secret(secret), self.timers.clock(), last_heard=self.timers.clock(),
                         job=job_from_meta(job_id, rec.meta), sites=set(sites))
        self.running[job_id] = job
        self.hooks.watch_fd(proc.exit_fd(), lambda: self.on_exit(job_id))
        job.timers.append(self.timers.call_later(self.config.start_timeout, self._start_timeout, job_id))
        return job

    def _start_timeout(self, job_id: str) -> None:
        job = self.running.get(job_id)
        if job is None or job.identity is not None:
            return
        log.error("job %s: no hello within %.1fs; killing it", job_id, self.config.start_timeout)
        job.start_timed_out = True
        job.proc.terminate(signal.SIGKILL)

    # --- messages from job processes --------------------------------------------------------------------
    def hello(self, identity: bytes, job_id: str, secret: str, pid: int, sealing_key: bytes | None = None) -> JobRecord:
        """Authenticate a job process. Raises `Unauthorized` for a wrong job, secret or pid.

        Its ``sealing_key`` goes to the sites its app runs on, after every hello: a process
        relaunched after a crash has a new key, and a re-adopted one tells sites that missed it.
        """
        job = self.running.get(job_id)
        if job is None or not hmac.compare_digest(job.secret_hash, hash_secret(secret)):
            self._refuse_hello(job_id, secret)
        # A sanity check only (the peer states its own pid): the secret is the proof of identity.
        if pid != job.proc.pid:
            raise Unauthorized(f"hello refused: pid {pid} is not the job's process")
        if job.identity is not None and job.identity != identity:
            self.by_identity.pop(job.identity, None)
        job.identity = identity
        job.last_heard = self.timers.clock()
        self.by_identity[identity] = job_id
        job.sealing_key = sealing_key
        if sealing_key is not None and job.sites:
            self.site_apps.send_job_key(job_id, sorted(job.sites), sealing_key)
        for t in job.timers:
            if t.fn in (self._start_timeout, self._adoption_expired):
                t.cancel()
        if job.adopting:
            job.adopting = False
            job.readopted = True
            self.store.add_history(job_id, f"re-adopted: process {pid} reconnected to the parent {os.getpid()}")
            log.warning("job %s: re-adopted (process %d)", job_id, pid)
            self.offload_reconciled()
        rec = self.store.get(job_id)
        if rec.status is RunStatus.DISPATCHED:
            rec = self._transition(job_id, RunStatus.RUNNING, f"job process {pid} said hello")
        timeout = rec.meta.get("timeout")
        if timeout and not any(t.fn == self._time_out and not t.cancelled for t in job.timers):
            # Counted from when it started running, also for a re-adopted or restarted process.
            started = next((h["time"] for h in rec.history if h["status"] == RunStatus.RUNNING.value), time.time())
            left = max(0.0, float(timeout) - (time.time() - started))
            job.timers.append(self.timers.call_later(left, self._time_out, job_id, float(timeout)))
        if job.abort_reason is not None:
            self.hooks.push_to_child(identity, job_ops.ABORT.message(reason=job.abort_reason))
        return rec

    def _refuse_hello(self, job_id: str, secret: str) -> None:
        """Why a hello is refused. A job process whose final status reached the previous parent
        (which died before answering) is told its job has ended, so it exits at once rather than
        wait out its reconnect grace; anyone else learns nothing about the job."""
        try:
            rec = self.store.get(job_id, with_history=False)
        except NotFound:
            rec = None
        if rec is not None and rec.status.is_final and rec.secret_hash \
                and hmac.compare_digest(rec.secret_hash, hash_secret(secret)):
            raise Conflict(f"hello refused: job {job_id} already ended {rec.status.value}")
        raise Unauthorized("hello refused: unknown job id or wrong secret")

    def check_heartbeats(self) -> None:
        """Abort (with escalation) every job process silent for longer than ``hung_timeout``.

        Called from the parent's housekeeping tick: O(running jobs) once a second, not per message.
        """
        now = self.timers.clock()
        for job in list(self.running.values()):
            silent = now - job.last_heard
            if job.identity is None or job.abort_reason is not None or silent <= self.config.hung_timeout:
                continue
            if self.store.get(job.job_id, with_history=False).status.is_final:
                continue  # it reported its end; its exit is being handled
            job.hung = True
            log.error("job %s: no heartbeat for %.1fs; treating it as hung", job.job_id, silent)
            self.abort(job.job_id, f"hung: no heartbeat for {silent:.1f}s (limit {self.config.hung_timeout:g}s)")

    def _time_out(self, job_id: str, timeout: float) -> None:
        job = self.running.get(job_id)
        if job is None or job.abort_reason is not None:
            return
        if self.store.get(job_id, with_history=False).status.is_final:
            return  # it reported its end and is on its way out
        self.abort(job_id, f"timeout: ran longer than {timeout:g}s")

    def job_for(self, identity: bytes) -> RunningJob:
        """The running job whose process is behind this peer identity.

        Raises:
            Unauthorized: the peer has not said hello with a valid job secret.
        """
        job_id = self.by_identity.get(identity)
        job = self.running.get(job_id) if job_id else None
        if job is None:
            raise Unauthorized("this peer has not said hello with a valid job secret")
        job.last_heard = self.timers.clock()
        return job

    def sealing_key(self, job_id: str) -> bytes | None:
        """The public key of a running job's process (None: not running, or no hello yet)."""
        job = self.running.get(job_id)
        return job.sealing_key if job is not None else None

    def report_status(self, job: RunningJob, status: str | None, progress: Any, error: str | None) -> JobRecord:
        """Store a job process's status report durably (the reply is sent after this returns)."""
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
                self.hooks.on_change(rec)
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
            self.hooks.on_change(rec)
        # A final status is announced once, when the process has exited and its exit code is
        # recorded with it (`on_exit`), so watchers see the job's end one time, complete.
        if wanted.is_final and job.abort_reason is None:
            # The job process should exit right after this ack; if something keeps it alive
            # (a stray non-daemon thread, a hung exit handler) end its group after the graces.
            job.timers.append(self.timers.call_later(self.config.abort_grace, self.escalation.terminate, job))
        return rec

    # --- abort and exit -----------------------------------------------------------------------------------
    def abort(self, job_id: str, reason: str = "aborted by admin") -> JobRecord:
        """Abort a job: a queued one ends at once; a running one is asked, then SIGTERM, then SIGKILL."""
        rec = self.resolve(job_id)
        job_id = rec.job_id
        if rec.status.is_final:
            raise Conflict(f"job {job_id} already ended {rec.status.value}")
        job = self.running.get(job_id)
        if job is None:
            self.scheduler.remove(job_id)
            sites = self.restarting.pop(job_id, None)  # between a crash and its restart
            if sites:
                self.site_apps.stop(job_id, sorted(sites), f"aborted: {reason}")
            return self._transition(job_id, RunStatus.FINISHED_ABORTED, reason)
        if job.abort_reason is not None:
            return rec
        job.abort_reason = reason
        # Durable with the request, so a parent restarted before the job ends carries it through.
        self.store.add_history(job_id, f"abort requested: {reason}", abort_reason=reason, abort_hung=job.hung)
        log.info("job %s: abort requested (%s)", job_id, reason)

        def ask() -> bool:
            if job.identity is None:
                return False
            self.hooks.push_to_child(job.identity, job_ops.ABORT.message(reason=reason))
            return True

        self.escalation.start(job, ask)
        return self.store.get(job_id)

    def on_exit(self, job_id: str) -> None:
        """The job process exited: clean its group, reap it, and record how the job ended."""
        job = self.running.get(job_id)
        if job is None or not job.proc.exited():
            return
        # Signal the group while the leader is still unreaped, so the group id cannot be reused.
        job.proc.terminate(signal.SIGKILL)
        rc = job.proc.poll()
        self.hooks.unwatch_fd(job.proc.exit_fd())
        job.proc.close()
        job.cancel_timers()
        del self.running[job_id]
        if job.identity is not None:
            self.by_identity.pop(job.identity, None)
        end = decode_exit(rc)
        exit_code, sig, how = end.code, end.signal, end.text
        rec = self.store.get(job_id)
        restart = self._restart_number(job, rec)
        self.hooks.on_job_exit(job, how, restart is not None)
        if restart is not None:
            self._restart(rec, job, how, restart)
            return
        if rec.status.is_final:
            done = self.store.record_exit(job_id, exit_code, sig)
            if done.store_error is None:  # else announced once stored
                self.hooks.on_change(done)
        elif job.reported is not None:  # its final status reached us, but the store refused it then
            status, reason, fields = job.reported
            self._transition(job_id, status, reason, **{**fields, "exit_code": exit_code, "signal": sig})
        elif job.hung:
            self._transition(job_id, RunStatus.FINISHED_ABNORMAL, f"{job.abort_reason}; process {how}",
                             exit_code=exit_code, signal=sig)
        elif job.abort_reason is not None:
            self._transition(job_id, RunStatus.FINISHED_ABORTED, f"aborted: {job.abort_reason}; process {how}",
                             exit_code=exit_code, signal=sig)
        elif job.lost_reason is not None:
            self._transition(job_id, RunStatus.FINISHED_ABNORMAL, job.lost_reason, exit_code=exit_code, signal=sig)
        elif job.start_timed_out:
            self._transition(job_id, RunStatus.FINISHED_ABNORMAL,
                             f"start timeout: no hello within {self.config.start_timeout:g}s; process {how}",
                             exit_code=exit_code, signal=sig)
        else:
            self._transition(job_id, RunStatus.FINISHED_ABNORMAL, f"job process {how} without a final status",
                             exit_code=exit_code, signal=sig)
        log.info("job %s: process %d %s", job_id, job.proc.pid, how)
        self.scheduler.kick(resources_changed=True)

    def _restart_number(self, job: RunningJob, rec: JobRecord) -> int | None:
        """Which restart this would be, if the job's process died abnormally and it may restart."""
        if rec.status.is_final or job.abort_reason is not None or job.hung or not self.accepting:
            return None
        allowed = int(rec.meta.get("max_restarts") or 0)
        done = sum(1 for h in rec.history if h["reason"].startswith(RESTART_REASON))
        return done + 1 if done < allowed else None

    def _restart(self, rec: JobRecord, old: RunningJob, how: str, number: int) -> None:
        """Start a new process for a job whose process died: it restores the last snapshot."""
        allowed = int(rec.meta.get("max_restarts") or 0)
        self.store.add_history(rec.job_id, f"{RESTART_REASON} after its process {how} (restart {number} of {allowed})")
        log.warning("job %s: process %s; restarting it (%d of %d)", rec.job_id, how, number, allowed)

        self.restarting[rec.job_id] = old.sites

        def relaunch(killed: object, exc: BaseException | None) -> None:
            if self.restarting.pop(rec.job_id, None) is None:
                return  # aborted (or the parent is stopping) while the old process was cleaned up
            current = self.store.get(rec.job_id)
            if current.status.is_final or rec.job_id in self.running:
                return
            if not self.accepting:
                self._transition(rec.job_id, RunStatus.FINISHED_ABORTED, "parent shutdown during a restart")
                self.site_apps.stop(rec.job_id, sorted(old.sites), "the job ended")
                return
            job = self._start_process(current, old.sites, resume=True)
            if job is not None:
                try:
                    self.store.update(rec.job_id, pid=job.proc.pid, pid_create_time=job.proc.create_time,
                                      secret_hash=job.secret_hash)
                except StoreUnavailable as exc:  # a restarted parent then cannot re-adopt it: it ends ABNORMAL
                    log.error("job %s: its new process %d is not recorded: %s", rec.job_id, job.proc.pid, exc)
                    return
                self.hooks.on_change(self.store.get(rec.job_id, with_history=False))

        # What the dead process left must be gone before the new one starts (both carry the job id).
        self.hooks.offload(lambda: kill_stragglers(rec.job_id), relaunch)

    def shutdown(self, reason: str = "parent shutdown") -> None:
        """Stop taking jobs and abort every running one; queued jobs stay SUBMITTED for the next start."""
        self.accepting = False
        self.scheduler.paused = True
        for job_id in list(self.running) + list(self.restarting):
            try:
                self.abort(job_id, reason)
            except FlrunnerError:
                pass

    def kill_all(self) -> None:
        """SIGKILL every running job's process group (no graces: the second stop signal, or a failed loop)."""
        for job in self.running.values():
            job.proc.terminate(signal.SIGKILL)

    # --- queries ---------------------------------------------------------------------------------------------
    def resolve(self, job_id: str) -> JobRecord:
        """The job with this id, or with this unique id prefix (as `git` does for commits)."""
        try:
            return self.store.get(job_id)
        except NotFound:
            matches = [r for r in self.store.list() if r.job_id.startswith(job_id)] if len(job_id) >= 4 else []
            if len(matches) == 1:
                return self.store.get(matches[0].job_id)
            if len(matches) > 1:
                raise BadRequest(f"job id prefix '{job_id}' is ambiguous ({len(matches)} jobs)") from None
            raise

    def _transition(self, job_id: str, status: RunStatus, reason: str, **fields: Any) -> JobRecord:
        """Move a job and announce it once it is durable (a transition the store refuses is held
        and announced when it is stored, see `parent.jobs.held_writes`)."""
        rec = self.store.transition(job_id, status, reason, **fields)
        log.info("job %s: %s (%s)%s", job_id, status.value, reason,
                 f"; not stored yet: {rec.store_error}" if rec.store_error else "")
        if rec.store_error is None:
            self.hooks.on_change(rec)
        return rec

    def stored(self, rec: JobRecord) -> None:
        """Held writes of a job were stored at last: announce its state, and schedule again."""
        self.hooks.on_change(rec)
        if not self.store.holding():
            self.scheduler.kick(resources_changed=True)


def job_from_meta(job_id: str, meta: dict) -> Job:
    """The `Job` of a stored job. A job with a site app and no ``min_clients`` needs one site."""
    deploy_map = meta.get("deploy_map") or {}
    named, everyone = site_participants(deploy_map)
    min_clients = meta.get("min_clients", 1 if (named or everyone) else 0)
    return Job(job_id, meta.get("resource_spec") or {}, deploy_map, meta, int(min_clients or 0),
               meta.get("mandatory_clients") or [])
