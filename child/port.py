"""What the job's engine needs of its parent, and what the parent pushes to it.

The engine's parts (its client-registry mirror, its status reporting, its aux) call the parent
through a `ParentPort`: the job process's `child.session.ParentSession`, whose calls survive a
parent restart, or a fake one in unit tests. What the parent pushes (an abort, registry changes,
sites' aux requests) comes in through one dispatcher (`parent_pushes`), made before both the
session that receives the pushes and the engine whose parts serve them, so neither needs the
other to be built first.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Protocol

from flrunner.errors import FlrunnerError
from flrunner.protocol import Dispatcher, job_ops
from flrunner.transport.wire import Message

if TYPE_CHECKING:
    from flrunner.transport.link import Call

log = logging.getLogger(__name__)


class NotAvailableYet(FlrunnerError, NotImplementedError):
    """An engine feature that is not built yet (or needs a parent the engine does not have)."""


class ParentPort(Protocol):
    """The calls the engine's parts make of the parent (see `child.session.ParentSession`).

    Attributes:
        epoch: bumped each time a parent re-adopts this job: what was asked of the parent before
            went to one that will not answer, and a new parent numbers its registry afresh.
    """

    epoch: int

    def request(self, msg: Message, timeout: float = ...) -> Message: ...

    def call(self, msg: Message) -> Call: ...

    def end_call(self, call: Call) -> None: ...

    def send(self, msg: Message) -> None: ...

    def reply(self, answer: Message) -> None: ...

    def parent_unreachable(self) -> bool: ...

    def parent_forgot_us(self) -> None: ...

    def wait_readopted(self, epoch: int, deadline: float | None = None,
                       cancelled: Callable[[], bool] | None = None) -> bool: ...


def parent_pushes() -> Dispatcher:
    """The dispatcher of what the parent pushes to a job process (its handlers are the engine's)."""
    return Dispatcher(job_ops.TO_JOB, "job process",
                      on_refused=lambda msg, exc: log.warning("ignored a bad push from the parent: %s", exc))


__all__ = ["NotAvailableYet", "ParentPort", "parent_pushes"]
