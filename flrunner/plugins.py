"""What other packages plug into flrunner, found through entry points, so that flrunner never
imports them: ``flrunner`` (the shared core, the CLI, the embedding API) sits below the parent
and the launchers, which depend on it, never the other way round.

Entry-point groups (declared in a distribution's metadata; flrunner's own ``setup.cfg`` declares
the parent's):

- ``flrunner.commands``: ``name = module:register``, where ``register(subparsers)`` adds a
  subcommand to the ``flrunner`` CLI (the parent registers ``flrunner parent``);
- ``flrunner.embedding``: ``parent = module:start``, where ``start(workspace, **options)`` starts
  a parent in this process and returns its `EmbeddedParent` (behind `FLRunner.start`).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol

from flrunner.errors import FlrunnerError

COMMANDS = "flrunner.commands"
EMBEDDING = "flrunner.embedding"


class EmbeddedParent(Protocol):
    """A parent running in this process (on a thread of its own), as the embedding API sees it."""

    #: The admin socket's endpoint.
    admin_endpoint: str
    #: Where sites connect.
    sites_endpoint: str

    def stop(self, reason: str) -> None:
        """Ask it to stop gracefully (running jobs are aborted)."""

    def join(self, timeout: float) -> bool:
        """Wait for it to stop; whether it did within ``timeout`` seconds."""


def group(name: str) -> list[EntryPoint]:
    """The entry points of group ``name`` (Python 3.9's and 3.10+'s APIs)."""
    found: Any = entry_points()
    return list(found.select(group=name) if hasattr(found, "select") else found.get(name, ()))


def load(group_name: str, name: str) -> Any:
    """The object entry point ``name`` of group ``group_name`` points at.

    Raises:
        FlrunnerError: nothing is registered under that name (flrunner is not installed: run
            ``pip install -e .``).
    """
    for ep in group(group_name):
        if ep.name == name:
            return ep.load()
    raise FlrunnerError(f"no '{name}' in entry-point group {group_name}: is flrunner installed (pip install -e .)?")
