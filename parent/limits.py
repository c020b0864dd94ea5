"""Per-peer rate limits: one peer's flood must not starve the others.

A token bucket per peer identity: ``rate`` messages a second on average, bursts up to
``burst``. Over the limit, messages are dropped and counted; the peer is told once per second
(with a ``RATE_LIMITED`` reply when the message had an id), so a well-behaved client learns why.
Checking costs O(1) per message; idle peers are forgotten by `prune`.
"""

from __future__ import annotations

import time
from typing import Callable


class RateLimiter:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[bytes, list[float]] = {}  # identity -> [tokens, last refill, last notice]
        self.limited = 0

    def allow(self, identity: bytes) -> tuple[bool, bool]:
        """(accept this message, tell the peer it is being limited)."""
        now = self.clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = [self.burst, now, 0.0]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True, False
        bucket[0] = tokens
        self.limited += 1
        notify = now - bucket[2] >= 1.0
        if notify:
            bucket[2] = now
        return False, notify

    def prune(self, idle: float = 60.0) -> None:
        """Forget peers silent for ``idle`` seconds (their bucket would be full again anyway)."""
        limit = self.clock() - idle
        for identity in [i for i, b in self._buckets.items() if b[1] < limit]:
            del self._buckets[identity]
