"""`StatusReporter`: the job's run status, progress and execution error, and their way to the parent.

A status update is acknowledged only once the parent has made it durable. A parent being
replaced is waited for (`child.session.ParentSession.request`). A parent whose store cannot be
written now (a full disk) keeps nothing and says so: a final status is sent again, with back-off,
for up to ``patience`` seconds; a progress update is not (the next one carries the latest
progress).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from child.port import ParentPort
from flrunner.errors import FlrunnerError, NotReady, ParentUnavailable, RequestTimeout
from flrunner.protocol import job_ops
from flrunner.status import RunStatus, clip_error, progress_problem
from flrunner.util.logthrottle import LogThrottle

log = logging.getLogger(__name__)
#: A parent that cannot store progress for a while must not fill the job's log.
_not_stored = LogThrottle(log)

#: First pause before a final status the parent could not store is sent again (then doubled).
FIRST_PAUSE = 0.2
#: Longest pause between two sends of a final status.
MAX_PAUSE = 5.0


class StatusReporter:
    """What the job reports of its run, and the reporting.

    Args:
        port: the parent; None for an engine used without a parent (nothing is sent).
        patience: seconds a final status is sent again while the parent cannot store it (the
            job process's reconnect grace).
        timeout: seconds one attempt waits for a serving parent to make it durable.
        clock: monotonic seconds.
        sleep: waits between attempts.
    """

    def __init__(self, port: ParentPort | None, patience: float = 30.0, timeout: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self._port = port
        self.patience = patience
        self.timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self.run_status: RunStatus = RunStatus.RUNNING
        self.exe_error: str | None = None
        self.progress: Any = None

    def set_progress(self, progress: Any) -> None:
        """Set the progress detail the next update sends.

        Raises:
            TypeError: ``progress`` is not a string or a JSON-compatible dict.
            ValueError: it is larger than 16 KB as JSON.
        """
        problem = progress_problem(progress)
        if problem is not None:
            raise (ValueError if problem.startswith("is ") else TypeError)(f"progress {problem}")
        self.progress = progress

    def finish(self, status: RunStatus, error: str | None) -> None:
        """Record the run's outcome (sent by `report_final`)."""
        self.run_status = status
        self.exe_error = error

    def update(self) -> str | None:
        """Send run status, progress and execution error; returns the status the parent stored
        (None for progress it could not store now; the run status itself without a parent).

        Raises:
            NotReady: the parent could not store the final status within ``patience``.
            FlrunnerError: the parent refused it (e.g. the job already ended).
        """
        if self._port is None:
            return self.run_status.value
        final = self.run_status.is_final
        deadline = self._clock() + self.patience
        pause = FIRST_PAUSE
        while True:
            try:
                return job_ops.RUN_STATUS.call(self._port, wait=self.timeout, status=self.run_status.value,
                                               progress=self.progress, error=clip_error(self.exe_error)).body["status"]
            except NotReady as exc:
                if not final:
                    _not_stored.warning("progress not stored: %s", exc)
                    return None
                if self._clock() + pause >= deadline:
                    raise
                log.warning("final status not stored yet (%s); sending it again in %.1fs", exc, pause)
            except RequestTimeout:
                if self._clock() + pause >= deadline:
                    raise
            self._sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)

    def report_final(self) -> None:
        """Send the final status and wait for the parent's ack (a message queued just before exit
        can be lost by ZeroMQ, libzmq #4660). A parent that refuses it with its progress (too
        large, say) is sent it again without.

        Raises:
            RequestTimeout, ParentUnavailable: the parent never acknowledged it (`update` waited
                through a restart for up to the reconnect grace).
            FlrunnerError: the parent refused it.
        """
        while True:
            try:
                self.update()
                return
            except (RequestTimeout, ParentUnavailable):
                raise
            except FlrunnerError as exc:
                if self.progress is None:
                    raise
                log.warning("the parent refused the final status with its progress (%s); sending it without", exc)
                self.progress = None


__all__ = ["StatusReporter"]
