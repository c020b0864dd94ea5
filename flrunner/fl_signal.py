"""Signal: the abort flag a workflow polls (NVIDIA FLARE's `Signal`)."""

from __future__ import annotations

import threading
import time
from typing import Any


class Signal:
    """A one-way flag with an optional value; ``triggered`` never goes back to False on its own.

    Args:
        parent: a parent signal; this one reads as triggered when the parent is.
    """

    def __init__(self, parent: Signal | None = None) -> None:
        self._event = threading.Event()
        self.value: Any = None
        self.trigger_time: float | None = None
        self.parent = parent

    def trigger(self, value: Any = True) -> None:
        self.value = value
        self.trigger_time = time.time()
        self._event.set()

    def reset(self, value: Any = None) -> None:
        self.value = value
        self.trigger_time = None
        self._event.clear()

    @property
    def triggered(self) -> bool:
        return self._event.is_set() or (self.parent is not None and self.parent.triggered)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until triggered or ``timeout`` seconds; return whether it is triggered.

        A workflow that sleeps between steps should use this instead of ``time.sleep`` so that an
        abort wakes it at once.
        """
        if self.parent is None:
            return self._event.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.triggered:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._event.wait(0.05 if left is None else min(0.05, left))
        return self.triggered
