"""Identities and start-up kits: provisioning, revocation, and the loaders the runtime uses.

- `provision` / `revoke` write a project's kits (``flrunner provision``, ``flrunner revoke``).
- `load_kit` gives a participant its `Kit` (name, role, CURVE keys, the parent's key, endpoint).
- `load_allowlist` gives the parent ``{public key: (name, role)}`` for its ZAP handler.

The layout and file formats are documented in `flrunner.security.kit`.
"""

from __future__ import annotations

from .errors import (InsecurePermissions, InvalidEndpoint, InvalidName, KitError, ParticipantExists, SecurityError,
                     UnknownParticipant)
from .kit import DEFAULT_ENDPOINT, PARENT, Kit, Participant, Role, allowlist_files, load_allowlist, load_kit, \
    validate_name
from .provision import Report, Status, provision, revoke

__all__ = [
    "DEFAULT_ENDPOINT", "PARENT",
    "Kit", "Participant", "Role", "Report", "Status",
    "load_kit", "load_allowlist", "allowlist_files", "validate_name", "provision", "revoke",
    "SecurityError", "KitError", "InsecurePermissions", "InvalidName", "InvalidEndpoint", "ParticipantExists",
    "UnknownParticipant",
]
