"""Job run statuses and the table of allowed transitions.

The values are NVIDIA FLARE's `RunStatus` strings, stored verbatim in the job store and sent on the
wire. Transitions only move forward, and nothing leaves a ``FINISHED:*`` status.
"""

from __future__ import annotations

import enum
import json
from typing import Any

_FINAL_PREFIX = "FINISHED:"


def is_final(status: str) -> bool:
    """Whether a status (as stored and sent: a string) is one a job ends in (``FINISHED:*``)."""
    return status.startswith(_FINAL_PREFIX)


class RunStatus(str, enum.Enum):
    """The status of a job, as stored and reported."""

    SUBMITTED = "SUBMITTED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    FINISHED_COMPLETED = "FINISHED:COMPLETED"
    FINISHED_ABORTED = "FINISHED:ABORTED"
    FINISHED_EXECUTION_EXCEPTION = "FINISHED:EXECUTION_EXCEPTION"
    FINISHED_ABNORMAL = "FINISHED:ABNORMAL"
    FINISHED_CAN_NOT_SCHEDULE = "FINISHED:CAN_NOT_SCHEDULE"
    FINISHED_FAILED_TO_RUN = "FINISHED:FAILED_TO_RUN"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return is_final(self.value)


_FINAL_AFTER_LAUNCH = {
    RunStatus.FINISHED_COMPLETED,
    RunStatus.FINISHED_ABORTED,
    RunStatus.FINISHED_EXECUTION_EXCEPTION,
    RunStatus.FINISHED_ABNORMAL,
}

#: status -> the statuses it may move to.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.SUBMITTED: frozenset({RunStatus.DISPATCHED, RunStatus.FINISHED_ABORTED,
                                    RunStatus.FINISHED_CAN_NOT_SCHEDULE, RunStatus.FINISHED_FAILED_TO_RUN}),
    RunStatus.DISPATCHED: frozenset({RunStatus.RUNNING, RunStatus.FINISHED_FAILED_TO_RUN} | _FINAL_AFTER_LAUNCH),
    RunStatus.RUNNING: frozenset(_FINAL_AFTER_LAUNCH),
    **{s: frozenset() for s in RunStatus if s.is_final},
}

#: What a job process may report about itself.
CHILD_REPORTABLE = frozenset({RunStatus.RUNNING, RunStatus.FINISHED_COMPLETED, RunStatus.FINISHED_ABORTED,
                              RunStatus.FINISHED_EXECUTION_EXCEPTION})


def can_move(current: RunStatus, wanted: RunStatus) -> bool:
    return wanted in TRANSITIONS[current]


def status_rank(status: str) -> int:
    """Position of a status in a job's life (0 queued … 3 finished), for ordering reports."""
    if is_final(status):
        return 3
    return {"SUBMITTED": 0, "DISPATCHED": 1, "RUNNING": 2}.get(status, 0)


#: Largest progress detail a job may report (as JSON), and longest execution error kept (its tail).
MAX_PROGRESS_BYTES = 16 * 1024
MAX_ERROR_CHARS = 60 * 1024


def progress_problem(progress: Any) -> str | None:
    """What is wrong with a progress detail, or None: a string or dict, JSON-compatible, small."""
    if not isinstance(progress, (str, dict)):
        return f"must be a string or a dict, got {type(progress).__name__}"
    try:
        size = len(json.dumps(progress))
    except (TypeError, ValueError) as exc:
        return f"must be JSON-compatible: {exc}"
    return f"is {size} bytes as JSON, over the limit of {MAX_PROGRESS_BYTES}" if size > MAX_PROGRESS_BYTES else None


def clip_error(error: str | None) -> str | None:
    """An execution error cut to its last `MAX_ERROR_CHARS` characters (the end of a traceback)."""
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    return "…" + error[-MAX_ERROR_CHARS:]
