"""The launcher interface: what starts job processes, and what a started one offers.

The interface is small so launchers can plug in (`parent.launchers.process` runs
``sys.executable -m child``, `parent.launchers.warm` forks from a template, a cluster launcher
places the process elsewhere): `Launcher.launch` returns a `JobProcess` that can be polled,
signalled, and watched through a file descriptor that becomes readable when the process exits.

The job's bootstrap (job id, endpoint, per-job secret) goes through a pipe or socket, never argv
(``ps`` shows argv to every user) and never the environment (readable in ``/proc/<pid>/environ``);
`job_environment` is the environment every job process gets.
"""

from __future__ import annotations

import os
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from flrunner.linux import signal_group

#: The folder holding the ``child`` package, so a child finds it even from an uninstalled checkout.
CODE_ROOT = str(Path(__file__).resolve().parents[2])
#: Placeholder value of FLRUNNER_JOB_ID in a warm template's environment, as long as any job id: a
#: forked job process writes its id over it (`flrunner.linux.stamp_environ`).
JOB_ID_PLACEHOLDER = "_" * 64


def job_environment(job_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a job process (or of a warm template, with `JOB_ID_PLACEHOLDER`).

    ``FLRUNNER_JOB_ID`` marks the job's processes, also those that leave its process group, so
    nothing it started outlives it. ``SPT_NOENV`` keeps setproctitle from overwriting the
    environment block (``/proc/<pid>/environ``, where that mark is read). The code root is put on
    ``PYTHONPATH`` so the job process finds the ``child`` package from an uninstalled checkout.
    """
    env = dict(os.environ)
    env.update(extra or {})
    env.update({"FLRUNNER_JOB_ID": job_id, "PYTHONUNBUFFERED": "1", "SPT_NOENV": "1",
                "PYTHONPATH": os.pathsep.join(p for p in (CODE_ROOT, env.get("PYTHONPATH")) if p)})
    env.pop("FLRUNNER_SECRET", None)
    return env


@dataclass
class LaunchSpec:
    """What a launcher needs to start one job process."""

    job_id: str
    job_name: str
    bootstrap: dict
    log_path: str
    run_dir: str
    env: dict = field(default_factory=dict)


class JobProcess(ABC):
    """A started job process."""

    pid: int
    create_time: float | None

    @abstractmethod
    def exit_fd(self) -> int:
        """A file descriptor that becomes readable when the process has exited."""

    @abstractmethod
    def exited(self) -> bool:
        """Whether the process has exited, without reaping it (its pid stays reserved)."""

    @abstractmethod
    def poll(self) -> int | None:
        """Reap if exited: the return code (negative for a signal), or None while it runs."""

    def terminate(self, sig: int = signal.SIGTERM) -> bool:
        """Send ``sig`` to the job's whole process group; False if the group is gone.

        Must be called before the leader is reaped: while the leader is a zombie its pid (the
        group id) cannot be reused, so the signal cannot hit an unrelated group.
        """
        return signal_group(self.pid, sig)

    @abstractmethod
    def close(self) -> None:
        """Release the exit fd and other resources."""


class Launcher(ABC):
    """Starts job processes."""

    name: str = "abstract"

    @abstractmethod
    def launch(self, spec: LaunchSpec) -> JobProcess:
        """Start the job process. Raises `LaunchError` with a readable reason on failure."""

    def bind_loop(self, watch_fd: Callable[[int, Callable[[], None]], None], unwatch_fd: Callable[[int], None]) -> None:
        """Called once by the parent: a launcher that needs to watch fds in the parent's loop keeps these."""

    def close(self) -> None:
        """Release launcher resources (a warm template, …)."""
