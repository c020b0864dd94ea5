"""The sites socket's operations: login, heartbeat, logout."""

from __future__ import annotations

import logging

from flrunner.client import PUBLIC_KEY_PROP
from flrunner.errors import BadRequest, Conflict, Unauthorized
from flrunner.job import NAME_RE
from flrunner.protocol import Request, site_ops
from parent.edge.access import SiteAccess
from parent.edge.connections import Connection, connection_of, cut
from parent.edge.endpoint import RouterEndpoint, source_fd
from parent.jobs.running import RunningJobs
from parent.sites.registry import SiteRegistry

log = logging.getLogger(__name__)


class SitesService:
    """Serves site agents on the sites socket.

    Args:
        endpoint: the sites socket.
        registry: the logged-in sites.
        access: who may send (given to the socket too).
        heartbeat_interval: how often a site is told to heartbeat.
        running: the running jobs (a site logging in again keeps their site apps, and gets the
            keys of their processes).
        max_sites: the most sites logged in at once.
    """

    def __init__(self, endpoint: RouterEndpoint, registry: SiteRegistry, access: SiteAccess,
                 heartbeat_interval: float, running: RunningJobs, max_sites: int = 100_000) -> None:
        self.registry = registry
        self.access = access
        self.running = running
        self.max_sites = max_sites
        self.heartbeat_interval = heartbeat_interval
        #: The connection each site logged in on (CURVE only), to cut it when the site is revoked.
        self.connections: dict[str, Connection] = {}
        endpoint.on(site_ops.LOGIN, self.login)
        endpoint.on(site_ops.HEARTBEAT, self.heartbeat)
        endpoint.on(site_ops.LOGOUT, self.logout)

    def login(self, req: Request) -> dict:
        name = req.args["name"]
        if self.access.provisioned and name != req.user_id:
            raise Unauthorized(f"this connection's key belongs to '{req.user_id}'; it cannot log in as '{name[:64]}'")
        if not NAME_RE.match(name) or name in ("server", "@ALL"):
            raise BadRequest(f"op 'login': '{name[:64]}' is not a valid site name")
        if name not in self.registry and len(self.registry) >= self.max_sites:
            raise Conflict(f"the registry is full ({self.max_sites} sites); login of '{name}' refused")
        props = {"resources": req.args["resources"] or {}}
        if req.args["pid"] is not None:
            props["pid"] = req.args["pid"]
        key = self.access.public_key(name)
        if key is not None:  # job processes seal secure aux requests for it
            props[PUBLIC_KEY_PROP] = key.decode("ascii")
        held = self.registry.get(name)
        rec = self.registry.login(name, req.peer, props, req.args["instance"])
        conn = connection_of(source_fd(req))
        if conn is not None:
            self.connections[name] = conn
        if rec is held:
            log.info("site %s logged in again from the same agent: its session goes on (registry revision %d)",
                     name, self.registry.revision)
        else:
            log.info("site %s logged in (registry revision %d)", name, self.registry.revision)
        # A site that logs in again (this parent restarted, or forgot it) keeps the site apps of
        # jobs that still run here, and stops the others. It gets the keys of their processes,
        # which may have said hello (re-adopted, or relaunched with a new key) while it was away.
        jobs = [j for j in (req.args["jobs"] or []) if isinstance(j, str)]
        keys = {j: key for j in jobs if (key := self.running.sealing_key(j)) is not None}
        return {"token": rec.token, "heartbeat_interval": self.heartbeat_interval, "revision": self.registry.revision,
                "stop_jobs": [j for j in jobs if j not in self.running], "job_keys": keys}

    def disconnect(self, name: str) -> bool:
        """Close the connection ``name`` logged in on (a revoked site); whether there was one to close.
        Its reconnection then meets the ZAP handler, which refuses a revoked key."""
        conn = self.connections.pop(name, None)
        return conn is not None and cut(conn)

    def heartbeat(self, req: Request) -> dict:
        self.registry.heartbeat(req.args["token"], req.peer)
        return {}

    def logout(self, req: Request) -> dict:
        rec = self.registry.logout(req.args["token"])
        log.info("site %s logged out", rec.name)
        return {}
