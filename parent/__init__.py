"""The flrunner parent process: site registry, job store, scheduler, launchers, supervision."""

from __future__ import annotations

from .config import ParentConfig
from .launcher import JobProcess, Launcher, LaunchSpec, ProcessLauncher
from .errors import WorkspaceBusy
from .server import Parent
from .warm_launcher import WarmLauncher

__all__ = ["JobProcess", "LaunchSpec", "Launcher", "Parent", "ParentConfig", "ProcessLauncher", "WarmLauncher",
           "WorkspaceBusy"]
