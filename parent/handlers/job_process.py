"""The jobs socket's operations: what a job process asks of its parent."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os

from flrunner.protocol import Request, job_ops
from flrunner.errors import BadRequest
from flrunner.security.curve import KEY_BYTES

from parent.jobs.manager import JobManager
from parent.sites.registry import SiteRegistry
from parent.edge.endpoint import RouterEndpoint

log = logging.getLogger(__name__)


class JobsService:
    """Serves job processes on the jobs socket; every op but hello needs an authenticated peer."""

    def __init__(self, endpoint: RouterEndpoint, manager: JobManager, registry: SiteRegistry) -> None:
        self.endpoint = endpoint
        self.manager = manager
        self.registry = registry
        endpoint.authorize = self._authorize
        endpoint.on(job_ops.HELLO, self.hello)
        endpoint.on(job_ops.SYNC_CLIENTS, self.sync_clients)
        endpoint.on(job_ops.RUN_STATUS, self.run_status)
        endpoint.on(job_ops.HEARTBEAT, self.heartbeat)
        registry.listeners.append(self._clients_changed)

    def _authorize(self, req: Request) -> None:
        if req.op.needs_auth:
            self.manager.job_for(req.peer)

    def hello(self, req: Request) -> dict:
        key = req.args["sealing_key"]
        if key is not None and len(key) != KEY_BYTES:
            raise BadRequest(f"op 'hello': field 'sealing_key' must be a {KEY_BYTES}-byte public key, "
                             f"got {len(key)} bytes")
        rec = self.manager.hello(req.peer, req.args["job_id"], req.args["secret"], req.args["pid"], key)
        return {"status": rec.status.value, "name": rec.name, "meta": rec.meta, "parent_pid": os.getpid()}

    def sync_clients(self, req: Request) -> dict:
        job = self.manager.job_for(req.peer)
        since = req.args["since"]
        changes = self.registry.changes_since(since) if since is not None else None
        job.synced_revision = self.registry.revision
        if changes is None:
            clients = [job_view(c, job.job_id) for c in self.registry.clients(with_tokens=True)]
            return {"revision": self.registry.revision, "clients": clients}
        return {"revision": self.registry.revision, "base": since, "changes": job_changes(changes, job.job_id)}

    def run_status(self, req: Request) -> dict:
        job = self.manager.job_for(req.peer)
        rec = self.manager.report_status(job, req.args["status"], req.args["progress"], req.args["error"])
        return {"status": rec.status.value, "durable": True}

    def heartbeat(self, req: Request) -> dict:
        self.manager.job_for(req.peer)
        return {}

    def _clients_changed(self, base: int, revision: int, changes: list[dict]) -> None:
        """Push the registry delta to every job process that has synced."""
        for job in self.manager.running.values():
            if job.identity is not None and job.synced_revision is not None:
                self.endpoint.push(job.identity, job_ops.CLIENTS_CHANGED.message(
                    base=base, revision=revision, changes=job_changes(changes, job.job_id)))
                job.synced_revision = revision


def job_token(site_token: str, job_id: str) -> str:
    """The token a job sees for a site: stable for the site's session, useless to log in with.

    A job process never gets a site's real bearer token (with it, a job's code could heartbeat,
    log out or send as that site); `get_client_name_from_token` works the same on this one.
    """
    return hmac.new(site_token.encode(), job_id.encode(), hashlib.sha256).hexdigest()[:32]


def job_view(client: dict, job_id: str) -> dict:
    return {**client, "token": job_token(client.get("token", ""), job_id)}


def job_changes(changes: list[dict], job_id: str) -> list[dict]:
    return [{**c, "client": job_view(c["client"], job_id)} if "client" in c else c for c in changes]
