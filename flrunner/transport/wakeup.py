"""A self-pipe that wakes a poll loop from another thread (or a signal handler)."""

from __future__ import annotations

import os


class WakePipe:
    """A non-blocking pipe: register `fileno` with a poller, call `wake` from anywhere, `drain` on wake-up."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._r

    @property
    def write_fd(self) -> int:
        """The writing end (for ``signal.set_wakeup_fd``)."""
        return self._w

    def wake(self) -> None:
        try:
            os.write(self._w, b"w")
        except (BlockingIOError, OSError):
            pass  # a full pipe already wakes the loop; a closed one has no loop left to wake

    def drain(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)
