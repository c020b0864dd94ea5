"""RunSnapshot: the persisted state of a job's components (NVIDIA FLARE's `RunSnapshot`)."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from .wire import pack, unpack

_SNAPSHOT_LIMIT = 1 << 30


class RunSnapshot:
    """Component states of one job, keyed by component id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.component_states: dict[str, Any] = {}
        self.completed = False
        self.time: float | None = None

    def set_component_snapshot(self, component_id: str, component_state: Any) -> None:
        self.component_states[component_id] = component_state

    def get_component_snapshot(self, component_id: str) -> Any:
        return self.component_states.get(component_id)

    def get_component_snapshots(self) -> dict[str, Any]:
        return dict(self.component_states)

    def set_component_snapshots(self, states: dict[str, Any]) -> None:
        self.component_states = dict(states)

    def save(self, path: str) -> None:
        """Write atomically: a temp file in the same folder, fsync, rename, fsync the folder."""
        self.time = time.time()
        data = pack({"job_id": self.job_id, "completed": self.completed, "time": self.time,
                     "states": self.component_states}, "component state")
        folder = os.path.dirname(path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".snapshot-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @classmethod
    def load(cls, path: str) -> RunSnapshot | None:
        """The snapshot at ``path``, or None if there is none."""
        try:
            with open(path, "rb") as f:
                raw = f.read(_SNAPSHOT_LIMIT + 1)
        except FileNotFoundError:
            return None
        d = unpack(raw, _SNAPSHOT_LIMIT)
        snap = cls(d["job_id"])
        snap.completed = bool(d.get("completed"))
        snap.time = d.get("time")
        snap.component_states = dict(d.get("states") or {})
        return snap
