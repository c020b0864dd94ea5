"""`StallClock`: the parent's loop clock leaves out the time the parent itself was stalled."""

from __future__ import annotations

from parent.loop.timers import StallClock, Timers

from .support import FakeClock


def test_time_the_loop_said_it_would_sleep_is_not_a_stall():
    t = FakeClock()
    clock = StallClock(t, threshold=0.5)
    start = clock()
    clock.sleeping(1.0)
    t.now += 1.0
    assert clock() - start == 1.0 and clock.stalled == 0.0


def test_a_late_wake_up_is_left_out_of_the_clock():
    t = FakeClock()
    clock = StallClock(t, threshold=0.5)
    start = clock()
    clock.sleeping(1.0)
    t.now += 31.0  # SIGSTOP for 30 s during the poll
    assert clock() - start == 1.0 and clock.stalled == 30.0


def test_a_stall_between_two_reads_outside_a_poll_is_left_out_too():
    t = FakeClock()
    clock = StallClock(t, threshold=0.5)
    start = clock()
    t.now += 0.2  # ordinary work: counted
    assert abs(clock() - start - 0.2) < 1e-9
    t.now += 10.0  # stopped while handling a message
    assert abs(clock() - start - 0.2) < 1e-9 and clock.stalled == 10.0


def test_the_allowance_is_for_one_sleep_only():
    t = FakeClock()
    clock = StallClock(t, threshold=0.5)
    clock.sleeping(5.0)
    t.now += 1.0
    clock()  # woke early: the rest of the allowance is gone
    t.now += 4.0
    clock()
    assert clock.stalled == 4.0


def test_timers_on_a_stall_clock_are_postponed_by_the_stall():
    t = FakeClock()
    clock = StallClock(t, threshold=0.5)
    timers = Timers(clock)
    fired = []
    timers.call_later(2.0, fired.append, "due")
    clock.sleeping(timers.timeout(cap=1.0))
    t.now += 20.0  # paused
    timers.run_due()
    assert fired == []
    clock.sleeping(timers.timeout(cap=5.0))  # the loop sleeps until the timer, 1 s of listening away
    t.now += 1.0
    timers.run_due()
    assert fired == ["due"]
