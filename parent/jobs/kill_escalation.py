"""Aborting a job process: ask nicely, then SIGTERM its process group, then SIGKILL.

The graces are parameters and the timers run on the loop's injectable clock, so the escalation is
tested with a fake clock (tests/test_unit_supervision.py) rather than with sleeps.
"""

from __future__ import annotations

import logging
import signal
from typing import Callable

from parent.jobs.running import RunningJob
from parent.loop.timers import Timers

log = logging.getLogger(__name__)


class KillEscalation:
    """Abort a job process: ask nicely, then SIGTERM its group, then SIGKILL.

    Args:
        timers: the loop's timers.
        abort_grace: seconds between the abort request and SIGTERM.
        term_grace: seconds between SIGTERM and SIGKILL.
    """

    def __init__(self, timers: Timers, abort_grace: float, term_grace: float) -> None:
        self.timers = timers
        self.abort_grace = abort_grace
        self.term_grace = term_grace

    def start(self, job: RunningJob, ask: Callable[[], bool]) -> None:
        """Begin the escalation; ``ask`` sends the abort request and says whether it could."""
        asked = ask()
        if asked:
            job.timers.append(self.timers.call_later(self.abort_grace, self.terminate, job))
        else:
            self.terminate(job)

    def terminate(self, job: RunningJob) -> None:
        """SIGTERM the job's process group now, and SIGKILL it after ``term_grace`` (once per job)."""
        if job.term_sent:
            return
        job.term_sent = True
        log.info("job %s: SIGTERM to process group %d", job.job_id, job.proc.pid)
        job.proc.terminate(signal.SIGTERM)
        job.timers.append(self.timers.call_later(self.term_grace, self._kill, job))

    def _kill(self, job: RunningJob) -> None:
        log.warning("job %s: still running %.1fs after SIGTERM; SIGKILL to process group %d",
                    job.job_id, self.term_grace, job.proc.pid)
        job.proc.terminate(signal.SIGKILL)
