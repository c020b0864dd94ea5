"""RunSnapshot: the persisted state of a job's components (NVIDIA FLARE's `RunSnapshot`)."""

from __future__ import annotations

import time
from typing import Any

import msgpack

from flrunner.errors import EncodeError
from flrunner.transport.wire import find_unencodable
from flrunner.util.fsutil import atomic_write

_SNAPSHOT_LIMIT = 1 << 30


def _pack_state(value: Any) -> bytes:
    # A snapshot is this job's own file, not wire input: big lists and int keys are fine here,
    # so it is packed without the wire's item and key limits.
    try:
        return msgpack.packb(value, use_bin_type=True)
    except Exception as exc:
        bad = find_unencodable(value)
        raise EncodeError(f"cannot persist component state{f' at {bad!r}' if bad else ''}: {exc}") from None


def _unpack_state(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


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
        data = _pack_state({"job_id": self.job_id, "completed": self.completed, "time": self.time,
                            "states": self.component_states})
        atomic_write(path, data)

    @classmethod
    def load(cls, path: str) -> RunSnapshot | None:
        """The snapshot at ``path``, or None if there is none."""
        try:
            with open(path, "rb") as f:
                raw = f.read(_SNAPSHOT_LIMIT + 1)
        except FileNotFoundError:
            return None
        if len(raw) > _SNAPSHOT_LIMIT:
            raise ValueError(f"snapshot {path} is larger than {_SNAPSHOT_LIMIT} bytes")
        d = _unpack_state(raw)
        snap = cls(d["job_id"])
        snap.completed = bool(d.get("completed"))
        snap.time = d.get("time")
        snap.component_states = dict(d.get("states") or {})
        return snap
