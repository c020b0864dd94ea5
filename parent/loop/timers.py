"""A heap of one-shot timers driven by the parent's loop, with an injectable clock; and the
loop's clock, which does not count the time the parent itself was stalled."""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


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


class StallClock:
    """Monotonic seconds that leave out the time the parent's loop was stalled.

    Whether a peer is alive is judged on what it sent, and a peer cannot be heard while the
    parent is not reading: stopped (SIGSTOP, a debugger), frozen, swapped out, or stuck in one
    long call. Such a stall would otherwise look, at the first check after it, like every peer
    falling silent at once — healthy jobs declared hung, every site dropped — while their
    messages sit queued, unread. So every read of this clock looks at how long it has been since
    the previous read: beyond what the loop said it would sleep (`sleeping`, before it polls),
    that time is a stall, and it is taken out of the clock. Timers, heartbeat checks and the site
    registry all read this clock (on the loop's thread only), so each peer gets its full window
    again, counted in time the parent was listening, and the queued messages are read before
    any of those windows ends — wherever in the loop the stall struck.

    Args:
        source: the underlying monotonic clock.
        threshold: a read later than expected by less than this is ordinary work or jitter, not
            a stall.
    """

    def __init__(self, source: Callable[[], float] = time.monotonic, threshold: float = 0.5) -> None:
        self._source = source
        self.threshold = threshold
        #: Seconds of stalls left out so far.
        self.stalled = 0.0
        self._last = source()
        self._allowance = 0.0

    def sleeping(self, seconds: float) -> None:
        """The loop is about to block for up to ``seconds``: that much silence is not a stall."""
        self._allowance = seconds

    def __call__(self) -> float:
        now = self._source()
        late = now - self._last - self._allowance
        self._last = now
        self._allowance = 0.0
        if late >= self.threshold:
            self.stalled += late
        return now - self.stalled
