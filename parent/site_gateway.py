"""Requests from the parent to sites, and the job-control work built on them.

`SiteGateway.request` pushes a request to a logged-in site and calls back with its reply or
with why there is none (offline, timeout, the site left). `SiteJobs` uses it for what jobs need
of sites: check and reserve resources, cancel reservations, start a job's site app (shipping
the app as a bundle), stop it. Nothing here blocks: every outcome arrives as a callback on the
parent's loop.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from flrunner.bundles import make_bundle
from flrunner.job import Job
from flrunner.protocol import Rc

from flrunner.workspace import Workspace

from .outstanding import OnFail, OnReply, Outstanding
from .registry import SiteRegistry
from .router import RouterEndpoint

log = logging.getLogger(__name__)

#: {site: (ok, detail dict)} once every site answered or failed.
Results = dict[str, tuple[bool, dict]]


class SiteGateway:
    """Pushes requests to sites and routes their replies."""

    def __init__(self, endpoint: RouterEndpoint, registry: SiteRegistry, outstanding: Outstanding) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self.outstanding = outstanding

    def request(self, site: str, op: str, body: dict, timeout: float, on_reply: OnReply, on_fail: OnFail,
                frames: list | None = None, job_id: str | None = None,
                prepared: tuple[int, list] | None = None) -> None:
        """Push a request to a site; ``prepared`` (`RouterEndpoint.prepare`) reuses one encoding."""
        rec = self.registry.get(site)
        if rec is None:
            on_fail(Rc.UNAVAILABLE, f"site '{site}' is not logged in")
            return
        mid = self.endpoint.push(rec.identity, op, body, frames, prepared)
        if mid is None:
            on_fail(Rc.UNAVAILABLE, f"site '{site}' cannot be reached")
            return
        self.outstanding.expect(self.endpoint.name, rec.identity, mid, timeout, on_reply, on_fail, site=site,
                                job_id=job_id)

    def send(self, site: str, op: str, body: dict, frames: list | None = None) -> bool:
        """Push without expecting a reply; False if the site is not logged in."""
        rec = self.registry.get(site)
        if rec is None:
            return False
        return self.endpoint.push(rec.identity, op, body, frames) is not None

    def gather(self, sites: list[str], op: str, body_for: Callable[[str], dict], timeout: float,
               done: Callable[[Results], None], frames_for: Callable[[str], list] | None = None,
               job_id: str | None = None) -> None:
        """Ask every site; call ``done`` once with each site's (ok, reply body or {"reason"})."""
        results: Results = {}
        if not sites:
            done(results)
            return

        def finish(site: str, ok: bool, detail: dict) -> None:
            results[site] = (ok, detail)
            if len(results) == len(sites):
                done(results)

        for site in sites:
            self.request(site, op, body_for(site), timeout,
                         lambda msg, s=site: finish(s, msg.rc == Rc.OK, dict(msg.body)),
                         lambda rc, reason, s=site: finish(s, False, {"reason": f"{rc}: {reason}"}),
                         frames=frames_for(site) if frames_for else None, job_id=job_id)


class SiteJobs:
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
        self.gateway.gather(sorted(reqs), "check_resources",
                            lambda s: {"job_id": job_id, "spec": reqs[s], "ttl": self.reservation_ttl},
                            timeout or self.request_timeout, done, job_id=job_id)

    def cancel_resources(self, tokens: dict[str, str]) -> None:
        for site, token in tokens.items():
            if token:
                self.gateway.send(site, "cancel_resources", {"token": token})

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
        self.gateway.gather(to_start, "start_job",
                            lambda s: {"job_id": job.job_id, "job_name": job.name, "app": apps[s],
                                       "token": tokens.get(s), "meta": job.meta, "job_key": job_key},
                            timeout or self.request_timeout, finish, frames_for=lambda s: [bundles[s]],
                            job_id=job.job_id)

    def send_job_key(self, job_id: str, sites: list[str], key: bytes) -> None:
        """Tell sites the public key of the job's process, which their secure aux requests to its
        engine are sealed to (fire and forget: a site not logged in gets it when it logs in)."""
        for site in sites:
            self.gateway.send(site, "job_key", {"job_id": job_id, "key": key})

    def stop(self, job_id: str, sites: list[str], reason: str) -> None:
        for site in sites:
            self.gateway.send(site, "stop_job", {"job_id": job_id, "reason": reason})
        for key in [k for k in self._bundles if k[0] == job_id]:
            del self._bundles[key]

    def _bundle(self, job_id: str, app: str) -> bytes:
        key = (job_id, app)
        if key not in self._bundles:
            self._bundles[key] = make_bundle(os.path.join(self.ws.get_job_folder(job_id), app))
        return self._bundles[key]


__all__ = ["Results", "SiteGateway", "SiteJobs"]
