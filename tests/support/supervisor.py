"""``scripts/flrunner-supervisor`` run by a test (the ``sup`` fixture), and what it left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from flrunner.admin.client import AdminClient, find_parent
from flrunner.errors import ParentUnavailable
from flrunner.linux import signal_group

from .paths import ROOT

SCRIPT = ROOT / "scripts" / "flrunner-supervisor"
#: Parent options: a free sites port, short graces so stops are quick.
PARENT_OPTS = ["--", "--sites", "tcp://127.0.0.1:*", "--abort-grace", "1", "--term-grace", "1"]
#: ``start`` options: timeouts that a loaded test machine meets.
START = ["--stop-timeout", "10", "--start-timeout", "20"]


def alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Supervisor:
    """Runs the script in the test's tmp folder; `end_all` ends whatever it left running.

    ``sup("start", "--workspace", sup.ws, ...)`` runs the script with those arguments and returns
    its `subprocess.CompletedProcess`.

    Args:
        tmp: the test's folder (the script's cwd; its workspace is ``tmp/ws``).
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ws = tmp / "ws"
        self.watchdogs: set[int] = set()

    def __call__(self, *args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=self.tmp, text=True,
                                  capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout,
                                  start_new_session=True)
        finally:
            self.watchdog_pid()  # remember any watchdog it started, for teardown

    def watchdog_pid(self) -> int | None:
        """The running watchdog's pid (from ``supervisor.pid``), or None."""
        try:
            pid = int((self.ws / "supervisor.pid").read_text())
        except (OSError, ValueError):
            return None
        if alive(pid):
            self.watchdogs.add(pid)
            return pid
        return None

    def parent(self) -> dict | None:
        """The serving parent's info, or None."""
        try:
            info = find_parent(self.ws)
            with AdminClient(info["admin"], timeout=2) as admin:
                return info if admin.ping()["ready"] else None
        except ParentUnavailable:
            return None

    def log(self) -> str:
        """The watchdog's log."""
        return (self.ws / "supervisor.log").read_text()

    def end_all(self) -> None:
        """SIGTERM every watchdog seen; SIGKILL the process groups of anything left after 15 s."""
        self.watchdog_pid()
        tree: list[psutil.Process] = []
        for pid in self.watchdogs:
            try:
                proc = psutil.Process(pid)
                tree += [proc, *proc.children(recursive=True)]
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        deadline = time.monotonic() + 15
        while any(alive(p.pid) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in tree:
            if alive(proc.pid):
                try:
                    signal_group(os.getpgid(proc.pid), signal.SIGKILL)
                except ProcessLookupError:  # gone since
                    pass
