"""`AdminClient`: talk to a running parent through its admin socket (the CLI's only transport).

Locally, the workspace's ipc socket (file permissions decide who may). Remotely, the parent's
tcp admin socket with CURVE, as a provisioned admin (`AdminClient.with_kit`); a remote admin
uploads job folders, since it does not share the parent's disk.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any, Callable, Iterator

import psutil

from flrunner.errors import BadRequest, FlrunnerError, NotReady, ParentUnavailable, RequestTimeout
from flrunner.protocol import Op, admin_ops
from flrunner.protocol.admin_ops import COMMANDS, Command
from flrunner.transport.dealer import DealerClient
from flrunner.workspace import Workspace

#: Seconds before a submission the parent was not ready for is sent again; doubled up to the max.
SUBMIT_RETRY = 0.05
SUBMIT_RETRY_MAX = 1.0


def find_parent(workspace: str | os.PathLike) -> dict:
    """The running parent's info (pid, endpoints) for a workspace.

    Raises:
        ParentUnavailable: no parent is running there.
    """
    ws = Workspace(workspace)
    path = ws.get_parent_info_path()
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ParentUnavailable(f"no parent is running on workspace {ws.get_root_dir()} (no {path})") from None
    except (OSError, ValueError) as exc:
        raise ParentUnavailable(f"cannot read {path}: {exc}") from None
    pid = info.get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid) or _is_zombie(pid):
        raise ParentUnavailable(f"the parent of workspace {ws.get_root_dir()} (pid {pid}) is not running")
    return info


def admin_credentials(kit_dir: str | os.PathLike) -> tuple[str, tuple[bytes, bytes, bytes]]:
    """The admin endpoint and CURVE credentials in an admin's start-up kit (``flrunner provision --admin``).

    Raises:
        KitError: the kit is missing, malformed, or readable by others.
        FlrunnerError: the kit is not an admin's.
    """
    from flrunner.security.kit import Role, load_kit

    kit = load_kit(kit_dir)
    if kit.role is not Role.ADMIN:
        raise FlrunnerError(f"{kit_dir} is the kit of {kit.role.value} '{kit.name}', not of an admin")
    return kit.endpoint, (kit.public_key, kit.secret_key, kit.parent_public_key)


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class AdminClient:
    """Requests to one parent's admin socket.

    Args:
        endpoint: the admin endpoint; use `AdminClient.for_workspace` or `AdminClient.with_kit`.
        timeout: seconds to wait for each reply.
        curve: CURVE credentials for a remote parent (see `admin_credentials`); None for the local socket.
    """

    def __init__(self, endpoint: str, timeout: float = 10.0, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve
        self._client = DealerClient(endpoint, max_msg_size=1 << 30, curve=curve)

    @classmethod
    def for_workspace(cls, workspace: str | os.PathLike, timeout: float = 10.0) -> AdminClient:
        return cls(find_parent(workspace)["admin"], timeout)

    @classmethod
    def with_kit(cls, kit_dir: str | os.PathLike, endpoint: str | None = None, timeout: float = 10.0) -> AdminClient:
        """A remote admin: the kit's keys, at ``endpoint`` (default: the kit's admin endpoint)."""
        kit_endpoint, curve = admin_credentials(kit_dir)
        return cls(endpoint or kit_endpoint, timeout, curve)

    def call(self, op: Op, frames: list | None = None, wait: float | None = None, **fields: Any) -> dict:
        """One request of admin op ``op``; its answer's body (checked against the op's reply shape).

        ``wait``: seconds to wait for the answer (default: the client's timeout).

        Raises:
            ParentUnavailable: no answer in time.
            FlrunnerError: the parent answered with an error (subclass chosen by its code).
        """
        timeout = self.timeout if wait is None else wait
        try:
            return op.call(self._client, wait=timeout, frames=frames, **fields).body
        except RequestTimeout:
            hint = ("; check the endpoint, and that the parent allows this admin key (a refused CURVE key "
                    "looks like silence)") if self.curve is not None else ""
            raise ParentUnavailable(f"the parent at {self.endpoint} did not answer '{op.name}' within "
                                    f"{timeout:g}s{hint}") from None

    def submit(self, job_dir: str | os.PathLike) -> str:
        """Queue a job folder: by path on the local socket, uploaded (as a tar.gz) to a remote parent.

        The answer is the truth: a job id means the job exists; an error, or no answer within the
        client's timeout, means it does not (the parent drops a folder it finishes reading after
        that). A parent that is busy (NOT_READY: re-adopting jobs after a restart, many
        submissions being read, a store that cannot be written now) is asked again, with
        jittered back-off, until the timeout.
        """
        if self.curve is None:
            path = os.path.abspath(job_dir)
            return self._submit(lambda left: self.call(admin_ops.SUBMIT, job_dir=path, wait=left, timeout=left))
        return self.submit_upload(pack_job_folder(job_dir), os.path.basename(os.path.abspath(job_dir)))

    def submit_upload(self, bundle: bytes, name: str) -> str:
        """Queue a job folder packed by `pack_job_folder` (see `submit`)."""
        limit = self.ping().get("max_upload")
        if isinstance(limit, int) and len(bundle) > limit:
            raise BadRequest(f"job folder '{name}' packs to {len(bundle)} bytes; the parent accepts uploads of at "
                             f"most {limit} bytes")
        return self._submit(lambda left: self.call(admin_ops.SUBMIT, frames=[bundle], name=name[:256], wait=left,
                                                   timeout=left))

    def _submit(self, once: Callable[[float], dict]) -> str:
        deadline = time.monotonic() + self.timeout
        pause = SUBMIT_RETRY
        while True:
            try:
                return once(max(0.1, deadline - time.monotonic()))["job_id"]
            except NotReady as exc:
                if time.monotonic() + pause >= deadline:
                    raise NotReady(f"{exc} (asked for {self.timeout:g}s)") from None
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, SUBMIT_RETRY_MAX)

    def jobs(self) -> list[dict]:
        """Every job, without its history."""
        return self.call(admin_ops.JOBS)["jobs"]

    def status(self, job_id: str) -> dict:
        """One job with its status history (a unique prefix of its id is enough)."""
        return self.call(admin_ops.STATUS, job_id=job_id)["job"]

    def abort(self, job_id: str, reason: str | None = None) -> dict:
        """Abort a job; the job as it is now."""
        return self.call(admin_ops.ABORT, job_id=job_id, reason=reason)["job"]

    def clients(self) -> list[dict]:
        """The site registry."""
        return self.call(admin_ops.CLIENTS)["clients"]

    def ps(self) -> dict:
        """The parent and every job process: pid, job, status, cpu, rss, uptime."""
        return self.call(admin_ops.PS)

    def ping(self) -> dict:
        """Whether the parent serves (``ready``), its pid and workspace."""
        return self.call(admin_ops.PING)

    def shutdown(self) -> None:
        """Stop the parent gracefully (as SIGTERM does)."""
        self.call(admin_ops.SHUTDOWN)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _command_method(op: Op, command: Command) -> Callable[..., Any]:
    """An `AdminClient` method for an admin op that is a command and has no method written for it."""
    def method(self: AdminClient, *args: Any, **fields: Any) -> Any:
        body = self.call(op, **dict(zip(command.positional, args)), **fields)
        return body[command.result] if command.result else body

    method.__name__ = method.__qualname__ = op.name
    method.__doc__ = op.doc
    return method


# Every admin op that is a command is a method of the client: a new op needs none written here.
for _op, _command in COMMANDS.items():
    if not hasattr(AdminClient, _op.name):
        setattr(AdminClient, _op.name, _command_method(_op, _command))


def pack_job_folder(job_dir: str | os.PathLike) -> bytes:
    """A job folder as a tar.gz for upload; symbolic links are refused, not silently dropped.

    Raises:
        BadRequest: the folder is missing or holds a symbolic link.
    """
    from flrunner.util.bundles import make_bundle

    root = os.path.abspath(job_dir)
    if not os.path.isdir(root):
        raise BadRequest(f"job folder {root} is not a directory")
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if os.path.islink(os.path.join(folder, name)):
                link = os.path.relpath(os.path.join(folder, name), root)
                raise BadRequest(f"job folder {root} holds a symbolic link ({link}); an upload carries plain files and "
                                 "folders only")
    try:
        return make_bundle(root)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


class StatusFeed:
    """Every job status change, pushed by the parent (no polling), on its own connection.

    Subscribe first, then read the current state, then iterate: nothing is missed in between.
    The subscription is renewed while iterating.

    Args:
        endpoint: the parent's admin endpoint.
        timeout: seconds to wait for the parent to accept the subscription.
        curve: CURVE credentials for a remote parent (see `admin_credentials`).

    Raises:
        ParentUnavailable: the parent did not answer the subscription within ``timeout``.
    """

    def __init__(self, endpoint: str, timeout: float = 10.0, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self._client = DealerClient(endpoint, curve=curve)
        try:
            reply = admin_ops.SUBSCRIBE.call(self._client, wait=timeout)
        except RequestTimeout:
            self._client.close()
            raise ParentUnavailable(f"the parent at {endpoint} did not answer 'subscribe' within {timeout:g}s") \
                from None
        except BaseException:
            self._client.close()
            raise
        self.ttl = float(reply.body.get("ttl", 30.0))
        self._renew_at = time.monotonic() + self.ttl / 3

    def next(self, timeout: float | None = None) -> dict | None:
        """The next changed job (a dict as in `AdminClient.status`, without history), or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now >= self._renew_at:
                try:
                    self._client.send(admin_ops.PING.message(), timeout=0)
                except RequestTimeout:
                    pass  # no connection now; the renewal is tried again a third of a ttl later
                self._renew_at = now + self.ttl / 3
            wait = self._renew_at - now
            if deadline is not None:
                wait = min(wait, deadline - now)
                if wait <= 0:
                    return None
            msg = self._client.receive(wait)
            if msg is not None and msg.op == admin_ops.JOB_STATUS.name and not msg.is_reply:
                job = msg.body.get("job")
                if isinstance(job, dict):
                    return job

    def __iter__(self) -> Iterator[dict]:
        while True:
            job = self.next()
            if job is not None:
                yield job

    def close(self) -> None:
        try:
            self._client.send(admin_ops.UNSUBSCRIBE.message(), timeout=0)
        except RequestTimeout:
            pass  # not connected: the parent drops the subscription when its ttl runs out
        finally:
            self._client.close()

    def __enter__(self) -> StatusFeed:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
