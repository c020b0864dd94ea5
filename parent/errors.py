"""Errors of the parent process (the shared ones are in `flrunner.errors`)."""

from __future__ import annotations

from flrunner.errors import FlrunnerError


class WorkspaceBusy(FlrunnerError):
    """Another parent holds the workspace."""

    rc = "CONFLICT"
