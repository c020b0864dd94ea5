"""`JobStatuses`: jobs move through their states here, and each change is announced once it is
durable.

A transition the store refuses (a full disk) is held, not lost, and announced when it is stored
(`parent.jobs.held_writes`); nothing is announced before it is durable, so a watcher never sees
a state the store could lose.
"""

from __future__ import annotations

import logging
from typing import Any

from flrunner.errors import BadRequest, NotFound
from flrunner.status import RunStatus
from parent.events import Events
from parent.jobs.held_writes import HeldWrites
from parent.jobs.store import JobRecord

log = logging.getLogger(__name__)


class JobStatuses:
    """Moves jobs between states, announcing each change once it is durable.

    Args:
        store: the job store (refused writes are held).
        events: where changes are announced (`Events.status_changed`).
    """

    def __init__(self, store: HeldWrites, events: Events) -> None:
        self.store = store
        self.events = events

    def move(self, job_id: str, status: RunStatus, reason: str, **fields: Any) -> JobRecord:
        """Move a job and announce it once it is durable (a transition the store refuses is held
        and announced when it is stored)."""
        rec = self.store.transition(job_id, status, reason, **fields)
        log.info("job %s: %s (%s)%s", job_id, status.value, reason,
                 f"; not stored yet: {rec.store_error}" if rec.store_error else "")
        if rec.store_error is None:
            self.events.status_changed(rec)
        return rec

    def announce(self, rec: JobRecord) -> None:
        """Tell watchers about a change already stored (progress, a new pid, an exit code)."""
        self.events.status_changed(rec)

    def resolve(self, job_id: str) -> JobRecord:
        """The job with this id, or with this unique id prefix (as `git` does for commits).

        Raises:
            NotFound: no job has this id (or prefix).
            BadRequest: the prefix fits several jobs.
        """
        try:
            return self.store.get(job_id)
        except NotFound:
            matches = [r for r in self.store.list() if r.job_id.startswith(job_id)] if len(job_id) >= 4 else []
            if len(matches) == 1:
                return self.store.get(matches[0].job_id)
            if len(matches) > 1:
                raise BadRequest(f"job id prefix '{job_id}' is ambiguous ({len(matches)} jobs)") from None
            raise
