"""Per-peer rate limits: one peer's flood must not starve the others.

A token bucket per peer identity for messages (``rate`` a second on average, bursts up to
``burst``) and one for bytes (``byte_rate`` and ``byte_burst``, counting every frame of a
message), so a peer cannot hog the parent with large messages while it stays under the message
rate. Over either limit, messages are dropped and counted; the peer is told once per second
(with a ``RATE_LIMITED`` reply naming the limit, when the message had an id), so a well-behaved
client learns why. Checking costs O(1) per message; idle peers are forgotten by `prune`.
"""

from __future__ import annotations

import time
from typing import Callable

# A peer's bucket: [messages left, bytes left, last refill, last notice].
_MESSAGES, _BYTES, _REFILLED, _NOTIFIED = range(4)


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``"64 MiB"``, ``"1.5 KiB"``, ``"300 B"``."""
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.4g} {unit}"
        n /= 1024
    return f"{n:.4g} GiB"


class RateLimiter:
    """Token buckets per peer, for its messages and for its bytes.

    Args:
        rate: messages a second one peer may send on average; None: messages are not counted.
        burst: the most messages a rested peer may send at once (with ``rate``).
        clock: the time source, in seconds.
        byte_rate: bytes a second one peer may send on average; None: bytes are not counted.
        byte_burst: the most bytes a rested peer may send at once (with ``byte_rate``). A larger
            message is still accepted from a peer whose byte bucket is full: it leaves the bucket
            in debt, and nothing more from that peer is accepted until the debt is paid off at
            ``byte_rate``, so the average holds whatever the message sizes.
    """

    def __init__(self, rate: float | None, burst: float | None = None, clock: Callable[[], float] = time.monotonic,
                 *, byte_rate: float | None = None, byte_burst: float | None = None) -> None:
        if (rate is None) != (burst is None) or (byte_rate is None) != (byte_burst is None):
            raise ValueError("a rate needs its burst, and a burst its rate")
        self.rate = rate
        self.burst = burst
        self.byte_rate = byte_rate
        self.byte_burst = byte_burst
        self.clock = clock
        # What a limited peer is told, naming the limit it is over.
        self._messages_limit = f"{rate:g} messages/s" if rate is not None else None
        self._bytes_limit = (f"{format_bytes(byte_rate)}/s in bursts of {format_bytes(byte_burst)}"
                             if byte_rate is not None and byte_burst is not None else None)
        self._buckets: dict[bytes, list[float]] = {}
        #: Messages refused, over either limit.
        self.limited = 0

    def allow(self, identity: bytes, size: int = 0) -> tuple[bool, str | None]:
        """Whether to accept a message of ``size`` bytes from ``identity``.

        Returns:
            (accept, notice): ``notice`` names the limit the message is over when the peer is to
            be told now (the first refusal in a second), else None.
        """
        now = self.clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = [self.burst or 0.0, self.byte_burst or 0.0, now, float("-inf")]
        elapsed = now - bucket[_REFILLED]
        bucket[_REFILLED] = now
        over = None
        if self.rate is not None:
            bucket[_MESSAGES] = min(self.burst, bucket[_MESSAGES] + elapsed * self.rate)
            if bucket[_MESSAGES] < 1.0:
                over = self._messages_limit
        if self.byte_rate is not None:
            bucket[_BYTES] = min(self.byte_burst, bucket[_BYTES] + elapsed * self.byte_rate)
            if over is None and bucket[_BYTES] < min(size, self.byte_burst):
                over = self._bytes_limit
        if over is None:
            if self.rate is not None:
                bucket[_MESSAGES] -= 1.0
            if self.byte_rate is not None:
                bucket[_BYTES] -= size
            return True, None
        self.limited += 1
        if now - bucket[_NOTIFIED] < 1.0:
            return False, None
        bucket[_NOTIFIED] = now
        return False, over

    def prune(self, idle: float = 60.0) -> None:
        """Forget peers silent for ``idle`` seconds whose buckets are full again (a new peer's
        bucket starts full, so forgetting them changes nothing; a peer still in debt is kept)."""
        now = self.clock()
        for identity in [i for i, b in self._buckets.items() if now - b[_REFILLED] >= idle and self._rested(b, now)]:
            del self._buckets[identity]

    def _rested(self, bucket: list[float], now: float) -> bool:
        elapsed = now - bucket[_REFILLED]
        return ((self.rate is None or bucket[_MESSAGES] + elapsed * self.rate >= self.burst)
                and (self.byte_rate is None or bucket[_BYTES] + elapsed * self.byte_rate >= self.byte_burst))
