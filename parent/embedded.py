"""A parent run by the embedding API (`flrunner.FLRunner.start`) on a thread of the embedding
process: no signal handlers, no process title. Plugged in through the ``flrunner.embedding``
entry point (`flrunner.plugins`)."""

from __future__ import annotations

import os
import threading
from typing import Any

from parent.assembly import Parent
from parent.config import ParentConfig


class EmbeddedParent:
    """A started `Parent` and the thread running its loop (a `flrunner.plugins.EmbeddedParent`)."""

    def __init__(self, parent: Parent) -> None:
        self._parent = parent
        self.admin_endpoint = parent.admin_endpoint
        self.sites_endpoint = parent.sites_endpoint
        self._thread = threading.Thread(target=parent.run, name="flrunner-parent", daemon=True)
        self._thread.start()

    def stop(self, reason: str) -> None:
        self._parent.stop(reason)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def start(workspace: str | os.PathLike, **options: Any) -> EmbeddedParent:
    """Start a parent on ``workspace`` with ``options`` (`ParentConfig` fields; the sites endpoint
    defaults to a free loopback port) and run it on a thread of its own.

    Raises:
        WorkspaceBusy, WorkspaceError, JobStoreError, EndpointError: see `Parent.start`.
    """
    options.setdefault("sites_endpoint", "tcp://127.0.0.1:*")
    parent = Parent(ParentConfig(workspace=str(workspace), **options))
    parent.start()
    return EmbeddedParent(parent)
