"""Blocking work off the parent's loop, in lanes that do not wait on each other.

The work runs on a worker thread; its outcome is handed back to the loop, which runs the
completion callback, so the loop never waits on a disk and the domain is only touched from it.
The parent keeps two lanes: submissions (reading and copying job folders, which can take many
seconds for a large one) and the killing of what ended jobs left behind (which a crash-restart
waits for). One lane never queues behind the other: a large folder being copied delays neither
a restart nor a kill.
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from flrunner.transport.wakeup import WakePipe

log = logging.getLogger(__name__)

#: Called on the loop with the work's result, or the exception it raised.
Done = Callable[[Any, "BaseException | None"], None]


class Offload:
    """One lane of workers.

    Args:
        wake: wakes the loop when an outcome is ready (`drain` then runs its callback).
        workers: threads of this lane.
        name: the threads' name prefix (``ps -T``, stack dumps).
    """

    def __init__(self, wake: WakePipe, workers: int = 1, name: str = "offload") -> None:
        self._wake = wake
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._done: queue.SimpleQueue = queue.SimpleQueue()

    def run(self, work: Callable[[], Any], done: Done) -> None:
        """Run ``work()`` on a worker; ``done`` is called from `drain` on the loop."""
        def task() -> None:
            try:
                outcome = (work(), None)
            except BaseException as exc:  # handed to the loop, which decides what it means
                outcome = (None, exc)
            self._done.put((done, outcome))
            self._wake.wake()

        self._pool.submit(task)

    def drain(self) -> None:
        """Run the completions that are ready (on the loop)."""
        while True:
            try:
                done, (result, exc) = self._done.get_nowait()
            except queue.Empty:
                return
            try:
                done(result, exc)
            except Exception:
                log.exception("completing offloaded work failed")

    def close(self) -> None:
        """Finish the queued work (e.g. killing a job's stragglers at shutdown), then stop."""
        self._pool.shutdown(wait=True)
