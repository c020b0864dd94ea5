"""The one fake clock of the unit tests."""

from __future__ import annotations


class FakeClock:
    """A clock that moves only when told: a test drives time instead of sleeping.

    Pass it wherever the code under test takes a ``clock`` (any ``Callable[[], float]``: the
    monotonic clock of `Timers`, `SiteRegistry`, `ResourceManager`, a `JobStore`'s wall clock).
    ``clock()`` reads it; `advance` (or an assignment to `now`) moves it.

    Args:
        now: its first reading.
        step: how far each reading moves it on before it is read (0: it stands still between
            `advance` calls); with ``step=1.0`` consecutive readings are strictly ordered, which a
            history that sorts by time needs.
    """

    def __init__(self, now: float = 100.0, step: float = 0.0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock on by ``seconds``; returns the new reading."""
        self.now += seconds
        return self.now
