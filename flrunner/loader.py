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


#: flrunner's own top-level packages: a job module of one of these names would never be imported
#: (flrunner's is found first), and the job would fail with a puzzling "has no attribute".
OWN_PACKAGES = ("flrunner", "parent", "child")


def name_clash(module_name: str, app_dir: str | None) -> str | None:
    """If the job's ``custom/`` code holds a module named like one of flrunner's own packages and
    ``module_name`` is in it, what to tell the user; else None."""
    top = module_name.split(".", 1)[0]
    if app_dir is None or top not in OWN_PACKAGES:
        return None
    custom = os.path.join(app_dir, "custom")
    for candidate in (os.path.join(custom, top + ".py"), os.path.join(custom, top)):
        if os.path.exists(candidate):
            return (f"the job's module '{os.path.relpath(candidate, app_dir)}' has the name of flrunner's own "
                    f"package '{top}', which is imported instead: rename it (and '{module_name}' in the config)")
    return None


def instantiate(cdef: ComponentDef, app_dir: str | None = None) -> Any:
    """``path(**args)``; raises `AppLoadError` naming the component and what failed.

    ``app_dir`` (the app's folder) lets a module of the job that clashes with one of flrunner's
    own packages be named in the error.
    """
    module_name, _, class_name = cdef.path.rpartition(".")
    clash = name_clash(module_name, app_dir)
    if clash is not None:
        raise AppLoadError(f"component '{cdef.id}': {clash}")
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
