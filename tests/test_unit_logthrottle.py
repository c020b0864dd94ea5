"""`LogThrottle`: a bounded number of lines per second, and a count of what was held back."""

from __future__ import annotations

import logging

from flrunner.util.logthrottle import LogThrottle

from .support import FakeClock


def test_lines_beyond_the_burst_are_held_back_and_counted(caplog):
    clock = FakeClock()
    throttle = LogThrottle(logging.getLogger("throttled"), "sock: ", burst=3, clock=clock)
    with caplog.at_level(logging.INFO, logger="throttled"):
        for i in range(10):
            throttle.warning("bad input %d", i)
        clock.advance(1.0)
        throttle.log(logging.INFO, "later")
    assert [r.getMessage() for r in caplog.records] == [
        "sock: bad input 0", "sock: bad input 1", "sock: bad input 2",
        "sock: 7 similar message(s) not logged in the last second", "sock: later"]
