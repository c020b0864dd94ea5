"""`JobControl`: what the parent asks of a site for its jobs — check and reserve resources, start a
job's site app from its bundle, stop it, and pass on the key of a job's process.

Starting and stopping run on the site's control threads, so the link's I/O thread never waits
for a job's app to load or to end.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import Executor

from flrunner.errors import BadRequest, Rc
from flrunner.protocol import Request
from flrunner.site.job import RunningJobs, SiteJob
from flrunner.site.resources import ResourceManager
from flrunner.site.session import SiteSession
from flrunner.util.bundles import extract_bundle
from flrunner.workspace import Workspace

log = logging.getLogger(__name__)


class JobControl:
    """The handlers of the parent's job-control requests to a site.

    Args:
        name: the site name.
        workspace: where job apps are unpacked.
        jobs: the jobs running here.
        resources: the site's resource manager.
        control: the threads jobs are started and stopped on.
        session: the site's session (a job's components send their aux requests through it).
        sealing_key: the site's secret key, for secure aux (None: a site without a kit).
        job_threads: requests of one job served at once.
    """

    def __init__(self, name: str, workspace: Workspace, jobs: RunningJobs, resources: ResourceManager,
                 control: Executor, session: SiteSession, sealing_key: bytes | None = None,
                 job_threads: int = 4) -> None:
        self.name = name
        self.workspace = workspace
        self.jobs = jobs
        self.resources = resources
        self._control = control
        self._session = session
        self._sealing_key = sealing_key
        self._job_threads = job_threads

    def check_resources(self, req: Request) -> None:
        ok, token, reason = self.resources.check(req.args["job_id"], req.args["spec"], float(req.args["ttl"]))
        req.answer(rc=Rc.OK if ok else Rc.CONFLICT, token=token, reason=reason)

    def cancel_resources(self, req: Request) -> None:
        self.resources.cancel(req.args["token"])

    def job_key(self, req: Request) -> None:
        self.jobs.use_key(req.args["job_id"], req.args["key"])

    def start_job(self, req: Request) -> None:
        self._control.submit(self._start_job, req)

    def stop_job(self, req: Request) -> None:
        # Resources first, at once: the parent may ask for them for another job right after this.
        self.resources.release_job(req.args["job_id"])
        self._control.submit(self.jobs.stop, req.args["job_id"], req.args["reason"] or "the job ended")

    def _start_job(self, req: Request) -> None:
        args, msg = req.args, req.msg
        job_id = args["job_id"]
        running = self.jobs.get(job_id)
        if running is not None:
            if args["job_key"] is not None:
                running.use_job_key(args["job_key"])
            req.answer(started=True, reason="already running")
            return
        if args["token"] and not self.resources.consume(args["token"], job_id):
            req.answer(rc=Rc.CONFLICT, reason="the resource reservation expired or is unknown")
            return
        job = SiteJob(self.name, job_id, args["job_name"], args["app"], self.workspace, self._session.sender(job_id),
                      self._job_threads, sealing_key=self._sealing_key, job_key=args["job_key"])
        try:
            if len(msg.frames) != 1:
                raise BadRequest("start_job must carry exactly one bundle frame")
            shutil.rmtree(job.app_dir, ignore_errors=True)
            bundle = msg.frames[0]
            extract_bundle(bundle.bytes if hasattr(bundle, "bytes") else bytes(bundle), job.app_dir)
            job.start()
        except Exception as exc:
            log.error("site %s: cannot start job %s: %s", self.name, job_id, exc)
            self.resources.release_job(job_id)
            job.stop(f"failed to start: {exc}")
            req.answer(rc=Rc.ERROR, reason=f"{type(exc).__name__}: {exc}"[:2000])
            return
        self.jobs.add(job)
        req.answer(started=True)


__all__ = ["JobControl"]
