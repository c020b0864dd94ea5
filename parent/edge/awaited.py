"""Requests the parent sent to a peer (its own, or forwarded for another peer) awaiting a reply.

Every entry is keyed by (socket, peer identity, message id) — the routing identity is part of
the key, so a peer can only answer requests that were sent to it. Each entry ends exactly once:
with the peer's reply, with its timeout, or when the peer (a site or a job) goes away, so a
waiting workflow learns of a lost site at once rather than at its timeout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from flrunner.protocol import Rc
from flrunner.transport.wire import Message

from parent.loop.timers import Timer, Timers

log = logging.getLogger(__name__)

#: Called with the reply message.
OnReply = Callable[[Message], None]
#: Called with a wire reply code and a reason when no reply will come.
OnFail = Callable[[str, str], None]


@dataclass
class Expected:
    key: tuple[str, bytes, int]
    on_reply: OnReply
    on_fail: OnFail
    site: str | None = None
    job_id: str | None = None
    timer: Timer | None = field(default=None, repr=False)


class AwaitedReplies:
    """The parent's table of requests awaiting replies."""

    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self._by_key: dict[tuple[str, bytes, int], Expected] = {}
        self._by_site: dict[str, set[tuple[str, bytes, int]]] = {}
        self._by_job: dict[str, set[tuple[str, bytes, int]]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def expect(self, socket: str, identity: bytes, mid: int, timeout: float, on_reply: OnReply, on_fail: OnFail,
               site: str | None = None, job_id: str | None = None) -> None:
        """Wait up to ``timeout`` s for the reply to message ``mid`` sent to ``identity`` on ``socket``."""
        key = (socket, identity, mid)
        entry = Expected(key, on_reply, on_fail, site, job_id)
        entry.timer = self.timers.call_later(timeout, self._expire, key)
        self._by_key[key] = entry
        if site is not None:
            self._by_site.setdefault(site, set()).add(key)
        if job_id is not None:
            self._by_job.setdefault(job_id, set()).add(key)

    def reply(self, socket: str, identity: bytes, msg: Message) -> bool:
        """Deliver a reply; False if nothing was waiting for it (late, or never asked)."""
        entry = self._pop((socket, identity, msg.re))  # type: ignore[arg-type]
        if entry is None:
            return False
        _call(entry.on_reply, msg)
        return True

    def fail_site(self, site: str, reason: str) -> None:
        for key in list(self._by_site.get(site, ())):
            entry = self._pop(key)
            if entry is not None:
                _call(entry.on_fail, Rc.UNAVAILABLE, reason)

    def fail_job(self, job_id: str, reason: str) -> None:
        for key in list(self._by_job.get(job_id, ())):
            entry = self._pop(key)
            if entry is not None:
                _call(entry.on_fail, Rc.UNAVAILABLE, reason)

    def _expire(self, key: tuple[str, bytes, int]) -> None:
        entry = self._pop(key)
        if entry is not None:
            _call(entry.on_fail, Rc.TIMEOUT, "no reply in time")

    def _pop(self, key: tuple[str, bytes, int]) -> Expected | None:
        entry = self._by_key.pop(key, None)
        if entry is None:
            return None
        if entry.timer is not None:
            entry.timer.cancel()
        for index, name in ((self._by_site, entry.site), (self._by_job, entry.job_id)):
            if name is not None:
                keys = index.get(name)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[name]
        return entry


def _call(fn: Callable, *args: object) -> None:
    try:
        fn(*args)
    except Exception:  # a callback bug must not stop the parent's loop
        log.exception("handling the outcome of a request failed")
