"""Workspace: where a parent keeps its store, sockets, logs, and each job's run folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Iterator

from flrunner.errors import WorkspaceError

#: Linux limits an AF_UNIX path to 108 bytes including the NUL.
_MAX_IPC_PATH = 100

#: Linux's limits on a whole path and on one of its components (bytes).
PATH_MAX = 4096
NAME_MAX = 255


class Workspace:
    """The directory layout of one parent (NVIDIA FLARE's `Workspace` method names).

    ::

        <root>/jobs.db             job store (SQLite, WAL)
        <root>/parent.json         the running parent: pid, endpoints
        <root>/parent.log          the parent's log
        <root>/jobs/<job_id>/      a job's run dir: job/ (the submitted folder), app_server/, log.txt, snapshot
    """

    def __init__(self, root: str | os.PathLike, app_folder: str = "app_server") -> None:
        self.root = Path(root).absolute()
        #: The app's folder name inside a run dir (``app_<site name>`` on a site).
        self.app_folder = app_folder

    def get_root_dir(self) -> str:
        return str(self.root)

    def get_jobs_dir(self) -> str:
        """The folder that holds every job's run dir."""
        return str(self.root / "jobs")

    def get_run_dir(self, job_id: str) -> str:
        return str(self.root / "jobs" / job_id)

    def get_app_dir(self, job_id: str) -> str:
        """The server app of a job, as copied at submit."""
        return os.path.join(self.get_run_dir(job_id), self.app_folder)

    def get_app_config_dir(self, job_id: str) -> str:
        return os.path.join(self.get_app_dir(job_id), "config")

    def get_app_custom_dir(self, job_id: str) -> str:
        return os.path.join(self.get_app_dir(job_id), "custom")

    def get_job_folder(self, job_id: str) -> str:
        """The whole submitted job folder, as copied at submit (source of site bundles)."""
        return os.path.join(self.get_run_dir(job_id), "job")

    def get_app_log_file_path(self, job_id: str) -> str:
        return os.path.join(self.get_run_dir(job_id), "log.txt")

    def get_snapshot_path(self, job_id: str) -> str:
        return os.path.join(self.get_run_dir(job_id), "snapshot.msgpack")

    def get_parent_log_path(self) -> str:
        return str(self.root / "parent.log")

    def get_job_store_path(self) -> str:
        return str(self.root / "jobs.db")

    def get_parent_info_path(self) -> str:
        return str(self.root / "parent.json")

    def get_socket_dir(self) -> str:
        """A 0700 directory for the parent's ipc sockets.

        Inside the workspace when the socket paths fit the kernel's limit; otherwise a short
        per-workspace directory under the system temp dir (deep workspaces are common in tests).
        """
        local = self.root / "sock"
        if len(str(local / "admin.sock")) <= _MAX_IPC_PATH:
            return str(local)
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return os.path.join("/tmp", f"flrunner-{os.getuid()}", digest)

    def ensure(self) -> None:
        """Create the workspace's folders (and the socket dir) if missing.

        Raises:
            WorkspaceError: they cannot be created; the message names the path and why (not a
                directory, read-only, a path too long, ...).
        """
        jobs = self.root / "jobs"
        with self.os_errors("create", jobs):
            jobs.mkdir(parents=True, exist_ok=True)
        self.ensure_socket_dir()

    def ensure_socket_dir(self) -> str:
        """Create the 0700 socket dir if missing (also while a parent runs, if it was deleted); return it.

        Raises:
            WorkspaceError: it cannot be created, or the path is taken by something that is not a
                directory of this user (in the shared /tmp, another user could have planted it).
        """
        sock = Path(self.get_socket_dir())
        with self.os_errors("create", sock):
            sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            sock.mkdir(mode=0o700, exist_ok=True)
        for path in (sock, sock.parent) if sock.parent != self.root else (sock,):
            with self.os_errors("inspect", path):
                st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                raise WorkspaceError(f"workspace {self.get_root_dir()}: socket dir {path} is not a directory owned "
                                     f"by uid {os.getuid()}; remove it")
        if stat.S_IMODE(os.lstat(sock).st_mode) != 0o700:
            with self.os_errors("set the mode of", sock):
                os.chmod(sock, 0o700)
        return str(sock)

    @contextlib.contextmanager
    def os_errors(self, action: str, path: str | os.PathLike) -> Iterator[None]:
        """Turn an `OSError` raised inside into a `WorkspaceError` naming ``path`` and what is wrong.

        Args:
            action: what was being done to ``path`` ("create", "open", ...), for the message.
            path: the file or folder acted on.
        """
        try:
            yield
        except OSError as exc:
            raise workspace_error(self.get_root_dir(), action, str(path), exc) from None


def workspace_error(root: str, action: str, path: str, exc: OSError) -> WorkspaceError:
    """A one-line `WorkspaceError` for an `OSError` met on ``path`` inside workspace ``root``."""
    if exc.errno == errno.ENAMETOOLONG:
        long = next((c for c in Path(path).parts if len(os.fsencode(c)) > NAME_MAX), None)
        if long is not None:
            return WorkspaceError(f"workspace path {_short(root)} is too long: its component '{_short(long, 40)}' is "
                                  f"{len(os.fsencode(long))} bytes, over the limit of {NAME_MAX} (NAME_MAX)")
        if len(os.fsencode(root)) > PATH_MAX:
            return WorkspaceError(f"workspace path {_short(root)} is too long: {len(os.fsencode(root))} bytes, over "
                                  f"the limit of {PATH_MAX} (PATH_MAX)")
        return WorkspaceError(f"workspace {_short(root)}: the path {_short(path)} is too long: "
                              f"{len(os.fsencode(path))} bytes, over the limit of {PATH_MAX} (PATH_MAX)")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _first_non_directory(path)
        if blocker == root:
            return WorkspaceError(f"workspace {_short(root)} is a file, not a directory")
        if blocker is not None:
            return WorkspaceError(f"workspace {_short(root)}: {_short(blocker)} is a file, not a directory")
    reason = exc.strerror or str(exc)
    return WorkspaceError(f"workspace {_short(root)}: cannot {action} {_short(path)}: {reason[:1].lower()}{reason[1:]}")


def _first_non_directory(path: str) -> str | None:
    """The first of ``path`` and its ancestors (outermost first) that exists and is not a directory."""
    p = Path(path)
    for candidate in [*reversed(p.parents), p]:
        try:
            if not stat.S_ISDIR(os.stat(candidate).st_mode):
                return str(candidate)
        except OSError:
            return None
    return None


def _short(text: str, keep: int = 120) -> str:
    """``text``, with its middle elided if longer than ``keep`` characters (a 5,000-byte path in one line)."""
    if len(text) <= keep:
        return text
    return f"{text[:keep // 2]}…{text[-keep // 2:]}"
