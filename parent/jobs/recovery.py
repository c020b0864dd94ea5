"""What a restarted parent does with the jobs a previous parent left running.

Job processes do not die with their parent. On start, before it takes new submissions, the
parent reconciles its store: each job that was ``DISPATCHED``/``RUNNING`` is re-adopted if its
process is still alive — the same pid *and* create time, since pids are reused — and says hello
again with its job secret within ``adopt_window`` seconds; otherwise it ends
``FINISHED:ABNORMAL`` ("lost while the parent was down"), after whatever is left of it is killed.
A re-adopted process is not this parent's child: its exit is seen through a pidfd (which works
for any process), and its exit status is unknown unless it reported a final status first.
"""

from __future__ import annotations

import logging

import psutil


log = logging.getLogger(__name__)


def find_live_process(pid: int | None, create_time: float | None) -> bool:
    """Whether the process ``pid`` that a job ran as is still alive (not a zombie, not a reused pid)."""
    if not pid or create_time is None:
        return False
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - create_time) < 0.05
    except psutil.Error:
        return False
