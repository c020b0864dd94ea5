"""The parent's ROUTER sockets, made with everything they need — limits, CURVE, who may send,
where replies go — and bound: the sites socket (tcp), the jobs socket (ipc in the workspace, or
tcp with CURVE for job processes elsewhere), the local admin socket (ipc, in a 0700 folder of
the workspace owner), and the remote admin socket (tcp with CURVE, optional).

With a kit (``ParentConfig.kit``) the sites socket uses CURVE and admits allowlisted site keys
only, the remote admin socket allowlisted admin keys only, and a tcp jobs socket any key (each
job process still proves its per-job secret); a ZAP handler thread checks each handshake.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from flrunner.errors import EndpointError, FlrunnerError
from flrunner.protocol import admin_ops, job_ops, site_ops
from flrunner.workspace import Workspace
from parent.config import ParentConfig
from parent.edge.access import AdminAllowlist, SiteAccess
from parent.edge.awaited import AwaitedReplies
from parent.edge.endpoint import RouterEndpoint
from parent.edge.job_connections import JobConnections
from parent.edge.limits import RateLimiter
from parent.sites.registry import SiteRegistry

if TYPE_CHECKING:  # loaded with a kit only
    from flrunner.security.gate import Gate

log = logging.getLogger("parent")

#: The kernel's queue of site connections not yet accepted.
SITES_BACKLOG = 4096


@dataclass
class Sockets:
    """The parent's sockets, bound.

    Attributes:
        sites: where site agents connect.
        jobs: where job processes connect.
        admin: the local admin socket.
        remote_admin: the remote admin socket (None without ``admin_endpoint``).
        site_access: who may send on the sites socket.
        site_gate: the allowlist of sites (None without a kit).
        admin_gate: the allowlist of admins (None without remote admin).
        server_key: the parent's public key (Z85) job processes connect to a tcp jobs socket with.
    """

    sites: RouterEndpoint
    jobs: RouterEndpoint
    admin: RouterEndpoint
    remote_admin: RouterEndpoint | None
    site_access: SiteAccess
    site_gate: Gate | None = None
    admin_gate: Gate | None = None
    server_key: str | None = None
    #: The ZAP handler (with a kit).
    authenticator: Any = None

    def all(self) -> list[RouterEndpoint]:
        return [s for s in (self.sites, self.jobs, self.admin, self.remote_admin) if s is not None]

    def close(self) -> None:
        """Close the sockets and stop the ZAP handler."""
        for socket in self.all():
            socket.close()
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


def open_sockets(ctx: zmq.Context, config: ParentConfig, workspace: Workspace, registry: SiteRegistry,
                 connections: JobConnections, awaited: AwaitedReplies) -> Sockets:
    """Make and bind the parent's sockets (with CURVE if there is a kit); on failure, nothing is
    left open.

    Raises:
        FlrunnerError: remote admin or a tcp jobs socket without a kit, or a kit not of a parent.
        EndpointError: an endpoint cannot be bound (e.g. the sites port is taken).
    """
    cfg = config
    if cfg.admin_endpoint and not cfg.kit:
        raise FlrunnerError("remote admin (admin_endpoint / --admin) needs the parent's kit (--kit): only "
                            "provisioned admin keys may connect")
    if cfg.jobs_endpoint and not cfg.kit:
        raise FlrunnerError("a tcp jobs endpoint (jobs_endpoint / --jobs) needs the parent's kit (--kit): job "
                            "processes then connect with CURVE")
    curve = None
    if cfg.kit:
        from parent.edge.curve import curve_setup

        curve = curve_setup(cfg.kit, remote_admin=bool(cfg.admin_endpoint), tcp_jobs=bool(cfg.jobs_endpoint))
    made: list[RouterEndpoint] = []
    authenticator = None

    def socket(name: str, *args: Any, **options: Any) -> RouterEndpoint:
        made.append(RouterEndpoint(ctx, name, *args, **options))
        return made[-1]

    try:
        site_access = SiteAccess(registry, curve.site_gate if curve is not None else None)
        # Many sites connecting at once (a restart, a fleet coming up) must not overflow the
        # kernel's accept queue: dropped SYNs are retried only after 1, 3, 7, 15 s.
        sites = socket("sites", site_ops.FROM_SITE, cfg.max_msg_size, backlog=SITES_BACKLOG,
                       authorize=site_access.authorize, curve=curve.sites if curve is not None else None,
                       awaited=awaited, limiter=RateLimiter(cfg.site_rate, 2 * cfg.site_rate,
                                                            byte_rate=cfg.site_byte_rate,
                                                            byte_burst=cfg.site_byte_burst))
        jobs = socket("jobs", job_ops.FROM_JOB, cfg.max_msg_size, authorize=connections.authorize,
                      curve=curve.jobs if curve is not None else None, awaited=awaited,
                      limiter=RateLimiter(None, byte_rate=cfg.job_byte_rate, byte_burst=cfg.job_byte_burst))
        admin = socket("admin", admin_ops.FROM_ADMIN, cfg.max_admin_msg_size,
                       limiter=RateLimiter(cfg.admin_rate, 2 * cfg.admin_rate, byte_rate=cfg.admin_byte_rate,
                                           byte_burst=cfg.admin_byte_burst))
        remote_admin = None
        if curve is not None and curve.remote_admin is not None and curve.admin_gate is not None:
            # The burst must hold an upload of the largest allowed size, or such an upload never passes.
            remote_admin = socket("remote-admin", admin_ops.FROM_ADMIN, cfg.max_upload_size, curve=curve.remote_admin,
                                  authorize=AdminAllowlist(curve.admin_gate).authorize,
                                  limiter=RateLimiter(cfg.admin_rate, 2 * cfg.admin_rate, byte_rate=cfg.admin_byte_rate,
                                                      byte_burst=max(cfg.admin_byte_burst, 2 * cfg.max_upload_size)))
        if curve is not None:  # before the binds: no handshake may happen without the ZAP handler
            from flrunner.security.gate import start_authenticator

            authenticator = start_authenticator(ctx, curve.gates)
        sock_dir = workspace.get_socket_dir()
        _bind(jobs, cfg.jobs_endpoint or f"ipc://{sock_dir}/jobs.sock")
        _bind(admin, f"ipc://{sock_dir}/admin.sock")
        _bind(sites, cfg.sites_endpoint)
        if remote_admin is not None and cfg.admin_endpoint:
            _bind(remote_admin, cfg.admin_endpoint)
    except BaseException:
        for made_socket in made:
            made_socket.close()
        if authenticator is not None:
            authenticator.stop()
        raise
    if not _is_loopback(sites.endpoint) and curve is None:
        log.warning("the sites socket listens on %s, which is not loopback, WITHOUT authentication or "
                    "encryption; anyone who reaches it can log in as a site: provision kits "
                    "(flrunner provision) and start the parent with --kit", sites.endpoint)
    if curve is None:
        return Sockets(sites, jobs, admin, remote_admin, site_access)
    return Sockets(sites, jobs, admin, remote_admin, site_access, curve.site_gate, curve.admin_gate, curve.server_key,
                   authenticator)


def _bind(endpoint: RouterEndpoint, address: str) -> None:
    try:
        endpoint.bind(address)
    except zmq.ZMQError as exc:
        raise EndpointError(f"cannot bind the {endpoint.name} socket to {address}: "
                            f"{zmq.strerror(exc.errno or 0)}") from None


def _is_loopback(endpoint: str) -> bool:
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]", "::1") or host.startswith("127.")
