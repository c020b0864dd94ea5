"""Submission: a job folder (or an uploaded one) is checked, copied into the workspace under a
new job id, recorded ``SUBMITTED`` and queued.

The reading and copying (`Submissions.prepare`) is file system work that runs off the loop;
`Submissions.accept` then records the job durably and hands it to the scheduler, on the loop.
A run dir is never left half made: whatever fails once it exists, it is removed (or, when even
that fails for want of file descriptors, removed with the next submission), and a restarted
parent removes the run dirs of submissions a crash interrupted (`Submissions.remove_leftovers`).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid

from flrunner.errors import BadRequest, Conflict, StoreUnavailable
from flrunner.job import JobDefinition, load_job_folder
from flrunner.util.bundles import BundleLimitError, extract_bundle
from flrunner.workspace import Workspace
from parent.config import ParentConfig
from parent.jobs.folder_copy import CopyLimits, copy_scanned, scan_job_folder
from parent.jobs.held_writes import HeldWrites
from parent.jobs.scheduler import Scheduler
from parent.jobs.statuses import JobStatuses
from parent.jobs.store import JobRecord

log = logging.getLogger(__name__)

#: Refused while the parent stops.
SHUTTING_DOWN = "the parent is shutting down and accepts no new jobs"


class Submissions:
    """Takes jobs in: prepare (off the loop), then accept or discard.

    Args:
        config: the caps (``max_job_files``, ``max_job_bytes``, ``max_upload_unpacked``,
            ``max_queued_jobs``).
        workspace: where run dirs are made.
        store: the job store.
        statuses: announces an accepted job.
        scheduler: queues an accepted job; once it has stopped, nothing is accepted.
    """

    def __init__(self, config: ParentConfig, workspace: Workspace, store: HeldWrites, statuses: JobStatuses,
                 scheduler: Scheduler) -> None:
        self.config = config
        self.ws = workspace
        self.store = store
        self.statuses = statuses
        self.scheduler = scheduler
        #: Run dirs of refused submissions that could not be removed at once (EMFILE): retried.
        self._unremoved: set[str] = set()

    @property
    def accepting(self) -> bool:
        """False once the parent stops."""
        return not self.scheduler.stopped

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
        """Record a prepared job as SUBMITTED (durably) and hand it to the scheduler.

        Raises:
            Conflict: the parent is stopping, or ``max_queued_jobs`` jobs wait already.
            StoreUnavailable: the store cannot be written now (nothing was recorded).
        """
        if not self.accepting or len(self.scheduler.waiting) >= self.config.max_queued_jobs:
            shutil.rmtree(self.ws.get_run_dir(job_id), ignore_errors=True)
            if not self.accepting:
                raise Conflict(SHUTTING_DOWN)
            raise Conflict(f"{self.config.max_queued_jobs} jobs are already waiting; submit later")
        try:
            rec = self.store.add(job_id, jd.name, origin, jd.meta)
        except StoreUnavailable:
            self._remove_run_dir(self.ws.get_run_dir(job_id))
            raise
        log.info("job %s (%s) submitted from %s", job_id, jd.name, origin)
        self.statuses.announce(rec)
        self.scheduler.add(job_id)
        return self.store.get(job_id)

    def submit(self, job_dir: str) -> JobRecord:
        """`prepare` and `accept` in one call (for embedding and tests; the admin socket offloads)."""
        if not self.accepting:
            raise Conflict(SHUTTING_DOWN)
        return self.accept(*self.prepare(job_dir))

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

    def remove_leftovers(self) -> None:
        """Remove what a crash in the middle of a `prepare` left: run dirs of jobs the store does not
        know, and upload staging folders. Call it before the loop runs (nothing is being prepared)."""
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
