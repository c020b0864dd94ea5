"""Workspace: where a parent keeps its store, sockets, logs, and each job's run folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Linux limits an AF_UNIX path to 108 bytes including the NUL.
_MAX_IPC_PATH = 100


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
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        sock = Path(self.get_socket_dir())
        sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock.mkdir(mode=0o700, exist_ok=True)
        os.chmod(sock, 0o700)
