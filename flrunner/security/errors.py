"""Named errors of provisioning and of loading start-up kits.

`KitError` and its subclasses always name the file that is wrong, so an operator can fix a
deployment from the message alone. The provisioning errors also derive from the runtime's
`BadRequest` / `Conflict` / `NotFound`, so a dispatcher maps them to the usual reply codes.
"""

from __future__ import annotations

import os

from flrunner.errors import BadRequest, Conflict, FlrunnerError, NotFound


class SecurityError(FlrunnerError):
    """Base class of the errors raised by `flrunner.security`."""


class KitError(SecurityError):
    """A kit or allowlist file is missing or malformed; the message names the file.

    Attributes:
        path: the offending file or directory.
        problem: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InsecurePermissions(KitError):
    """A secret key readable by others, or a kit file writable by others: refused, not repaired."""

    def __init__(self, path: str | os.PathLike, mode: int, problem: str) -> None:
        self.mode = mode
        super().__init__(path, f"{problem} (mode {mode & 0o7777:04o})")


class InvalidName(SecurityError, BadRequest):
    """A participant name that the runtime cannot use (format, reserved word)."""


class ParticipantExists(SecurityError, Conflict):
    """A provisioning request contradicts an existing participant (other role, other endpoint,
    revoked), or would overwrite a file that is not ours."""


class UnknownParticipant(SecurityError, NotFound):
    """The named participant was never provisioned in this project."""


class InvalidEndpoint(SecurityError, BadRequest):
    """An endpoint participants cannot connect to (not ``tcp://HOST:PORT`` or ``ipc://PATH``)."""


class SealedError(SecurityError, BadRequest):
    """A sealed aux payload cannot be made or opened: no key, a malformed key, or a ciphertext that
    does not open with the keys at hand (tampered, or sealed for someone else)."""
