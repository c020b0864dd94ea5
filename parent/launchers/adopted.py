"""A job process started by an earlier parent and taken back by this one.

It is not this parent's child: its exit is seen through a pidfd (which works for any process),
and its exit status is unknown unless it reported a final status first (only its real parent,
init or a subreaper, can learn it).
"""

from __future__ import annotations

import os
import select

from flrunner.linux import pidfd_open

from parent.launchers.base import JobProcess


class AdoptedProcess(JobProcess):
    """A job process started by an earlier parent."""

    def __init__(self, pid: int, create_time: float | None) -> None:
        self.pid = pid
        self.create_time = create_time
        self._fd = pidfd_open(pid)

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
