"""Which connection on the jobs socket is which job process.

A job process proves itself once, in its hello, with its per-job secret; from then on the
routing identity of the connection it said hello on stands for its job id, until its process is
gone (`forget`). The job domain never sees routing identities: the handlers look the job up here
(`JobConnections.job`) and the parent pushes to a job by its id (`identity_of`).

The jobs socket authenticates a peer by its routing identity, so no peer may take over another's
(`parent.edge.endpoint` disables ROUTER_HANDOVER); a job process that reconnects says hello
again, and its new connection replaces the old one.
"""

from __future__ import annotations

from flrunner.errors import Unauthorized
from flrunner.protocol import Request
from parent.jobs.running import RunningJob, RunningJobs


class JobConnections:
    """Routing identities of job processes that said hello, and the site registry revision each
    job has synced to (for pushing it the changes).

    Args:
        running: the running jobs (a request from a job's connection counts as hearing from it).
    """

    def __init__(self, running: RunningJobs) -> None:
        self.running = running
        self._job_of: dict[bytes, str] = {}
        self._identity_of: dict[str, bytes] = {}
        self._synced: dict[str, int] = {}

    def bind(self, identity: bytes, job_id: str) -> None:
        """The connection ``identity`` said hello as job ``job_id`` (replacing an earlier one)."""
        old = self._identity_of.get(job_id)
        if old is not None and old != identity:
            self._job_of.pop(old, None)
        other = self._job_of.get(identity)
        if other is not None and other != job_id:
            self._identity_of.pop(other, None)
        self._job_of[identity] = job_id
        self._identity_of[job_id] = identity

    def forget(self, job_id: str) -> None:
        """The job's process is gone: its connection stands for nothing any more."""
        identity = self._identity_of.pop(job_id, None)
        if identity is not None:
            self._job_of.pop(identity, None)
        self._synced.pop(job_id, None)

    def identity_of(self, job_id: str) -> bytes | None:
        """The connection of a job's process; None before its hello."""
        return self._identity_of.get(job_id)

    def job(self, identity: bytes) -> RunningJob:
        """The running job whose process is behind this connection (it is alive: just heard from).

        Raises:
            Unauthorized: the peer has not said hello with a valid job secret.
        """
        job_id = self._job_of.get(identity)
        job = self.running.heard_from(job_id) if job_id is not None else None
        if job is None:
            raise Unauthorized("this peer has not said hello with a valid job secret")
        return job

    def authorize(self, req: Request) -> None:
        """Every op but hello needs a connection that said hello."""
        if req.op.needs_auth:
            self.job(req.peer)

    def synced(self, job_id: str, revision: int) -> None:
        """The job's process has the site registry as of ``revision``."""
        self._synced[job_id] = revision

    def synced_peers(self) -> list[tuple[bytes, str]]:
        """(connection, job id) of every job process that has synced the site registry."""
        return [(identity, job_id) for job_id in self._synced
                if (identity := self._identity_of.get(job_id)) is not None]
