"""Instantiating a job's components from their ``{"id", "path", "args"}`` entries."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from flrunner.job import ComponentDef


class AppLoadError(Exception):
    """An app could not be loaded; the message names the component."""


def add_custom_dir(app_dir: str) -> None:
    """Put the app's ``custom/`` folder first on ``sys.path`` (as NVFlare does)."""
    custom = os.path.join(app_dir, "custom")
    if os.path.isdir(custom) and custom not in sys.path:
        sys.path.insert(0, custom)


def instantiate(cdef: ComponentDef) -> Any:
    """``path(**args)``; raises `AppLoadError` naming the component and what failed."""
    module_name, _, class_name = cdef.path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(f"component '{cdef.id}': cannot import module '{module_name}': "
                           f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise AppLoadError(f"component '{cdef.id}': module '{module_name}' has no '{class_name}'")
    try:
        return cls(**cdef.args)
    except Exception as exc:
        raise AppLoadError(f"component '{cdef.id}': {cdef.path}(**args) failed: {type(exc).__name__}: {exc}") from exc
