"""The flrunner parent process: site registry, job store, scheduler, launchers, supervision."""

from __future__ import annotations

from .config import ParentConfig
from .launcher import JobProcess, Launcher, LaunchSpec, ProcessLauncher
from .server import Parent, WorkspaceBusy

__all__ = ["Parent", "ParentConfig", "Launcher", "LaunchSpec", "JobProcess", "ProcessLauncher", "WorkspaceBusy"]
