"""The sites socket's operations: login, heartbeat, logout."""

from __future__ import annotations

import logging
from typing import Callable

from flrunner.protocol import Request, site_ops
from flrunner.client import PUBLIC_KEY_PROP
from flrunner.errors import BadRequest, Conflict, Unauthorized
from flrunner.job import NAME_RE

from parent.edge.connections import Connection, connection_of, cut
from parent.sites.registry import SiteRegistry
from parent.edge.endpoint import RouterEndpoint, source_fd

log = logging.getLogger(__name__)


class SitesService:
    """Serves site agents on the sites socket."""

    def __init__(self, endpoint: RouterEndpoint, registry: SiteRegistry, heartbeat_interval: float,
                 runs_job: Callable[[str], bool] = lambda job_id: False, max_sites: int = 100_000,
                 job_key: Callable[[str], bytes | None] = lambda job_id: None) -> None:
        self.registry = registry
        self.runs_job = runs_job
        #: The public key of a running job's process (`JobManager.sealing_key`).
        self.job_key = job_key
        #: With CURVE, every request must come from a provisioned key, acting only as its own name.
        self.require_user_id = False
        #: Whether a provisioned name may still connect (the allowlist, re-read as it changes).
        self.allowed: Callable[[str], bool] = lambda name: True
        #: The Z85 public key a provisioned name connects with (None without CURVE).
        self.public_key: Callable[[str], bytes | None] = lambda name: None
        self.max_sites = max_sites
        self.heartbeat_interval = heartbeat_interval
        #: The connection each site logged in on (CURVE only), to cut it when the site is revoked.
        self.connections: dict[str, Connection] = {}
        endpoint.on(site_ops.LOGIN, self.login)
        endpoint.on(site_ops.HEARTBEAT, self.heartbeat)
        endpoint.on(site_ops.LOGOUT, self.logout)
        endpoint.authorize = self._authorize

    def _authorize(self, req: Request) -> None:
        user_id, op, msg = req.user_id, req.op, req.msg
        if self.require_user_id and (not user_id or not self.allowed(user_id)):
            raise Unauthorized("this connection has no provisioned identity (or its access was revoked)")
        if op.needs_auth:
            token = msg.body.get("token")
            rec = self.registry.authenticate(token if isinstance(token, str) else "")
            if self.require_user_id and rec.name != user_id:
                raise Unauthorized(f"this connection is '{user_id}'; it cannot act as site '{rec.name}'")

    def login(self, req: Request) -> dict:
        name = req.args["name"]
        if self.require_user_id and name != req.user_id:
            raise Unauthorized(f"this connection's key belongs to '{req.user_id}'; it cannot log in as '{name[:64]}'")
        if not NAME_RE.match(name) or name in ("server", "@ALL"):
            raise BadRequest(f"op 'login': '{name[:64]}' is not a valid site name")
        if name not in self.registry and len(self.registry) >= self.max_sites:
            raise Conflict(f"the registry is full ({self.max_sites} sites); login of '{name}' refused")
        props = {"resources": req.args["resources"] or {}}
        if req.args["pid"] is not None:
            props["pid"] = req.args["pid"]
        key = self.public_key(name) if self.require_user_id else None
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
        keys = {j: key for j in jobs if (key := self.job_key(j)) is not None}
        return {"token": rec.token, "heartbeat_interval": self.heartbeat_interval, "revision": self.registry.revision,
                "stop_jobs": [j for j in jobs if not self.runs_job(j)], "job_keys": keys}

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
