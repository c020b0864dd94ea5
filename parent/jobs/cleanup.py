"""Finding and ending what a job left behind.

A job's processes are its process group, plus anything that left the group (``setsid``) but
still carries the job's ``FLRUNNER_JOB_ID`` in its environment (inherited from the job process).
"""

from __future__ import annotations

import logging
import os
import signal

import psutil

log = logging.getLogger(__name__)


def job_processes(job_id: str, pgid: int | None = None) -> list[psutil.Process]:
    """Live processes of a job: members of its group, and any process carrying its job id."""
    found = []
    me = os.getpid()
    for p in psutil.process_iter(["pid", "status"]):
        if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if (pgid is not None and os.getpgid(p.pid) == pgid) or p.environ().get("FLRUNNER_JOB_ID") == job_id:
                found.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError, OSError):
            continue
    return found


def kill_stragglers(job_id: str, pgid: int | None = None) -> list[int]:
    """SIGKILL every process `job_processes` finds; the pids it killed.

    The group is only signalled through its members: a bare ``killpg`` on a group id whose
    processes are all gone could hit an unrelated session that reused the number.
    """
    killed = []
    for p in job_processes(job_id, pgid):
        try:
            p.send_signal(signal.SIGKILL)
            killed.append(p.pid)
        except psutil.Error:
            continue
    if killed:
        log.warning("job %s: killed %d leftover process(es): %s", job_id, len(killed), killed)
    return killed
