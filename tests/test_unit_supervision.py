"""Unit tests of `parent.loop.timers.Timers` and `parent.jobs.running.KillEscalation` on a fake clock."""

from __future__ import annotations

import signal

import pytest

from parent.launchers.base import JobProcess
from flrunner.linux import decode_exit
from parent.jobs.kill_escalation import KillEscalation
from parent.jobs.running import RunningJob
from parent.loop.timers import Timers

from .support import FakeClock


class FakeJobProcess(JobProcess):
    """A JobProcess that records the signals it was asked to send, and sends none."""

    def __init__(self, pid: int = 424242) -> None:
        self.pid = pid
        self.create_time = 0.0
        self.signals: list[int] = []

    def exit_fd(self) -> int:  # pragma: no cover - not used here
        return -1

    def exited(self) -> bool:
        return False

    def poll(self) -> int | None:
        return None

    def terminate(self, sig: int) -> bool:
        self.signals.append(sig)
        return True

    def close(self) -> None:
        pass


def make_job(proc: FakeJobProcess) -> RunningJob:
    return RunningJob(job_id="job-1", name="test", proc=proc, secret_hash="x", started_at=0.0)


@pytest.fixture
def env():
    clock = FakeClock()
    timers = Timers(clock=clock)
    proc = FakeJobProcess()
    return clock, timers, proc, make_job(proc)


def advance(clock: FakeClock, timers: Timers, dt: float) -> None:
    clock.now += dt
    timers.run_due()


# --- KillEscalation -------------------------------------------------------------------------------

def test_escalation_asks_then_sigterm_then_sigkill(env):
    clock, timers, proc, job = env
    esc = KillEscalation(timers, abort_grace=5.0, term_grace=3.0)
    asked = []
    esc.start(job, lambda: asked.append(clock.now) or True)
    assert asked == [100.0]
    assert proc.signals == []

    advance(clock, timers, 4.999)
    assert proc.signals == []
    assert timers.timeout(60) == pytest.approx(0.001)
    advance(clock, timers, 0.001)  # abort_grace elapsed
    assert proc.signals == [signal.SIGTERM]

    advance(clock, timers, 2.9)
    assert proc.signals == [signal.SIGTERM]
    advance(clock, timers, 0.1)  # term_grace elapsed
    assert proc.signals == [signal.SIGTERM, signal.SIGKILL]

    advance(clock, timers, 1000)
    assert proc.signals == [signal.SIGTERM, signal.SIGKILL]  # nothing more
    assert timers.timeout(60) == 60


def test_escalation_sigterm_is_immediate_when_ask_fails(env):
    clock, timers, proc, job = env
    esc = KillEscalation(timers, abort_grace=5.0, term_grace=3.0)
    esc.start(job, lambda: False)
    assert proc.signals == [signal.SIGTERM]
    advance(clock, timers, 2.99)
    assert proc.signals == [signal.SIGTERM]
    advance(clock, timers, 0.01)
    assert proc.signals == [signal.SIGTERM, signal.SIGKILL]


def test_escalation_timers_belong_to_the_job(env):
    clock, timers, proc, job = env
    esc = KillEscalation(timers, abort_grace=1.0, term_grace=1.0)
    esc.start(job, lambda: True)
    assert len(job.timers) == 1
    advance(clock, timers, 1.0)
    assert len(job.timers) == 2  # the SIGKILL timer was added to the job's list


def test_cancelled_escalation_never_fires(env):
    clock, timers, proc, job = env
    esc = KillEscalation(timers, abort_grace=5.0, term_grace=3.0)
    esc.start(job, lambda: True)
    job.cancel_timers()  # the process exited before the grace ran out
    assert job.timers == []
    advance(clock, timers, 100)
    assert proc.signals == []


def test_cancel_after_sigterm_prevents_sigkill(env):
    clock, timers, proc, job = env
    esc = KillEscalation(timers, abort_grace=5.0, term_grace=3.0)
    esc.start(job, lambda: False)
    assert proc.signals == [signal.SIGTERM]
    job.cancel_timers()
    advance(clock, timers, 100)
    assert proc.signals == [signal.SIGTERM]


def test_zero_graces_escalate_in_one_run(env):
    clock, timers, proc, job = env
    esc = KillEscalation(timers, abort_grace=0.0, term_grace=0.0)
    esc.start(job, lambda: True)
    assert proc.signals == []
    timers.run_due()
    assert proc.signals == [signal.SIGTERM, signal.SIGKILL]


# --- Timers ---------------------------------------------------------------------------------------

def test_cancelled_timers_never_fire():
    clock = FakeClock()
    timers = Timers(clock=clock)
    fired = []
    t1 = timers.call_later(1.0, fired.append, "t1")
    timers.call_later(2.0, fired.append, "t2")
    t1.cancel()
    clock.now += 5
    timers.run_due()
    assert fired == ["t2"]
    timers.run_due()
    assert fired == ["t2"]  # one-shot


def test_timers_fire_in_deadline_then_insertion_order():
    clock = FakeClock()
    timers = Timers(clock=clock)
    fired = []
    timers.call_later(2.0, fired.append, "late")
    timers.call_later(1.0, fired.append, "a")
    timers.call_later(1.0, fired.append, "b")
    timers.call_later(-5.0, fired.append, "now")  # negative delay means "due now"
    timers.run_due()
    assert fired == ["now"]
    clock.now += 1.0
    timers.run_due()
    assert fired == ["now", "a", "b"]
    clock.now += 1.0
    timers.run_due()
    assert fired == ["now", "a", "b", "late"]


def test_timer_callback_may_schedule_more():
    clock = FakeClock()
    timers = Timers(clock=clock)
    fired = []

    def first():
        fired.append("first")
        timers.call_later(1.0, fired.append, "second")

    timers.call_later(1.0, first)
    clock.now += 1.0
    timers.run_due()
    assert fired == ["first"]
    assert timers.timeout(10) == 1.0
    clock.now += 1.0
    timers.run_due()
    assert fired == ["first", "second"]


def test_timeout_respects_cap_and_next_deadline():
    clock = FakeClock()
    timers = Timers(clock=clock)
    assert timers.timeout(7.5) == 7.5  # no timers: the cap
    t = timers.call_later(3.0, lambda: None)
    assert timers.timeout(10.0) == 3.0  # the next deadline
    assert timers.timeout(1.0) == 1.0  # capped
    clock.now += 2.5
    assert timers.timeout(10.0) == pytest.approx(0.5)
    clock.now += 10
    assert timers.timeout(10.0) == 0.0  # overdue: never negative
    t.cancel()
    assert timers.timeout(10.0) == 10.0  # a cancelled head does not count
    timers.call_later(4.0, lambda: None)
    c = timers.call_later(1.0, lambda: None)
    c.cancel()
    assert timers.timeout(10.0) == 4.0  # skips the cancelled earlier timer


# --- decode_exit (flrunner.linux) -----------------------------------------------------------------

@pytest.mark.parametrize("rc,expected", [
    (0, (0, None, "exited with code 0")),
    (3, (3, None, "exited with code 3")),
    (-9, (None, 9, "killed by SIGKILL")),
    (-15, (None, 15, "killed by SIGTERM")),
    (None, (None, None, "exit status unknown")),
])
def test_decode_exit(rc, expected):
    end = decode_exit(rc)
    assert (end.code, end.signal, end.text) == expected


def test_decode_exit_unknown_signal_number():
    end = decode_exit(-200)
    code, sig, text = end.code, end.signal, end.text
    assert (code, sig) == (None, 200)
    assert "200" in text
