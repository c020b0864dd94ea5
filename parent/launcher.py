"""Launchers start job processes. The default one runs ``sys.executable -m child``.

The interface is small so other launchers (a warm fork-from-template launcher, a cluster
launcher) can plug in: `Launcher.launch` returns a `JobProcess` that can be polled, signalled,
and watched through a file descriptor that becomes readable when the process exits.

The job's bootstrap (job id, endpoint, per-job secret) goes through the child's stdin pipe,
never argv (``ps`` shows argv to every user) and never the environment (readable in
``/proc/<pid>/environ``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from flrunner.errors import LaunchError
from flrunner.wire import pack

#: The folder holding the ``child`` package, so a child finds it even from an uninstalled checkout.
_CODE_ROOT = str(Path(__file__).resolve().parent.parent)


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
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

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


class PopenJobProcess(JobProcess):
    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid
        try:
            self.create_time: float | None = psutil.Process(self.pid).create_time()
        except psutil.Error:
            self.create_time = None
        # A pidfd is readable once the process exits, even before it is reaped.
        self._fd = os.pidfd_open(self.pid)

    def exit_fd(self) -> int:
        return self._fd

    def exited(self) -> bool:
        if self.popen.returncode is not None:
            return True
        try:
            # WNOWAIT: look without reaping, so the group can still be signalled safely.
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def poll(self) -> int | None:
        return self.popen.poll()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ProcessLauncher(Launcher):
    """Starts ``sys.executable -m child`` in a new session (hence its own process group).

    Args:
        python: the interpreter; ``sys.executable`` by default (never ``python3`` from PATH,
            which may be a slow shim).
    """

    name = "process"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def launch(self, spec: LaunchSpec) -> JobProcess:
        env = dict(os.environ)
        env.update(spec.env)
        env["FLRUNNER_JOB_ID"] = spec.job_id
        env["PYTHONUNBUFFERED"] = "1"
        # setproctitle must not overwrite the environment block, or /proc/<pid>/environ (and so
        # FLRUNNER_JOB_ID) becomes unreadable; the title then lives in argv's space, which the
        # informational arguments below make long enough.
        env["SPT_NOENV"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_CODE_ROOT, env.get("PYTHONPATH")) if p)
        for secret_var in ("FLRUNNER_SECRET",):
            env.pop(secret_var, None)
        try:
            log = open(spec.log_path, "ab")
        except OSError as exc:
            raise LaunchError(f"cannot open the job log {spec.log_path}: {exc}") from None
        try:
            popen = subprocess.Popen(
                [self.python, "-m", "child", "--job-id", spec.job_id, "--name", spec.job_name], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                cwd=spec.run_dir, env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise LaunchError(f"cannot start {self.python} -m child: {exc}") from None
        finally:
            log.close()
        proc = PopenJobProcess(popen)
        try:
            # The bootstrap is far below a pipe's buffer, so this write cannot block the loop.
            popen.stdin.write(pack(spec.bootstrap, "bootstrap"))
            popen.stdin.close()
        except OSError as exc:
            proc.terminate(signal.SIGKILL)
            popen.wait()
            proc.close()
            raise LaunchError(f"job process exited before reading its bootstrap: {exc}") from None
        return proc
