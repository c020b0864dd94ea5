"""A real parent process started by a test, and a provisioned project for secure ones."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import pytest

from flrunner.admin.client import AdminClient, StatusFeed, find_parent
from flrunner.errors import ParentUnavailable
from flrunner.util.processes import Processes

from .processes import wait_for


def provision_project(tmp: Path, sites: Sequence[str] = (), admins: Sequence[str] = ()) -> Path:
    """``flrunner provision`` of ``tmp/project`` with kits for ``sites`` and ``admins``; returns its folder."""
    out = tmp / "project"
    args = [a for name in sites for a in ("--site", name)] + [a for name in admins for a in ("--admin", name)]
    subprocess.run([sys.executable, "-m", "flrunner", "provision", "--out", str(out), *args], check=True,
                   capture_output=True)
    return out


class ParentHandle:
    """A real parent process started by a test (``flrunner parent`` on a free loopback port).

    Returns from its constructor once the parent has published ``parent.json``; `admin` is an
    admin client connected to it.

    Args:
        procs: the test's process tracker, which ends the parent at teardown.
        workspace: the parent's workspace.
        name: its name among the test's processes (its output is ``NAME.out``).
        args: extra ``flrunner parent`` options.
    """

    def __init__(self, procs: Processes, workspace: Path, name: str, args: list[str]) -> None:
        self.procs = procs
        self.workspace = workspace
        self.name = name
        self.proc = procs.spawn(["-m", "flrunner", "parent", "--workspace", str(workspace),
                                 "--sites", "tcp://127.0.0.1:*", *args], name)
        self.info = wait_for(self._info, 20, f"parent {name} to publish parent.json")
        self.admin = AdminClient(self.info["admin"], timeout=10)

    def _info(self) -> dict | None:
        if self.proc.poll() is not None:
            pytest.fail(f"parent exited with {self.proc.returncode}:\n{self.procs.output(self.name)}")
        try:
            info = find_parent(self.workspace)
        except ParentUnavailable:
            return None
        return info if info.get("pid") == self.proc.pid else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def sites_endpoint(self) -> str:
        return self.info["sites"]

    def feed(self) -> StatusFeed:
        """A subscription to the parent's pushed status changes."""
        return StatusFeed(self.info["admin"])

    def wait_status(self, job_id: str, predicate: Callable[[dict], bool], timeout: float = 20.0) -> dict:
        """Wait, on pushed status changes, until ``predicate(job)`` holds; return the job with history."""
        with self.feed() as feed:
            deadline = time.monotonic() + timeout
            job = self.admin.status(job_id)
            while not predicate(job):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"job {job_id} never matched; last: {json.dumps(self.admin.status(job_id), indent=1)}")
                event = feed.next(min(left, 0.5))
                job = self.admin.status(job_id) if event is None or event["job_id"] == job_id else job
            return self.admin.status(job_id)

    def wait_final(self, job_id: str, timeout: float = 20.0) -> dict:
        """`wait_status` until the job is ``FINISHED:*``."""
        return self.wait_status(job_id, lambda j: j["status"].startswith("FINISHED:"), timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop) and wait; returns its exit code."""
        self.admin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        """SIGKILL the parent alone (its job processes live on, to be re-adopted)."""
        self.admin.close()
        self.proc.kill()
        self.proc.wait()
