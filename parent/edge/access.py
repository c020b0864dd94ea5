"""Who may send on the parent's sockets, beyond what the socket itself checks: the sites
socket's tokens and provisioned names (`SiteAccess`), the remote admin socket's allowlist
(`AdminAllowlist`). The jobs socket's check is `parent.edge.job_connections.JobConnections`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flrunner.errors import Unauthorized
from flrunner.protocol import Request
from parent.sites.registry import SiteRegistry

if TYPE_CHECKING:  # the allowlists are only loaded with a kit
    from flrunner.security.gate import Gate


class SiteAccess:
    """Who may send on the sites socket (`authorize`, given to the socket): a logged-in site's
    token for every op but login; with CURVE (``gate``), a provisioned key that is still on the
    allowlist, acting only as its own name.

    Args:
        registry: the logged-in sites.
        gate: the allowlist of sites (None without CURVE).
    """

    def __init__(self, registry: SiteRegistry, gate: Gate | None = None) -> None:
        self.registry = registry
        self.gate = gate

    @property
    def provisioned(self) -> bool:
        """With CURVE: every request comes from a provisioned key, acting only as its own name."""
        return self.gate is not None

    def authorize(self, req: Request) -> None:
        user_id, op, msg = req.user_id, req.op, req.msg
        # The allowlist is re-read as it changes: a revoked site's open connection cannot log in again.
        if self.gate is not None and (not user_id or not self.gate.allows(user_id)):
            raise Unauthorized("this connection has no provisioned identity (or its access was revoked)")
        if op.needs_auth:
            token = msg.body.get("token")
            rec = self.registry.authenticate(token if isinstance(token, str) else "")
            if self.gate is not None and rec.name != user_id:
                raise Unauthorized(f"this connection is '{user_id}'; it cannot act as site '{rec.name}'")

    def public_key(self, name: str) -> bytes | None:
        """The Z85 public key a provisioned site connects with (None without CURVE): what jobs
        seal secure aux requests for."""
        return self.gate.public_key(name) if self.gate is not None else None


class AdminAllowlist:
    """Authorizes every message on the remote admin socket: its key's admin must still be on the
    allowlist (a revoked admin's open connection is refused at once).

    Args:
        gate: the allowlist of admins.
    """

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def authorize(self, req: Request) -> None:
        user_id = req.user_id
        if not user_id or not self.gate.allows(user_id):
            raise Unauthorized(f"admin '{user_id or '?'}' is not (or no longer) allowed on the remote admin socket")
