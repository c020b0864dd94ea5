"""Log lines a peer can cause, bounded: a flood of bad input must not fill the disk."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable


class LogThrottle:
    """At most ``burst`` lines per second through one logger; the number held back is logged with
    the next line after the second is over. Thread-safe (job processes and sites serve on pools).

    Args:
        logger: where the lines go.
        prefix: put before every line (e.g. ``"sites socket: "``).
        burst: lines per second.
    """

    def __init__(self, logger: logging.Logger, prefix: str = "", burst: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.prefix = prefix
        self.burst = burst
        self.clock = clock
        self._lock = threading.Lock()
        self._window = float("-inf")
        self._count = 0
        self._held = 0

    def log(self, level: int, fmt: str, *args: Any) -> None:
        with self._lock:
            now = self.clock()
            held = 0
            if now - self._window >= 1.0:
                held, self._window, self._count, self._held = self._held, now, 0, 0
            if self._count >= self.burst:
                self._held += 1
                return
            self._count += 1
        if held:
            self.logger.warning("%s%d similar message(s) not logged in the last second", self.prefix, held)
        self.logger.log(level, self.prefix + fmt, *args)

    def warning(self, fmt: str, *args: Any) -> None:
        self.log(logging.WARNING, fmt, *args)
