"""What a restarted parent does with the jobs a previous parent left running.

Job processes do not die with their parent. On start, before it takes new submissions, the
parent reconciles its store: each job that was ``DISPATCHED``/``RUNNING`` is re-adopted if its
process is still alive — the same pid *and* create time, since pids are reused — and says hello
again with its job secret within ``adopt_window`` seconds; otherwise it ends
``FINISHED:ABNORMAL`` ("lost while the parent was down"), after whatever is left of it is killed.
A re-adopted process is not this parent's child: its exit is seen through a pidfd (which works
for any process), and its exit status is unknown unless it reported a final status first.
"""

from __future__ import annotations

import logging
import os
import select

import psutil

from .launcher import JobProcess

log = logging.getLogger(__name__)


class AdoptedProcess(JobProcess):
    """A job process started by an earlier parent."""

    def __init__(self, pid: int, create_time: float | None) -> None:
        self.pid = pid
        self.create_time = create_time
        self._fd = os.pidfd_open(pid)

    def exit_fd(self) -> int:
        return self._fd

    def exited(self) -> bool:
        readable, _, _ = select.select([self._fd], [], [], 0)
        return bool(readable)

    def poll(self) -> int | None:
        """Always None: only its real parent (init, or a subreaper) can learn the exit status."""
        return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def find_live_process(pid: int | None, create_time: float | None) -> bool:
    """Whether the process ``pid`` that a job ran as is still alive (not a zombie, not a reused pid)."""
    if not pid or create_time is None:
        return False
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - create_time) < 0.05
    except psutil.Error:
        return False
