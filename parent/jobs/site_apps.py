"""A job's part on its sites, from the parent's side: check and reserve resources, cancel
reservations, start the job's site app (shipped as a bundle), tell sites the key of the job's
process, stop the site app. Built on `parent.edge.site_requests.SiteGateway`; every outcome
arrives as a callback on the parent's loop.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from flrunner.job import Job
from flrunner.protocol import site_ops
from flrunner.util.bundles import make_bundle
from flrunner.workspace import Workspace

from parent.edge.site_requests import Results, SiteGateway

log = logging.getLogger(__name__)


class SiteApps:
    """Resources and site apps of jobs, on the sites."""

    def __init__(self, gateway: SiteGateway, workspace: Workspace, reservation_ttl: float = 30.0,
                 request_timeout: float = 10.0) -> None:
        self.gateway = gateway
        self.ws = workspace
        self.reservation_ttl = reservation_ttl
        self.request_timeout = request_timeout
        self._bundles: dict[tuple[str, str], bytes] = {}

    def check_resources(self, job_id: str, reqs: dict[str, dict], done: Callable[[Results], None],
                        timeout: float | None = None) -> None:
        """Ask each site of ``reqs`` whether its spec fits, reserving it: ok -> {"token"}."""
        self.gateway.gather(sorted(reqs), lambda s: site_ops.CHECK_RESOURCES.message(
                                job_id=job_id, spec=reqs[s], ttl=self.reservation_ttl),
                            timeout or self.request_timeout, done, job_id=job_id)

    def cancel_resources(self, tokens: dict[str, str]) -> None:
        for site, token in tokens.items():
            if token:
                self.gateway.send(site, site_ops.CANCEL_RESOURCES.message(token=token))

    def start(self, job: Job, sites: list[str], tokens: dict[str, str], done: Callable[[Results], None],
              timeout: float | None = None, job_key: bytes | None = None) -> None:
        """Ship each site its app and start it there (consuming the site's reservation).

        ``job_key`` is the job process's public key once it has said hello (a site app started by
        the job's engine); sites started before that get it with the hello (`send_job_key`).
        """
        apps = {s: job.get_application_name(s) for s in sites}
        missing = sorted(s for s, app in apps.items() if app is None)
        to_start = [s for s in sites if apps[s] is not None]

        def finish(results: Results) -> None:
            for s in missing:
                results[s] = (False, {"reason": f"no app is deployed to site '{s}' in meta.json deploy_map"})
            done(results)

        try:
            bundles = {s: self._bundle(job.job_id, apps[s]) for s in to_start}  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:
            finish({s: (False, {"reason": f"cannot bundle the app: {exc}"}) for s in to_start})
            return
        self.gateway.gather(to_start, lambda s: site_ops.START_JOB.message(
                                [bundles[s]], job_id=job.job_id, job_name=job.name, app=apps[s], token=tokens.get(s),
                                meta=job.meta, job_key=job_key),
                            timeout or self.request_timeout, finish, job_id=job.job_id)

    def send_job_key(self, job_id: str, sites: list[str], key: bytes) -> None:
        """Tell sites the public key of the job's process, which their secure aux requests to its
        engine are sealed to (fire and forget: a site not logged in gets it when it logs in)."""
        for site in sites:
            self.gateway.send(site, site_ops.JOB_KEY.message(job_id=job_id, key=key))

    def stop(self, job_id: str, sites: list[str], reason: str) -> None:
        for site in sites:
            self.gateway.send(site, site_ops.STOP_JOB.message(job_id=job_id, reason=reason))
        for key in [k for k in self._bundles if k[0] == job_id]:
            del self._bundles[key]

    def _bundle(self, job_id: str, app: str) -> bytes:
        key = (job_id, app)
        if key not in self._bundles:
            self._bundles[key] = make_bundle(os.path.join(self.ws.get_job_folder(job_id), app))
        return self._bundles[key]
