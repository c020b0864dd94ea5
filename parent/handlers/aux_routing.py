"""Routing between a job's engine and sites: aux requests both ways, and the job-control
requests a job's engine makes of sites (resources, starting its site app).

The parent only routes: payloads stay in their raw frames and are forwarded as they arrived
(no decode, no copy). A request to several sites is sent to all of them at once; each target's
reply (or the reason there is none: unknown, offline, timed out, left while waited on) goes back
to the engine as it comes. A secure request's payload is ciphertext the parent has no key for:
it forwards each site the payload's key sealed for that site, and sends nothing to a site the
request was not sealed for. A site's secure request to the engine is forwarded the same way, its
key sealed for the job process's key, which the parent passed on from the job's hello.
"""

from __future__ import annotations

import logging
from typing import Callable

from flrunner.client import PUBLIC_KEY_PROP
from flrunner.errors import BadRequest, NotFound, Unauthorized
from flrunner.protocol import Rc, Request, aux_ops, job_ops
from flrunner.transport.wire import Message
from parent.edge.awaited import AwaitedReplies
from parent.edge.endpoint import RouterEndpoint
from parent.edge.job_connections import JobConnections
from parent.edge.site_requests import Results, SiteGateway
from parent.jobs.running import RunningJob, RunningJobs
from parent.jobs.site_apps import SiteApps
from parent.loop.timers import Timer, Timers
from parent.sites.registry import SiteRegistry

log = logging.getLogger(__name__)

#: Extra seconds the parent waits beyond a request's own timeout (the requester times out first).
SLACK = 2.0


class AuxService:
    """Serves the routed ops of the jobs and sites sockets.

    Args:
        job_socket: the jobs socket.
        site_socket: the sites socket.
        connections: which connection is which job process.
        running: the running jobs.
        registry: the logged-in sites.
        gateway: requests to sites.
        site_apps: a job's part on its sites.
        awaited: the requests forwarded to a job process that await its reply.
        timers: the loop's timers.
        login_grace: see `login_grace_until`.
    """

    def __init__(self, job_socket: RouterEndpoint, site_socket: RouterEndpoint, connections: JobConnections,
                 running: RunningJobs, registry: SiteRegistry, gateway: SiteGateway, site_apps: SiteApps,
                 awaited: AwaitedReplies, timers: Timers, login_grace: float = 15.0) -> None:
        self.job_socket = job_socket
        self.site_socket = site_socket
        self.connections = connections
        self.running = running
        self.registry = registry
        self.gateway = gateway
        self.site_apps = site_apps
        self.awaited = awaited
        self.timers = timers
        #: For this long after the parent starts, a request of a re-adopted job to one of its sites
        #: that has not logged in again yet waits for its login instead of failing at once.
        self.login_grace_until = timers.clock() + login_grace
        self._awaiting_login: dict[str, list[tuple[Callable[[], None], Timer, str]]] = {}
        job_socket.on(aux_ops.FROM_JOB, self.job_aux)
        job_socket.on(job_ops.CHECK_RESOURCES, self.check_resources)
        job_socket.on(job_ops.CANCEL_RESOURCES, self.cancel_resources)
        job_socket.on(job_ops.START_CLIENT_JOB, self.start_client_job)
        site_socket.on(aux_ops.FROM_SITE, self.site_aux)

    # --- job -> sites --------------------------------------------------------------------------
    def job_aux(self, req: Request) -> None:
        job = self.connections.job(req.peer)
        topic, timeout = req.args["topic"], float(req.args["timeout"])
        targets = req.args["targets"] or job.default_targets(self.registry.names())
        if not all(isinstance(t, str) for t in targets):
            raise BadRequest("op 'aux': field 'targets' must be a list of site names")
        targets = list(dict.fromkeys(targets))
        body = {"job_id": job.job_id, "topic": topic, "timeout": timeout}
        sealed = _sealed_keys(req.args)
        if sealed is not None:
            body["sender_key"] = req.args["sender_key"]
        frames = req.msg.frames
        if req.args["fire_and_forget"]:
            body["fire_and_forget"] = True
            for site in targets:
                if job.may_address(site) and (sealed is None or site in sealed):
                    self.gateway.send(site, aux_ops.TO_SITE.message(frames, **_for_site(body, sealed, site)))
            return None
        # First the plan (which sites will answer), then one reply per site as it comes. The
        # callbacks keep only who asked and the request id, not the payload, so a big request is
        # freed once it is sent rather than when the slowest site answers.
        asker, request = req.peer, Message(req.msg.op, id=req.msg.id)
        self.job_socket.reply(asker, request, {"targets": targets})
        # One encoding for every site; a secure request's header differs per site (its sealed
        # key), so there only the (ciphertext) frames are shared.
        prepared = self.site_socket.prepare(aux_ops.TO_SITE.message(frames, **body)) if sealed is None else None
        for site in targets:
            if not job.may_address(site):
                self.job_socket.reply(asker, request, {"site": site, "reason": f"site '{site}' is not a site of this job"},
                                rc=Rc.NOT_FOUND)
                continue
            on_fail = (lambda rc, reason, s=site: self.job_socket.reply(asker, request, {"site": s, "reason": reason}, rc=rc))
            on_reply = (lambda m, s=site: self.job_socket.reply(asker, request, {"site": s, **_reason(m)}, m.frames,
                                                          rc=m.rc or Rc.OK))
            send = (lambda s=site, reply=on_reply, fail=on_fail: self._ask_site(
                s, body, sealed, frames, prepared, timeout + SLACK, job.job_id, reply, fail))
            if (job.readopted and site in job.sites and site not in self.registry
                    and self.timers.clock() < self.login_grace_until):
                self._await_login(site, job.job_id, timeout, send, on_fail)
            else:
                send()
        return None

    def _ask_site(self, site: str, body: dict, sealed: dict[str, bytes] | None, frames: list,
                  prepared: tuple[int, list] | None, timeout: float, job_id: str,
                  on_reply: Callable[[Message], None], on_fail: Callable[[str, str], None]) -> None:
        """Send one site a job's aux request; a secure one only if it is sealed for that site (a site
        that is not logged in is left to the gateway, which says so)."""
        if sealed is not None and site not in sealed and site in self.registry:
            on_fail(Rc.UNAUTHORIZED, self._not_sealed_for(site))
            return
        self.gateway.request(site, aux_ops.TO_SITE.message(frames, **_for_site(body, sealed, site)), timeout,
                             on_reply=on_reply, on_fail=on_fail, job_id=job_id, prepared=prepared)

    def _not_sealed_for(self, site: str) -> str:
        """Why a secure request carries no sealed key for a logged-in site."""
        rec = self.registry.get(site)
        if rec is None or PUBLIC_KEY_PROP not in rec.props:
            return f"site '{site}' has no provisioned key: secure aux needs a parent and sites started with --kit"
        return f"the secure request carries no key sealed for site '{site}' (the job did not know its key yet)"

    def _await_login(self, site: str, job_id: str, timeout: float, send: Callable[[], None],
                     on_fail: Callable[[str, str], None]) -> None:
        """Hold a request of a re-adopted job for one of its sites until that site logs in again."""
        def expire() -> None:
            self._drop_awaiting(lambda w: w[1] is timer)
            on_fail(Rc.UNAVAILABLE, f"site '{site}' did not log in again within {timeout:g}s")

        timer = self.timers.call_later(timeout, expire)
        self._awaiting_login.setdefault(site, []).append((send, timer, job_id))

    def _drop_awaiting(self, which: Callable[[tuple], bool]) -> list[tuple]:
        dropped = []
        for site in list(self._awaiting_login):
            keep = []
            for w in self._awaiting_login[site]:
                (dropped if which(w) else keep).append(w)
            if keep:
                self._awaiting_login[site] = keep
            else:
                del self._awaiting_login[site]
        return dropped

    def job_ended(self, job_id: str) -> None:
        """Forget the requests a job left waiting for a site's login."""
        for _, timer, _ in self._drop_awaiting(lambda w: w[2] == job_id):
            timer.cancel()

    def sites_changed(self, base: int, revision: int, changes: list[dict]) -> None:
        """Send the requests held for a site that has logged in again."""
        for change in changes:
            if change["op"] == "add":
                for send, timer, _ in self._awaiting_login.pop(change["client"]["name"], []):
                    timer.cancel()
                    send()

    def check_resources(self, req: Request) -> None:
        job = self.connections.job(req.peer)
        reqs = req.args["resource_reqs"]
        self._check_sites(job, reqs)

        def done(results: Results) -> None:
            self.job_socket.reply(req.peer, req.msg, {"results": {
                s: [ok, d.get("token") if ok else None, d.get("reason")] for s, (ok, d) in results.items()}})

        self.site_apps.check_resources(job.job_id, reqs, done, req.args["timeout"])

    def cancel_resources(self, req: Request) -> dict:
        job = self.connections.job(req.peer)
        tokens = req.args["tokens"]
        self._check_sites(job, tokens)
        self.site_apps.cancel_resources({s: t for s, t in tokens.items() if isinstance(t, str)})
        return {}

    def start_client_job(self, req: Request) -> None:
        job = self.connections.job(req.peer)
        sites = req.args["sites"]
        self._check_sites(job, {s: None for s in sites})
        tokens = {s: t for s, t in (req.args["tokens"] or {}).items() if isinstance(t, str)}

        def done(results: Results) -> None:
            job.sites.update(s for s, (ok, _) in results.items() if ok)
            self.job_socket.reply(req.peer, req.msg, {"results": {s: [ok, d.get("reason")] for s, (ok, d) in results.items()}})

        assert job.job is not None
        self.site_apps.start(job.job, list(dict.fromkeys(sites)), tokens, done, req.args["timeout"],
                             job_key=job.sealing_key)

    @staticmethod
    def _check_sites(job: RunningJob, by_site: dict) -> None:
        for site in by_site:
            if not isinstance(site, str) or not job.may_address(site):
                raise BadRequest(f"site {site!r} is not a site of job {job.job_id}")

    # --- site -> job ------------------------------------------------------------------------------
    def site_aux(self, req: Request) -> None:
        site = self.registry.authenticate(req.args["token"]).name
        job = self.running.get(req.args["job_id"])
        identity = self.connections.identity_of(job.job_id) if job is not None else None
        if job is None or identity is None:
            raise NotFound(f"job '{req.args['job_id'][:64]}' is not running")
        if not job.may_address(site):
            raise Unauthorized(f"site '{site}' is not a site of job {job.job_id}")
        body = {"site": site, "topic": req.args["topic"], "timeout": req.args["timeout"]}
        if req.args["sealed_key"] is not None:
            body["sealed_key"] = req.args["sealed_key"]
        if req.args["fire_and_forget"]:
            body["fire_and_forget"] = True
            self.job_socket.push(identity, aux_ops.TO_JOB.message(req.msg.frames, **body))
            return None
        mid = self.job_socket.push(identity, aux_ops.TO_JOB.message(req.msg.frames, **body))
        if mid is None:
            raise NotFound(f"job {job.job_id}'s process cannot be reached")
        asker, request, job_id = req.peer, Message(req.msg.op, id=req.msg.id), job.job_id
        self.awaited.expect(
            self.job_socket.name, identity, mid, float(req.args["timeout"]) + SLACK,
            on_reply=lambda m: self.site_socket.reply(asker, request, {"job_id": job_id, **_reason(m)}, m.frames,
                                                rc=m.rc or Rc.OK),
            on_fail=lambda rc, reason: self.site_socket.reply(asker, request, {"job_id": job_id, "reason": reason}, rc=rc),
            job_id=job_id)
        return None


def _sealed_keys(args: dict) -> dict[str, bytes] | None:
    """The per-site sealed keys of a secure aux request; None for a plain one."""
    if args["sealed"] is None:
        if args["sender_key"] is not None:
            raise BadRequest("op 'aux': field 'sender_key' belongs to a secure request, which has 'sealed'")
        return None
    if args["sender_key"] is None:
        raise BadRequest("op 'aux': a secure request ('sealed') needs field 'sender_key'")
    return args["sealed"]


def _for_site(body: dict, sealed: dict[str, bytes] | None, site: str) -> dict:
    """The request body for one site: a secure request's carries the payload key sealed for it."""
    if sealed is None or site not in sealed:
        return body
    return {**body, "sealed_key": sealed[site]}


def _reason(reply: Message) -> dict:
    """The reason a peer gave with an error reply, to pass on with it."""
    reason = reply.body.get("reason")
    return {"reason": reason} if isinstance(reason, str) else {}
