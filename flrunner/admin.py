"""`AdminClient`: talk to a running parent through its admin socket (the CLI's only transport)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator

import psutil

from . import protocol as P
from .errors import ParentUnavailable, RequestTimeout
from .rpc import DealerClient
from .workspace import Workspace


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


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class AdminClient:
    """Requests to one parent's admin socket.

    Args:
        endpoint: the admin endpoint; use `AdminClient.for_workspace` to find it.
        timeout: seconds to wait for each reply.
    """

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._client = DealerClient(endpoint, max_msg_size=1 << 30)

    @classmethod
    def for_workspace(cls, workspace: str | os.PathLike, timeout: float = 10.0) -> AdminClient:
        return cls(find_parent(workspace)["admin"], timeout)

    def call(self, op: str, **body: Any) -> dict:
        try:
            return self._client.request(op, body, timeout=self.timeout).body
        except RequestTimeout:
            raise ParentUnavailable(f"the parent at {self.endpoint} did not answer '{op}' within {self.timeout:g}s") from None

    def submit(self, job_dir: str | os.PathLike) -> str:
        return self.call("submit", job_dir=os.path.abspath(job_dir))["job_id"]

    def jobs(self) -> list[dict]:
        return self.call("jobs")["jobs"]

    def status(self, job_id: str) -> dict:
        return self.call("status", job_id=job_id)["job"]

    def abort(self, job_id: str, reason: str | None = None) -> dict:
        return self.call("abort", job_id=job_id, reason=reason)["job"]

    def clients(self) -> list[dict]:
        return self.call("clients")["clients"]

    def ps(self) -> dict:
        return self.call("ps")

    def ping(self) -> dict:
        return self.call("ping")

    def shutdown(self) -> None:
        self.call("shutdown")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class StatusFeed:
    """Every job status change, pushed by the parent (no polling), on its own connection.

    Subscribe first, then read the current state, then iterate: nothing is missed in between.
    The subscription is renewed while iterating.

    Args:
        endpoint: the parent's admin endpoint.
        timeout: seconds to wait for the parent to accept the subscription.

    Raises:
        ParentUnavailable: the parent did not answer the subscription within ``timeout``.
    """

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self._client = DealerClient(endpoint)
        try:
            reply = self._client.request("subscribe", {}, timeout=timeout)
        except RequestTimeout:
            self._client.close()
            raise ParentUnavailable(f"the parent at {endpoint} did not answer 'subscribe' within {timeout:g}s") from None
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
                self._client.send("ping")
                self._renew_at = now + self.ttl / 3
            wait = self._renew_at - now
            if deadline is not None:
                wait = min(wait, deadline - now)
                if wait <= 0:
                    return None
            msg = self._client.receive(wait)
            if msg is not None and msg.op == P.JOB_STATUS_EVENT and not msg.is_reply:
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
            self._client.send("unsubscribe")
        finally:
            self._client.close()

    def __enter__(self) -> StatusFeed:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
