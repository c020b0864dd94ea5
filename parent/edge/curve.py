"""What the parent's kit gives its sockets: CURVE on the sites socket (and on the remote admin
socket, and on a tcp jobs socket), and the gates — the allowlist of each role, kept current —
that admit provisioned keys only, each as its participant's name.

`curve_setup` reads the kit once, at start, and returns everything the sockets and services are
then built with; nothing is patched into them afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flrunner.errors import FlrunnerError
from flrunner.security.gate import ADMIN_DOMAIN, JOBS_DOMAIN, SITES_DOMAIN, AnyKey, Gate
from flrunner.security.kit import Role, load_kit
from parent.edge.endpoint import CurveServer

log = logging.getLogger(__name__)


@dataclass
class CurveSetup:
    """The CURVE side of the parent's sockets.

    Attributes:
        sites: the sites socket's CURVE server.
        site_gate: the allowlist of sites.
        remote_admin: the remote admin socket's CURVE server (None without remote admin).
        admin_gate: the allowlist of admins (None without remote admin).
        jobs: a tcp jobs socket's CURVE server (None for the ipc jobs socket).
        gates: ``{ZAP domain: gate}`` for the ZAP handler.
    """

    sites: CurveServer
    site_gate: Gate
    remote_admin: CurveServer | None = None
    admin_gate: Gate | None = None
    jobs: CurveServer | None = None
    gates: dict[str, Gate | AnyKey] = field(default_factory=dict)

    @property
    def server_key(self) -> str | None:
        """The parent's public key (Z85) that job processes connect to a tcp jobs socket with."""
        return self.jobs.public_key.decode() if self.jobs is not None else None


def curve_setup(kit_dir: str, remote_admin: bool, tcp_jobs: bool) -> CurveSetup:
    """CURVE for the sites socket, and for the remote admin socket and a tcp jobs socket when
    there are any, from the parent's kit.

    Raises:
        FlrunnerError: ``kit_dir`` is not a parent's kit.
    """
    kit = load_kit(kit_dir)
    if kit.role is not Role.PARENT:
        raise FlrunnerError(f"{kit_dir} is the kit of {kit.role.value} '{kit.name}', not of a parent")
    site_gate = Gate(kit_dir, Role.SITE)
    gates: dict[str, Gate | AnyKey] = {SITES_DOMAIN: site_gate}
    admin_curve: CurveServer | None = None
    admin_gate: Gate | None = None
    jobs_curve: CurveServer | None = None
    if remote_admin:
        admin_curve = CurveServer(kit.public_key, kit.secret_key, ADMIN_DOMAIN)
        admin_gate = gates[ADMIN_DOMAIN] = Gate(kit_dir, Role.ADMIN)
    if tcp_jobs:
        # Job processes have no provisioned keys: any key completes the handshake (the
        # connection is encrypted and the job process knows it talks to this parent), and the
        # job proves itself with its per-job secret, as over ipc.
        jobs_curve = CurveServer(kit.public_key, kit.secret_key, JOBS_DOMAIN)
        gates[JOBS_DOMAIN] = AnyKey()
    log.info("CURVE on the sites socket%s%s (allowlist of %s)", ", the remote admin socket" if remote_admin else "",
             ", the tcp jobs socket" if tcp_jobs else "", kit_dir)
    return CurveSetup(CurveServer(kit.public_key, kit.secret_key, SITES_DOMAIN), site_gate, admin_curve, admin_gate,
                      jobs_curve, gates)
