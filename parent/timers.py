"""A heap of one-shot timers driven by the parent's loop, with an injectable clock."""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Any, Callable


class Timer:
    """A scheduled call; `cancel` makes it a no-op."""

    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """One-shot timers; the loop asks `timeout` how long it may sleep and calls `run_due`.

    Args:
        clock: monotonic seconds; injected so tests can drive time.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
        timer = Timer(self.clock() + max(0.0, delay), fn, args)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        return timer

    def timeout(self, cap: float) -> float:
        """Seconds until the next timer is due (at most ``cap``, at least 0)."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return cap
        return max(0.0, min(cap, self._heap[0][0] - self.clock()))

    def run_due(self, guard: Callable[[Callable[[], Any]], None] | None = None) -> None:
        """Run the timers that are due; ``guard(call)`` runs each (to contain a failing one)."""
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.cancelled = True
                if guard is None:
                    timer.fn(*timer.args)
                else:
                    guard(lambda t=timer: t.fn(*t.args))
