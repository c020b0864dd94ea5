"""`SiteAux`: a job's aux requests to this site, served by the job's site app.

Each request runs on its job's own thread pool, so a failing or hanging handler of one job never
holds up another job or the link to the parent. A sealed request is opened with the site's kit
key and the job process's key it names; the reply is sealed back to that key
(`flrunner.aux.handling.serve_request`).
"""

from __future__ import annotations

from flrunner.aux.handling import serve_request
from flrunner.aux.secure import Direction, SealedFrom, sealed_from
from flrunner.errors import Rc
from flrunner.protocol import Request
from flrunner.security.errors import SealedError
from flrunner.site.job import RunningJobs, SiteJob
from flrunner.util.logthrottle import LogThrottle


class SiteAux:
    """The handler of the parent's aux requests to this site.

    Args:
        name: the site name.
        jobs: the jobs running here.
        sealing_key: the site's secret key (its kit's); None: it cannot open secure requests.
        refusals: where requests that do not open are logged (throttled: they come from a parent
            or a job gone wrong, and must not fill the site's log).
    """

    def __init__(self, name: str, jobs: RunningJobs, sealing_key: bytes | None, refusals: LogThrottle) -> None:
        self.name = name
        self._jobs = jobs
        self._sealing_key = sealing_key
        self._refusals = refusals

    def serve(self, req: Request) -> None:
        """Hand the request to its job's pool (I/O thread: never blocks)."""
        args = req.args
        job = self._jobs.get(args["job_id"])
        if job is None or job.stopped:
            if not args["fire_and_forget"]:
                req.answer(rc=Rc.NOT_FOUND, reason=f"job {args['job_id']} is not running on site {self.name}")
            return
        try:
            job.pool.submit(self._serve, job, req)
        except RuntimeError:  # the job stopped in between
            if not args["fire_and_forget"]:
                req.answer(rc=Rc.NOT_FOUND, reason=f"job {args['job_id']} stopped on site {self.name}")

    def _serve(self, job: SiteJob, req: Request) -> None:
        job_id, topic = req.args["job_id"], req.args["topic"]
        serve_request(
            req, lambda: self._sealed_from(req), lambda frames: job.reply_to(topic, frames),
            cannot_open=f"site {self.name} cannot open the secure request",
            cannot_travel=f"the reply of '{topic}' cannot travel",
            on_refused=lambda exc: self._refusals.warning("site %s: job %s: a secure request for '%s' was refused: %s",
                                                          self.name, job_id, topic, exc))

    def _sealed_from(self, req: Request) -> SealedFrom:
        """The keys of a sealed request: the site's own, and the job process's key it names."""
        if self._sealing_key is None:
            raise SealedError("this site has no provisioned key (it was not started with --kit)")
        if req.args["sender_key"] is None:
            raise SealedError("it names no sender key")
        return sealed_from(self._sealing_key, req.args["sender_key"], Direction.TO_SITES, req.args["job_id"],
                           req.args["topic"])


__all__ = ["SiteAux"]
