"""The events port: what the parent's domain (its jobs, its job store, its site registry) tells the
rest of the parent, or asks of it.

The domain speaks job ids and site names only. Which connection carries which job process, who
subscribed to status changes, which requests wait on a site: that is the edge's business. The
assembly (`parent.assembly.Parent`) implements this port by passing each event to whom it
concerns; a domain object gets it in its constructor and calls what it needs, and a unit test
gives a fake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from parent.jobs.store import JobRecord


class Events(Protocol):
    """What the domain tells, or asks of, the rest of the parent."""

    def status_changed(self, rec: JobRecord) -> None:
        """A job's record changed, durably (announced once per change, after the commit)."""

    def ask_to_abort(self, job_id: str, reason: str) -> bool:
        """Ask a job's process to abort; False if it cannot be asked (it has not said hello)."""

    def job_ended(self, job_id: str, how: str, restarting: bool) -> None:
        """A job's process is gone (``how``: "exited with code 1", "killed by SIGKILL", ...),
        before the job's final status is recorded; ``restarting``: a new process takes over."""

    def writes_stored(self, rec: JobRecord) -> None:
        """Writes of a job that the store had refused are stored at last (`parent.jobs.held_writes`)."""

    def sites_changed(self, base: int, revision: int, changes: list[dict]) -> None:
        """The site registry moved from revision ``base`` to ``revision`` with ``changes``."""
