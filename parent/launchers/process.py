"""The cold launcher: each job process is a fresh ``sys.executable -m child``, in a new session
(hence its own process group), its bootstrap written to its stdin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from flrunner.errors import LaunchError
from flrunner.linux import exited_unreaped, pidfd_open
from flrunner.transport.wire import pack

from parent.launchers.base import JobProcess, Launcher, LaunchSpec, job_environment


class PopenJobProcess(JobProcess):
    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid
        try:
            self.create_time: float | None = psutil.Process(self.pid).create_time()
        except psutil.Error:
            self.create_time = None
        # A pidfd is readable once the process exits, even before it is reaped.
        self._fd = pidfd_open(self.pid)

    def exit_fd(self) -> int:
        return self._fd

    def exited(self) -> bool:
        if self.popen.returncode is not None:
            return True
        # Without reaping, so the group can still be signalled safely.
        return exited_unreaped(self.pid)

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
        # The process title lives in argv's space (SPT_NOENV), which the informational arguments
        # below make long enough.
        env = job_environment(spec.job_id, spec.env)
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
