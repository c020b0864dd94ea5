"""Named errors shared by every flrunner process.

Each error carries the wire reply code it maps to, so a dispatcher can turn any of them into a
coded reply without a lookup table, and a client can turn a coded reply back into the same
class.
"""

from __future__ import annotations


class FlrunnerError(Exception):
    """Base class of every error flrunner raises on purpose."""

    rc: str = "ERROR"


class BadRequest(FlrunnerError):
    """A message was well-framed but its content is wrong (unknown op, wrong type, missing field)."""

    rc = "BAD_REQUEST"


class FrameError(BadRequest):
    """A message could not be decoded: bad msgpack, wrong shape, over a size limit."""


class Unauthorized(FlrunnerError):
    """The peer has not authenticated, or presented a token or secret that is not valid."""

    rc = "UNAUTHORIZED"


class NotFound(FlrunnerError):
    """The named job, site or object does not exist."""

    rc = "NOT_FOUND"


class Conflict(FlrunnerError):
    """The request contradicts the current state (e.g. moving a finished job)."""

    rc = "CONFLICT"


class RequestTimeout(FlrunnerError):
    """No reply arrived in time."""

    rc = "TIMEOUT"


class NotReady(FlrunnerError):
    """The receiver cannot serve the request yet (e.g. the parent is still starting)."""

    rc = "NOT_READY"


class StoreUnavailable(NotReady):
    """The job store cannot be written now (a full disk, a read-only file system, an I/O error);
    nothing was written. The message names the store and the error."""


class JobFolderError(BadRequest):
    """A job folder is invalid; the message names the file and the field."""

    def __init__(self, file: str, field: str | None, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        where = f"{file}: field '{field}'" if field else file
        super().__init__(f"{where}: {problem}")


class IllegalTransition(Conflict):
    """A job status change that the state machine does not allow."""

    def __init__(self, job_id: str, current: str, wanted: str) -> None:
        self.job_id = job_id
        self.current = current
        self.wanted = wanted
        super().__init__(f"job {job_id}: cannot move from {current} to {wanted}")


class EncodeError(FlrunnerError):
    """A value cannot travel on the wire; the message names the offending key."""


class ParentUnavailable(FlrunnerError):
    """No parent is answering for a workspace or endpoint."""

    rc = "UNAVAILABLE"


class LaunchError(FlrunnerError):
    """A launcher could not start a job process."""


class WorkspaceError(FlrunnerError):
    """The workspace cannot be used: not a directory, read-only, a path too long; the message names the path."""


class JobStoreError(WorkspaceError):
    """The workspace's job store cannot be opened (not a database, corrupt, read-only, too new)."""


class EndpointError(FlrunnerError):
    """A socket cannot be bound to its endpoint (the port is taken, the address is not valid)."""


_BY_RC: dict[str, type[FlrunnerError]] = {
    cls.rc: cls
    for cls in (BadRequest, Unauthorized, NotFound, Conflict, RequestTimeout, NotReady, ParentUnavailable)
}


def error_for_rc(rc: str, reason: str) -> FlrunnerError:
    """Rebuild the error a peer reported with reply code ``rc``."""
    cls = _BY_RC.get(rc, FlrunnerError)
    err = cls(reason)
    err.rc = rc
    return err
