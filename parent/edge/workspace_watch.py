"""The parent's hold on its workspace: the lock file that keeps a second parent off it
(`lock_workspace`), parent.json that tells the CLI where the parent listens, and `WorkspaceWatch`,
which puts back what was deleted from the workspace while the parent runs: parent.json, the socket
dir with the ipc sockets in it, the lock file.

Without them the parent serves on but nobody reaches it: the CLI finds no parent.json and says
"no parent is running", or finds no socket and cannot connect, and with the lock file gone a
second parent could start on the workspace. The parent's housekeeping calls
`WorkspaceWatch.check` every tick; when all is well that is a few ``stat`` calls.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Sequence

import psutil
import zmq

from flrunner.errors import FlrunnerError
from flrunner.util.fsutil import lock_exclusive
from flrunner.workspace import Workspace, workspace_error
from parent.edge.endpoint import RouterEndpoint
from parent.errors import WorkspaceBusy

log = logging.getLogger("parent")


def lock_path(ws: Workspace) -> str:
    """The workspace's lock file, held by the parent that serves it."""
    return os.path.join(ws.get_root_dir(), "parent.lock")


def lock_workspace(ws: Workspace) -> int:
    """Lock the workspace for this parent; the open lock file (closing it releases the lock).

    Raises:
        WorkspaceBusy: another parent holds it.
        WorkspaceError: the lock file cannot be opened (the message names it).
    """
    path = lock_path(ws)
    try:
        return lock_exclusive(path)
    except BlockingIOError:
        other = read_parent_info(ws).get("pid", "?")
        raise WorkspaceBusy(f"another parent (pid {other}) is running on workspace {ws.get_root_dir()}") from None
    except OSError as exc:
        raise workspace_error(ws.get_root_dir(), "open", path, exc) from None


def read_parent_info(ws: Workspace) -> dict:
    """The workspace's parent.json, or {} if there is none (or it is unreadable)."""
    try:
        with open(ws.get_parent_info_path()) as f:
            info = json.load(f)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def write_parent_info(path: str, info: dict) -> None:
    """Write parent.json atomically: a reader sees the old file or the new one, never half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def _identity(path: str | int) -> tuple[int, int, int] | None:
    """(device, inode, mtime) of a path or open fd; None if the path does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _is_running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class WorkspaceWatch:
    """Notices the parent's files deleted (or replaced) from its workspace, and recreates them.

    Args:
        ws: the parent's workspace.
        publish: writes this parent's parent.json (atomically).
        lock_fd: the open, locked parent.lock.
        sockets: the endpoints to re-bind if their ipc socket file is gone (tcp ones are skipped).
    """

    def __init__(self, ws: Workspace, publish: Callable[[], None], lock_fd: int,
                 sockets: Sequence[RouterEndpoint]) -> None:
        self.ws = ws
        self.publish = publish
        self._lock_fds = [lock_fd]
        self._sockets = [(e, e.endpoint[len("ipc://"):]) for e in sockets if e.endpoint.startswith("ipc://")]
        self._socket_ids = {path: _identity(path) for _, path in self._sockets}
        self._info_id = _identity(ws.get_parent_info_path())
        self._reported: set[str] = set()  # errors already logged, so a lasting one is logged once

    def check(self) -> None:
        """Recreate whatever is missing; log a WARNING for each repair, an ERROR (once) for what cannot be."""
        if self._guarded("parent.json", self._check_info):
            self._guarded("parent.lock", self._check_lock)
            self._guarded("the socket dir", self._check_sockets)

    def close(self) -> None:
        """Release the lock files taken again after the first was deleted."""
        for fd in self._lock_fds[1:]:
            os.close(fd)
        del self._lock_fds[1:]

    def _guarded(self, what: str, fn: Callable[[], bool]) -> bool:
        try:
            ok = fn()
        except (OSError, FlrunnerError, zmq.ZMQError) as exc:
            self._error(what, "workspace %s: cannot put back %s: %s; trying again every housekeeping tick",
                        self.ws.get_root_dir(), what, exc)
            return False
        if ok:
            self._reported.discard(what)
        return ok

    def _error(self, key: str, msg: str, *args: object) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.error(msg, *args)

    def _republish(self) -> None:
        self.publish()
        self._info_id = _identity(self.ws.get_parent_info_path())

    def _check_info(self) -> bool:
        """parent.json: recreate it if gone; False if it now names another running parent (touch nothing then)."""
        path = self.ws.get_parent_info_path()
        now = _identity(path)
        if now is not None and now == self._info_id:
            return True
        if now is None:
            self._republish()
            log.warning("workspace %s: %s was deleted while this parent (pid %d) runs; recreated it",
                        self.ws.get_root_dir(), path, os.getpid())
            return True
        try:
            with open(path) as f:
                pid = json.load(f).get("pid")
        except (OSError, ValueError, AttributeError):
            pid = None
        if pid == os.getpid():  # rewritten with the same content (e.g. restored from a copy)
            self._info_id = now
            return True
        if _is_running(pid):
            self._error("parent.json", "workspace %s: %s names another running parent (pid %s), not this one "
                        "(pid %d); left as is, so admin commands reach that parent. Two parents serve this "
                        "workspace: stop one", self.ws.get_root_dir(), path, pid, os.getpid())
            return False
        self._republish()
        log.warning("workspace %s: %s was replaced by one naming %s while this parent (pid %d) runs; "
                    "rewrote it", self.ws.get_root_dir(), path,
                    f"pid {pid}, which is not running" if pid is not None else "no parent", os.getpid())
        return True

    def _check_lock(self) -> bool:
        """parent.lock: if the file we hold was deleted or replaced, lock a new one, so no second parent starts."""
        path = lock_path(self.ws)
        held = _identity(self._lock_fds[-1])
        now = _identity(path)
        if now is not None and held is not None and now[:2] == held[:2]:
            return True
        try:
            fd = lock_exclusive(path)
        except BlockingIOError:
            self._error("parent.lock", "workspace %s: %s was replaced, and another process holds the new one",
                        self.ws.get_root_dir(), path)
            return False
        self._lock_fds.append(fd)
        log.warning("workspace %s: %s was deleted while this parent (pid %d) runs; recreated and locked it again",
                    self.ws.get_root_dir(), path, os.getpid())
        return True

    def _check_sockets(self) -> bool:
        gone = []
        for endpoint, path in self._sockets:
            now, bound = _identity(path), self._socket_ids[path]
            if now is None or bound is None or now[:2] != bound[:2]:
                gone.append((endpoint, path))
        if not gone:
            return True
        sock_dir = self.ws.get_socket_dir()
        dir_gone = not os.path.isdir(sock_dir)
        self.ws.ensure_socket_dir()
        for endpoint, path in gone:
            # Bound again WITHOUT unbinding first: zmq_unbind drops the connections accepted through
            # that endpoint, losing what they had in flight and making every job process say hello
            # again. The old listener keeps its (now unreachable) file descriptor; its peers work on.
            endpoint.sock.bind(endpoint.endpoint)
            self._socket_ids[path] = _identity(path)
        names = " and ".join(f"the {e.name} socket {p}" for e, p in gone)
        if dir_gone:
            log.warning("workspace %s: the socket dir %s was deleted while the parent runs; recreated it (0700) and "
                        "bound %s again (connected peers keep their connections)", self.ws.get_root_dir(), sock_dir,
                        names)
        else:
            log.warning("workspace %s: %s deleted while the parent runs; bound again (connected peers keep their "
                        "connections)", self.ws.get_root_dir(), names + (" were" if len(gone) > 1 else " was"))
        return True
