"""Site agents started by tests, beyond the ``start_site`` fixture."""

from __future__ import annotations

import subprocess
from pathlib import Path

from flrunner.util.processes import Processes

from .parent import ParentHandle


def site_names(parent: ParentHandle) -> list[str]:
    """The names of the sites logged in to ``parent``, sorted."""
    return sorted(c["name"] for c in parent.admin.clients())


def start_kit_site(procs: Processes, parent: ParentHandle, project: Path, kit: str,
                   name: str | None = None) -> subprocess.Popen:
    """A site agent with the kit ``project/kit`` (CURVE), logging in to ``parent``; not waited for."""
    args = ["-m", "flrunner", "site", "--kit", str(project / kit), "--server", parent.sites_endpoint]
    if name:
        args += ["--name", name]
    return procs.spawn(args, f"site-{kit}")
