"""The flrunner parent process: site registry, job store, scheduler, launchers, supervision."""

from __future__ import annotations

from parent.config import ParentConfig
from parent.launchers.base import JobProcess, Launcher, LaunchSpec
from parent.launchers.process import ProcessLauncher
from parent.errors import WorkspaceBusy
from parent.assembly import Parent
from parent.launchers.warm import WarmLauncher

__all__ = ["JobProcess", "LaunchSpec", "Launcher", "Parent", "ParentConfig", "ProcessLauncher", "WarmLauncher",
           "WorkspaceBusy"]
