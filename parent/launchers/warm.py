"""The warm launcher: job processes forked from a template that has the runtime imported.

A cold start pays for a fresh interpreter and its imports (tens of ms); a fork of the warm
template (`child.template`) costs a few ms and shares the template's memory pages. The template
is a small process of its own — fork time grows with the forking process's memory, so the
parent itself is never forked.

When to use which: the warm launcher is the default of ``flrunner parent`` (``--launcher warm``);
use ``--launcher cold`` when jobs must start from a fresh interpreter — e.g. after upgrading the
installed flrunner or its dependencies without restarting the parent (the template keeps the code
it imported at start), or when a job needs an interpreter state the template cannot give it.
Embedded parents (`FLRunner.start`) default to the cold launcher.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import time
from typing import Callable

import msgpack
import psutil

from flrunner.errors import LaunchError

from flrunner.linux import pidfd_open
from parent.launchers.base import JOB_ID_PLACEHOLDER, JobProcess, Launcher, LaunchSpec, job_environment

log = logging.getLogger(__name__)

#: How long a launch waits for the template to fork.
LAUNCH_TIMEOUT = 5.0
#: argv padding of the template: a forked job process's title is written over the template's
#: argv, so this is the room it has (``flrunner-job: <id> <name>``).
TITLE_ROOM = 256


class WarmJobProcess(JobProcess):
    """A job process forked by the template. The template reaps it and reports its exit status."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.create_time: float | None = psutil.Process(pid).create_time()
        except psutil.Error:
            self.create_time = None
        self.returncode: int | None = None
        self._done = False
        try:
            self._pidfd = pidfd_open(pid)
        except ProcessLookupError:  # already exited and reaped by the template; its exit report follows
            self._pidfd = -1
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def exit_fd(self) -> int:
        return self._r

    def exited(self) -> bool:
        return self._done

    def poll(self) -> int | None:
        return self.returncode

    def _notify(self, returncode: int | None) -> None:
        self.returncode = returncode
        self._done = True
        try:
            os.write(self._w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        for fd in (self._r, self._w, self._pidfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._r = self._w = self._pidfd = -1


class WarmLauncher(Launcher):
    """Forks job processes from a warm template process, started on first use.

    Args:
        python: the interpreter of the template; ``sys.executable`` by default.
        log_path: where the template's own output goes.
    """

    name = "warm"

    def __init__(self, python: str | None = None, log_path: str | None = None) -> None:
        self.python = python or sys.executable
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._watch: Callable[[int, Callable[[], None]], None] | None = None
        self._unwatch: Callable[[int], None] | None = None
        self._next_id = 0
        self._jobs: dict[int, WarmJobProcess] = {}
        self._replies: dict[int, dict] = {}
        self._early_exits: dict[int, int | None] = {}

    def bind_loop(self, watch_fd: Callable[[int, Callable[[], None]], None], unwatch_fd: Callable[[int], None]) -> None:
        self._watch = watch_fd
        self._unwatch = unwatch_fd

    # --- the template ---------------------------------------------------------------------------
    def _ensure_template(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self._template_gone()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = job_environment(JOB_ID_PLACEHOLDER, {"FLRUNNER_TEMPLATE_FD": str(theirs.fileno())})
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                [self.python, "-m", "child.template", "--title-room", "." * TITLE_ROOM], env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, pass_fds=(theirs.fileno(),),
                start_new_session=True)
        except OSError as exc:
            ours.close()
            raise LaunchError(f"cannot start the warm template: {exc}") from None
        finally:
            theirs.close()
            if self.log_path:
                out.close()  # type: ignore[union-attr]
        ours.setblocking(False)
        self._sock = ours
        if self._watch is not None:
            self._watch(ours.fileno(), self._on_readable)
        log.info("warm template started (pid %d)", self._proc.pid)
        return ours

    def _template_gone(self) -> None:
        """Forget a dead template; the job processes it forked are watched through their pidfds."""
        if self._sock is not None:
            if self._unwatch is not None:
                self._unwatch(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        for proc in list(self._jobs.values()):
            # Nobody will report these exits now: learn them from the pidfd (status unknown).
            if self._watch is not None and proc._pidfd >= 0:
                self._watch(proc._pidfd, lambda p=proc: self._orphan_exited(p))
        self._jobs.clear()

    def _orphan_exited(self, proc: WarmJobProcess) -> None:
        if self._unwatch is not None:
            self._unwatch(proc._pidfd)
        proc._notify(None)

    def _on_readable(self) -> None:
        """Messages from the template (in the parent's loop): exit reports and launch replies."""
        assert self._sock is not None
        while True:
            try:
                packet = self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                packet = b""
            if not packet:
                log.error("the warm template exited; it is restarted at the next launch")
                self._template_gone()
                return
            msg = msgpack.unpackb(packet, raw=False)
            if msg.get("op") == "exit":
                proc = self._jobs.pop(msg.get("pid"), None)
                if proc is not None:
                    proc._notify(msg.get("returncode"))
                else:  # a job that died before its launch finished registering it
                    self._early_exits[msg.get("pid")] = msg.get("returncode")
            else:
                self._replies[msg.get("id")] = msg

    # --- launching ----------------------------------------------------------------------------------
    def launch(self, spec: LaunchSpec) -> JobProcess:
        sock = self._ensure_template()
        self._next_id += 1
        rid = self._next_id
        env = {"PYTHONUNBUFFERED": "1", **spec.env}
        try:
            sock.send(msgpack.packb({"op": "launch", "id": rid, "bootstrap": spec.bootstrap, "log_path": spec.log_path,
                                     "run_dir": spec.run_dir, "env": env}, use_bin_type=True))
        except OSError as exc:
            self._template_gone()
            raise LaunchError(f"the warm template is gone: {exc}") from None
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        # Forking takes a few ms; wait for the answer here (exit reports that arrive meanwhile
        # are handled as usual).
        while rid not in self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                self._template_gone()
                raise LaunchError(f"the warm template did not fork within {LAUNCH_TIMEOUT:g}s")
            select.select([sock], [], [], left)
            self._on_readable()
            if self._sock is None:
                raise LaunchError("the warm template exited while forking")
        reply = self._replies.pop(rid)
        if reply.get("op") != "launched":
            raise LaunchError(f"the warm template could not start the job: {reply.get('reason')}")
        proc = WarmJobProcess(int(reply["pid"]))
        if proc.pid in self._early_exits:
            proc._notify(self._early_exits.pop(proc.pid))
        else:
            self._jobs[proc.pid] = proc
        return proc

    def close(self) -> None:
        """Stop the template (job processes it forked keep running until they end)."""
        if self._sock is not None and self._unwatch is not None:
            self._unwatch(self._sock.fileno())
        if self._sock is not None:
            self._sock.close()  # the template sees EOF and exits
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
