"""The flrunner job process: `ServerEngine`, the link to the parent, the job run loop."""

from __future__ import annotations

from child.engine import ServerEngine

__all__ = ["ServerEngine"]
