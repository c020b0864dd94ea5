"""`ParentSession.request`: a call waits through a paused or replaced parent (pure logic, fake
link and clock)."""

from __future__ import annotations

import pytest

from child.session import ParentSession
from flrunner.errors import RequestTimeout
from flrunner.transport.wire import Message

from .support import FakeClock


class FakeCall:
    """Answered at ``answer_at`` (fake time); each wait advances the clock by its timeout."""

    def __init__(self, time: FakeClock, answer_at: float | None) -> None:
        self.time = time
        self.answer_at = answer_at
        self.replies: list[Message] = []

    def wait(self, count, timeout, cancelled=None) -> bool:
        if self.answer_at is not None and self.time.now + (timeout or 0) >= self.answer_at:
            self.time.now = max(self.time.now, self.answer_at)
            self.replies.append(Message("run_status", {"status": "RUNNING"}, re=1, rc="OK"))
            return True
        self.time.now += timeout or 0
        return False


class FakeLink:
    """The parent is silent (lost) between ``away_from`` and ``away_until``."""

    def __init__(self, time: FakeClock, answer_at: float | None, away: tuple[float, float]) -> None:
        self.time = time
        self.answer_at = answer_at
        self.away = away
        self.calls = 0

    @property
    def parent_lost(self) -> bool:
        return self.away[0] <= self.time.now < self.away[1]

    def call(self, msg) -> FakeCall:
        self.calls += 1
        return FakeCall(self.time, self.answer_at)

    def end_call(self, call) -> None:
        pass


class Engine:
    abort_signal = None

    def on_push(self, msg) -> None:
        pass


def session(time: FakeClock, link: FakeLink) -> ParentSession:
    s = ParentSession({"job_id": "j", "secret": "s", "endpoint": "ipc:///nowhere"}, Engine(), clock=time)
    s.link = link  # type: ignore[assignment]
    return s


def test_a_call_waits_through_a_long_parent_pause_and_gets_its_answer():
    time = FakeClock(0.0)
    # The parent stops at t=5 for 90 s; the answer to the request (queued before the stop) comes
    # 1 s after it resumes, once it has answered a heartbeat queued before it.
    link = FakeLink(time, answer_at=96.0, away=(5.0, 95.0))
    reply = session(time, link).request(Message("run_status", {}), timeout=30.0)
    assert reply.body == {"status": "RUNNING"} and link.calls == 1  # waited; never sent twice


def test_a_serving_parent_that_does_not_answer_times_out():
    time = FakeClock(0.0)
    link = FakeLink(time, answer_at=None, away=(0.0, 0.0))
    with pytest.raises(RequestTimeout):
        session(time, link).request(Message("run_status", {}), timeout=30.0)
    assert 30.0 <= time.now < 31.0
