"""Identities and start-up kits: provisioning, revocation, and the loaders the runtime uses.

- `provision` / `revoke` write a project's kits (``flrunner provision``, ``flrunner revoke``).
- `load_kit` gives a participant its `Kit` (name, role, CURVE keys, the parent's key, endpoint).
- `load_allowlist` gives the parent ``{public key: (name, role)}`` for its ZAP handler.

The layout and file formats are documented in `flrunner.security.kit`.
"""

from __future__ import annotations

from flrunner.security.errors import (
                     InsecurePermissions,
                     InvalidEndpoint,
                     InvalidName,
                     KitError,
                     ParticipantExists,
                     SecurityError,
                     UnknownParticipant,
)
from flrunner.util.lazy import lazy_attributes

# The kit and provisioning modules (and zmq.auth behind them) load on first use: a job process
# imports `flrunner.security.errors` and `.curve`, and must not pay ~25 ms at start for them.
_LAZY = {**dict.fromkeys(("DEFAULT_ENDPOINT", "PARENT", "Kit", "Participant", "Role", "allowlist_files",
                           "load_allowlist", "load_kit", "validate_name"), "kit"),
         **dict.fromkeys(("Report", "Status", "provision", "revoke"), "provisioning")}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "DEFAULT_ENDPOINT", "PARENT",
    "Kit", "Participant", "Role", "Report", "Status",
    "load_kit", "load_allowlist", "allowlist_files", "validate_name", "provision", "revoke",
    "SecurityError", "KitError", "InsecurePermissions", "InvalidName", "InvalidEndpoint", "ParticipantExists",
    "UnknownParticipant",
]
