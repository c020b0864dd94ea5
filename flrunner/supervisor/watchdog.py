"""The watchdog: one process that runs a parent, restarts it when it crashes, and stops it on request.

Also the files it keeps in the workspace (`Files`), how another process finds a live watchdog
(`live_watchdog`), and how a parent that overstays a stop is killed with its jobs (`kill_tree`).
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import psutil

from flrunner.linux import decode_exit, parent_death_signal_preexec, pidfd_open, signal_group
from flrunner.supervisor.errors import EXIT_FAILED, EXIT_OK, SupervisorError

PROG = "flrunner-supervisor"
WORKSPACE_ENV = "FLRUNNER_WORKSPACE"
#: What a watchdog's command line contains before it sets its title: the script's path, or the
#: module a daemonized watchdog is started with (``python -m flrunner.supervisor``).
_COMMAND_LINE_MARKS = (PROG, "flrunner.supervisor")

log = logging.getLogger(__name__)


# --- workspace files ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Files:
    """The supervisor's files inside a workspace.

    ::

        supervisor.pid    the watchdog's pid, while it runs
        supervisor.lock   locked (flock) by the running watchdog: one watchdog per workspace
        supervisor.json   the watchdog's state for ``status``: parent pid, restarts, start times
        supervisor.log    the watchdog's log, with timestamps
        parent.out        the parent's stdout and stderr
    """

    workspace: Path

    @classmethod
    def of(cls, workspace: str | None) -> Files:
        """The files of ``workspace``, else of ``$FLRUNNER_WORKSPACE``, else of ``./workspace``."""
        root = workspace or os.environ.get(WORKSPACE_ENV) or "workspace"
        return cls(Path(os.path.abspath(root)))

    @property
    def pid(self) -> Path:
        return self.workspace / "supervisor.pid"

    @property
    def lock(self) -> Path:
        return self.workspace / "supervisor.lock"

    @property
    def state(self) -> Path:
        return self.workspace / "supervisor.json"

    @property
    def log(self) -> Path:
        return self.workspace / "supervisor.log"

    @property
    def parent_out(self) -> Path:
        return self.workspace / "parent.out"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``; a reader sees the old content or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_state(files: Files) -> dict:
    """The watchdog's state file as a dict (empty if missing or unreadable)."""
    try:
        state = json.loads(files.state.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def live_watchdog(files: Files) -> int | None:
    """The pid of the watchdog running for the workspace, or None (a stale pid file is ignored)."""
    try:
        pid = int(files.pid.read_text().strip())
        proc = psutil.Process(pid)
        # The title is set by setproctitle; before that the script's path or the module name is on
        # the command line.
        cmdline = " ".join(proc.cmdline())
        alive = proc.status() != psutil.STATUS_ZOMBIE and any(mark in cmdline for mark in _COMMAND_LINE_MARKS)
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if alive else None


def last_line(path: Path, limit: int = 4096) -> str:
    """The last non-empty line of a file (read from its last ``limit`` bytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    return next((ln for ln in reversed(lines) if ln), "")


# --- the restart policy ---------------------------------------------------------------------------
@dataclass
class RestartPolicy:
    """When to restart a crashed parent: exponential back-off, and a crash limit within a window.

    Args:
        initial_delay: the delay before the first restart; it doubles with each crash in the window.
        max_delay: the longest delay.
        max_crashes: give up at this many crashes within ``window`` seconds.
        window: seconds over which crashes are counted (older ones are forgotten, so a parent
            that ran well for a while starts again from ``initial_delay``).
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_crashes: int = 5
    window: float = 60.0
    crashes: collections.deque[float] = field(default_factory=collections.deque)

    def on_crash(self, now: float) -> float | None:
        """Record a crash at ``now`` (monotonic seconds); the delay before restarting, or None to give up."""
        self.crashes.append(now)
        while now - self.crashes[0] > self.window:
            self.crashes.popleft()
        if len(self.crashes) >= self.max_crashes:
            return None
        return min(self.max_delay, self.initial_delay * 2 ** (len(self.crashes) - 1))


def ended(returncode: int) -> str:
    """A parent's return code in words: ``exited with code N`` or ``was killed by SIGNAME``."""
    end = decode_exit(returncode)
    return f"was {end.text}" if end.signal is not None else end.text


# --- the watchdog ---------------------------------------------------------------------------------------
class Watchdog:
    """Runs one parent, restarts it when it crashes, stops it on SIGTERM/SIGINT.

    A parent that exits with code 0 (an admin ``shutdown``, or a SIGTERM from someone else) is not
    restarted; one that dies abnormally is, after the policy's back-off, until the policy gives up.

    Args:
        files: the workspace's supervisor files.
        parent_args: extra ``flrunner parent`` options.
        policy: when to restart, and when to give up.
        stop_timeout: seconds the parent gets to stop after SIGTERM before it and its job
            processes are SIGKILLed.
    """

    def __init__(self, files: Files, parent_args: Sequence[str], policy: RestartPolicy, stop_timeout: float) -> None:
        self.files = files
        self.parent_args = list(parent_args)
        self.policy = policy
        self.stop_timeout = stop_timeout
        self.parent: subprocess.Popen | None = None
        self.parent_started = 0.0  # time.time(), for status
        self.parent_started_monotonic = 0.0  # for uptimes in the log
        self.restarts = 0
        self.started = time.time()
        self.stop_signals = 0
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock_fd: int | None = None

    def run(self) -> int:
        """Supervise until stopped or given up; the exit status (0 stopped, 1 gave up or failed).

        Raises:
            SupervisorError: another watchdog holds the workspace's lock.
        """
        self._take_lock()
        self._install_signals()
        import setproctitle

        setproctitle.setproctitle(f"{PROG}: {self.files.workspace}")
        write_atomically(self.files.pid, f"{os.getpid()}\n")
        self._write_state()
        log.info("supervisor %d started for workspace %s", os.getpid(), self.files.workspace)
        try:
            return self._supervise()
        finally:
            self._stop_parent()
            for path in (self.files.pid, self.files.state):
                path.unlink(missing_ok=True)
            log.info("supervisor %d stopped", os.getpid())

    @property
    def stop_requested(self) -> bool:
        return self.stop_signals > 0

    def _take_lock(self) -> None:
        fd = os.open(self.files.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SupervisorError(f"another supervisor holds {self.files.lock}") from None
        self._lock_fd = fd

    def _install_signals(self) -> None:
        def on_signal(signum: int, frame: object) -> None:
            self.stop_signals += 1

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        # The handler only counts; the wake-up byte interrupts whatever select() is waiting.
        signal.set_wakeup_fd(self._wake_w)

    def _wait(self, fds: list[int], timeout: float | None) -> list[int]:
        """Wait until one of ``fds`` is readable, a signal arrives, or ``timeout``; the readable fds."""
        ready, _, _ = select.select([*fds, self._wake_r], [], [], timeout)
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        return [fd for fd in ready if fd != self._wake_r]

    def _write_state(self) -> None:
        parent = self.parent if self.parent is not None and self.parent.returncode is None else None
        write_atomically(self.files.state, json.dumps({
            "pid": os.getpid(), "workspace": str(self.files.workspace), "started": self.started,
            "restarts": self.restarts, "parent_pid": parent.pid if parent else None,
            "parent_started": self.parent_started if parent else None, "parent_args": self.parent_args}))

    # --- the loop ------------------------------------------------------------------------------------
    def _supervise(self) -> int:
        while not self.stop_requested:
            parent = self._spawn_parent()
            code = self._wait_parent(parent)
            self._write_state()
            if code is None or self.stop_requested:
                return EXIT_OK
            uptime = time.monotonic() - self.parent_started_monotonic
            if code == 0:
                log.info("the parent %d exited with code 0 after %.1fs without a stop request from this "
                         "supervisor (e.g. an admin shutdown): not restarting it", parent.pid, uptime)
                return EXIT_OK
            output = f"; its last output: {last_line(self.files.parent_out)!r}" if code > 0 else ""
            log.warning("the parent %d %s after %.1fs%s", parent.pid, ended(code), uptime, output)
            delay = self.policy.on_crash(time.monotonic())
            if delay is None:
                log.error("giving up: the parent crashed %d times within %gs (last: it %s); see %s",
                          len(self.policy.crashes), self.policy.window, ended(code), self.files.parent_out)
                return EXIT_FAILED
            self.restarts += 1
            log.info("restarting the parent in %.1fs (restart %d)", delay, self.restarts)
            self._pause(delay)
        return EXIT_OK

    def _pause(self, seconds: float) -> None:
        """Sleep for ``seconds``, unless a stop signal comes first."""
        deadline = time.monotonic() + seconds
        while not self.stop_requested and (left := deadline - time.monotonic()) > 0:
            self._wait([], left)

    def _spawn_parent(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "flrunner", "parent", "--workspace", str(self.files.workspace), *self.parent_args]
        with open(self.files.parent_out, "ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"--- {stamp} {PROG} {os.getpid()}: starting {' '.join(cmd)}\n".encode())
            out.flush()
            # A session of its own: a terminal's Ctrl-C reaches the watchdog only, which then asks
            # the parent once (a second signal would make the parent skip its graces).
            parent = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                      preexec_fn=parent_death_signal_preexec(signal.SIGTERM, os.getpid()))
        self.parent = parent
        self.parent_started = time.time()
        self.parent_started_monotonic = time.monotonic()
        self._write_state()
        log.info("started the parent %d: %s", parent.pid, " ".join(cmd))
        return parent

    def _wait_parent(self, parent: subprocess.Popen) -> int | None:
        """Wait until the parent exits (its return code) or a stop is requested (None)."""
        pidfd = pidfd_open(parent.pid)
        try:
            while not self.stop_requested:
                if self._wait([pidfd], None):
                    return parent.wait()
            return None
        finally:
            os.close(pidfd)

    def _stop_parent(self) -> None:
        """SIGTERM the parent; SIGKILL it and its job processes if it is not gone in ``stop_timeout``."""
        parent = self.parent
        if parent is None or parent.poll() is not None:
            return
        log.info("stopping the parent %d (SIGTERM; SIGKILL after %gs)", parent.pid, self.stop_timeout)
        pidfd = pidfd_open(parent.pid)
        try:
            forwarded = self.stop_signals
            parent.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while (left := deadline - time.monotonic()) > 0:
                if self._wait([pidfd], left):
                    log.info("the parent %d stopped: it %s", parent.pid, ended(parent.wait()))
                    return
                if self.stop_signals > forwarded:
                    log.info("another stop signal: telling the parent to kill its jobs without grace")
                    forwarded = self.stop_signals
                    parent.send_signal(signal.SIGTERM)
            log.warning("the parent %d did not stop within %gs: SIGKILL to it and its job processes",
                        parent.pid, self.stop_timeout)
            kill_tree(parent.pid)
            parent.wait()
        finally:
            os.close(pidfd)
            self._write_state()


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its process group, and the process groups of all its descendants."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    groups = {pid}
    for proc in descendants:
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())
    for group in groups:
        signal_group(group, signal.SIGKILL)
    for proc in descendants:
        try:
            proc.kill()
        except psutil.Error:
            pass
