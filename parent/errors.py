"""Errors of the parent process (the shared ones are in `flrunner.errors`)."""

from __future__ import annotations

from flrunner.errors import Rc, WorkspaceError


class WorkspaceBusy(WorkspaceError):
    """Another parent holds the workspace."""

    rc = Rc.CONFLICT
