"""The per-peer rate limiter (fake clock)."""

from __future__ import annotations

from parent.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_then_the_rate_and_one_notice_a_second():
    clock = Clock()
    rl = RateLimiter(rate=10, burst=5, clock=clock)
    assert [rl.allow(b"a")[0] for _ in range(5)] == [True] * 5
    assert rl.allow(b"a") == (False, True)   # over: dropped, told once
    assert rl.allow(b"a") == (False, False)  # not told again within the second
    assert rl.allow(b"b") == (True, False)   # another peer is not affected
    clock.t += 0.25                          # two tokens back (and a half)
    assert [rl.allow(b"a")[0] for _ in range(3)] == [True, True, False]
    clock.t += 1.0
    assert rl.allow(b"a") == (True, False)
    assert rl.limited == 3


def test_idle_peers_are_forgotten():
    clock = Clock()
    rl = RateLimiter(rate=1, burst=1, clock=clock)
    rl.allow(b"a")
    clock.t += 61
    rl.allow(b"b")
    rl.prune(idle=60)
    assert list(rl._buckets) == [b"b"]
