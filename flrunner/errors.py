"""Named errors shared by every flrunner process, and the one vocabulary of reply codes.

Each error carries the reply code (`Rc`) it maps to on the wire, so a dispatcher turns any of
them into a coded reply without a lookup table, and a client turns a coded reply back into the
same class (`error_for_rc`).
"""

from __future__ import annotations

import enum


class Rc(str, enum.Enum):
    """Reply codes on the wire (a ``str``: they travel and compare as their text)."""

    OK = "OK"
    BAD_REQUEST = "BAD_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    TIMEOUT = "TIMEOUT"
    NOT_READY = "NOT_READY"
    UNAVAILABLE = "UNAVAILABLE"
    RATE_LIMITED = "RATE_LIMITED"
    ERROR = "ERROR"

    def __str__(self) -> str:
        return self.value


class FlrunnerError(Exception):
    """Base class of every error flrunner raises on purpose."""

    rc: Rc = Rc.ERROR


class BadRequest(FlrunnerError):
    """A message was well-framed but its content is wrong (unknown op, wrong type, missing field)."""

    rc: Rc = Rc.BAD_REQUEST


class FrameError(BadRequest):
    """A message could not be decoded: bad msgpack, wrong shape, over a size limit."""


class Unauthorized(FlrunnerError):
    """The peer has not authenticated, or presented a token or secret that is not valid."""

    rc: Rc = Rc.UNAUTHORIZED


class NotFound(FlrunnerError):
    """The named job, site or object does not exist."""

    rc: Rc = Rc.NOT_FOUND


class Conflict(FlrunnerError):
    """The request contradicts the current state (e.g. moving a finished job)."""

    rc: Rc = Rc.CONFLICT


class RequestTimeout(FlrunnerError):
    """No reply arrived in time."""

    rc: Rc = Rc.TIMEOUT


class NotReady(FlrunnerError):
    """The receiver cannot serve the request yet (e.g. the parent is still starting)."""

    rc: Rc = Rc.NOT_READY


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

    rc: Rc = Rc.UNAVAILABLE


class LaunchError(FlrunnerError):
    """A launcher could not start a job process."""


class WorkspaceError(FlrunnerError):
    """The workspace cannot be used: not a directory, read-only, a path too long; the message names the path."""


class JobStoreError(WorkspaceError):
    """The workspace's job store cannot be opened (not a database, corrupt, read-only, too new)."""


class EndpointError(FlrunnerError):
    """A socket cannot be bound to its endpoint (the port is taken, the address is not valid)."""


_BY_RC: dict[str, type[FlrunnerError]] = {
    cls.rc.value: cls
    for cls in (BadRequest, Unauthorized, NotFound, Conflict, RequestTimeout, NotReady, ParentUnavailable)
}


def error_for_rc(rc: str, reason: str) -> FlrunnerError:
    """Rebuild the error a peer reported with reply code ``rc``."""
    cls = _BY_RC.get(rc, FlrunnerError)
    err = cls(reason)
    try:
        err.rc = Rc(rc)
    except ValueError:  # a code this side does not know: keep the generic one
        pass
    return err
