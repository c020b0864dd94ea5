"""The jobs socket's operations: what a job process asks of its parent, and what the parent
pushes to it (an abort, the site registry's changes)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os

from flrunner.errors import BadRequest
from flrunner.protocol import Request, job_ops
from flrunner.security.curve import KEY_BYTES
from parent.edge.endpoint import RouterEndpoint
from parent.edge.job_connections import JobConnections
from parent.jobs.lifecycle import JobLifecycle
from parent.sites.registry import SiteRegistry

log = logging.getLogger(__name__)


class JobProcessService:
    """Serves job processes on the jobs socket; every op but hello needs a connection that said
    hello (`JobConnections.authorize`, given to the socket).

    Args:
        endpoint: the jobs socket.
        lifecycle: the job domain.
        registry: the logged-in sites (what a job process syncs).
        connections: which connection is which job process.
    """

    def __init__(self, endpoint: RouterEndpoint, lifecycle: JobLifecycle, registry: SiteRegistry,
                 connections: JobConnections) -> None:
        self.endpoint = endpoint
        self.lifecycle = lifecycle
        self.registry = registry
        self.connections = connections
        endpoint.on(job_ops.HELLO, self.hello)
        endpoint.on(job_ops.SYNC_CLIENTS, self.sync_clients)
        endpoint.on(job_ops.RUN_STATUS, self.run_status)
        endpoint.on(job_ops.HEARTBEAT, self.heartbeat)

    def hello(self, req: Request) -> dict:
        key = req.args["sealing_key"]
        if key is not None and len(key) != KEY_BYTES:
            raise BadRequest(f"op 'hello': field 'sealing_key' must be a {KEY_BYTES}-byte public key, "
                             f"got {len(key)} bytes")
        job = self.lifecycle.launching.authenticate(req.args["job_id"], req.args["secret"], req.args["pid"])
        # Bound before the job hears of its hello: an abort requested meanwhile is pushed to it.
        self.connections.bind(req.peer, job.job_id)
        rec = self.lifecycle.launching.said_hello(job, key)
        return {"status": rec.status.value, "name": rec.name, "meta": rec.meta, "parent_pid": os.getpid()}

    def sync_clients(self, req: Request) -> dict:
        job = self.connections.job(req.peer)
        since = req.args["since"]
        changes = self.registry.changes_since(since) if since is not None else None
        self.connections.synced(job.job_id, self.registry.revision)
        if changes is None:
            clients = [job_view(c, job.job_id) for c in self.registry.clients(with_tokens=True)]
            return {"revision": self.registry.revision, "clients": clients}
        return {"revision": self.registry.revision, "base": since, "changes": job_changes(changes, job.job_id)}

    def run_status(self, req: Request) -> dict:
        job = self.connections.job(req.peer)
        rec = self.lifecycle.reports.report(job, req.args["status"], req.args["progress"], req.args["error"])
        return {"status": rec.status.value, "durable": True}

    def heartbeat(self, req: Request) -> dict:
        self.connections.job(req.peer)
        return {}

    def ask_to_abort(self, job_id: str, reason: str) -> bool:
        """Push an abort to the job's process; False if it has not said hello (no connection)."""
        identity = self.connections.identity_of(job_id)
        if identity is None:
            return False
        self.endpoint.push(identity, job_ops.ABORT.message(reason=reason))
        return True

    def sites_changed(self, base: int, revision: int, changes: list[dict]) -> None:
        """Push the registry delta to every job process that has synced."""
        for identity, job_id in self.connections.synced_peers():
            self.endpoint.push(identity, job_ops.CLIENTS_CHANGED.message(
                base=base, revision=revision, changes=job_changes(changes, job_id)))
            self.connections.synced(job_id, revision)


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
