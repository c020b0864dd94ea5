"""The parent's event loop: one thread, one `zmq.Poller` over the sockets, the job processes'
exit file descriptors and a wake-up pipe; timers on a clock that leaves out the parent's own
stalls.

The loop never blocks on a peer: it sleeps in the poll only as long as the next timer allows,
serves each ready socket in a bounded batch (`RouterEndpoint.process_ready`), calls back the
watcher of each ready file descriptor, and runs the timers that are due. Signals (SIGTERM,
SIGINT) and work finished off the loop (`parent.loop.offload`) arrive as a byte on the wake-up
pipe, so they are seen at once. A callback that raises is logged and the loop goes on: a bug in
one must not stop the parent and orphan its jobs.

Stopping: `EventLoop.stop` (from any thread, or a signal) asks the work to wind down
(`Work.shutdown`, once); a second request, or ``force``, makes it hurry (`Work.kill_all`, every
turn); the loop returns once the work is no longer busy.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable, Protocol

import zmq

from flrunner.transport.wakeup import WakePipe
from parent.loop.offload import Offload
from parent.loop.timers import StallClock, Timers

log = logging.getLogger("parent")


class FdWatch(Protocol):
    """Watching file descriptors on the loop."""

    def watch_fd(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop whenever ``fd`` is readable."""

    def unwatch_fd(self, fd: int) -> None:
        """Stop watching ``fd``."""


class Socket(Protocol):
    """A socket the loop serves."""

    sock: zmq.Socket

    def process_ready(self) -> None:
        """Serve what is waiting on the socket (a bounded batch)."""


class Work(Protocol):
    """What the loop runs for: told to wind down, and asked whether it still has work."""

    @property
    def busy(self) -> bool:
        """Something still runs that a stop must wait for."""

    def shutdown(self, reason: str) -> None:
        """Wind down gracefully (called once, on the loop)."""

    def kill_all(self) -> None:
        """End everything at once (called each turn while busy, once the stop is forced)."""


class EventLoop:
    """The loop. Build it, `serve` sockets, make `lane`s, then `run`; `close` when done.

    Args:
        clock: the loop's clock; the loop tells it how long it sleeps, so a longer gap is a stall.
        timers: the timers the loop runs.
        max_sleep: the longest the loop sleeps in one poll.
    """

    def __init__(self, clock: StallClock, timers: Timers, max_sleep: float) -> None:
        self.clock = clock
        self.timers = timers
        self.max_sleep = max_sleep
        self.poller = zmq.Poller()
        self._wake = WakePipe()
        self.poller.register(self._wake.fileno(), zmq.POLLIN)
        self._sockets: dict[zmq.Socket, Socket] = {}
        self._fd_callbacks: dict[int, Callable[[], None]] = {}
        self._lanes: list[Offload] = []
        self._old_signals: dict[int, Any] = {}
        self._stop_reason: str | None = None
        self._force = False

    # --- what the loop watches ---------------------------------------------------------------------
    def serve(self, socket: Socket) -> None:
        """Serve ``socket`` whenever it has messages."""
        self._sockets[socket.sock] = socket
        self.poller.register(socket.sock, zmq.POLLIN)

    def lane(self, workers: int, name: str) -> Offload:
        """A lane of ``workers`` threads for blocking work; its completions run on the loop."""
        lane = Offload(self._wake, workers=workers, name=name)
        self._lanes.append(lane)
        return lane

    def watch_fd(self, fd: int, callback: Callable[[], None]) -> None:
        self._fd_callbacks[fd] = callback
        self.poller.register(fd, zmq.POLLIN)

    def unwatch_fd(self, fd: int) -> None:
        if self._fd_callbacks.pop(fd, None) is not None:
            self.poller.unregister(fd)

    # --- stopping ----------------------------------------------------------------------------------
    def install_signals(self) -> None:
        """SIGTERM and SIGINT stop the loop gracefully, a second one forcibly (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_signals[sig] = signal.signal(sig, self._on_signal)
        self._old_signals[-1] = signal.set_wakeup_fd(self._wake.write_fd)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stop_reason is None:
            self._stop_reason = f"{signal.Signals(signum).name} received"
        else:
            self._force = True

    def stop(self, reason: str = "stop requested", force: bool = False) -> None:
        """Ask the loop to stop (gracefully unless ``force``); safe from any thread."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if force:
            self._force = True
        self._wake.wake()

    # --- the loop ----------------------------------------------------------------------------------
    def run(self, work: Work) -> None:
        """Serve until a stop was asked for and ``work`` is no longer busy."""
        stopping = False
        stalled = self.clock.stalled
        while True:
            if self._stop_reason is not None and not stopping:
                stopping = True
                work.shutdown(self._stop_reason)
            if self._force and work.busy:
                work.kill_all()
            if stopping and not work.busy:
                return
            timeout = self.timers.timeout(cap=self.max_sleep)
            self.clock.sleeping(timeout)
            ready = self.poller.poll(int(timeout * 1000))  # what pyzmq does with a float
            self.clock()  # a stall that struck during the poll is taken out before anything reads the clock
            if self.clock.stalled > stalled + 0.01:
                log.warning("the parent was stalled for %.1fs (paused, frozen, or blocked); peers are not held "
                            "responsible: their liveness windows and every timer are extended by as much",
                            self.clock.stalled - stalled)
                stalled = self.clock.stalled
            # Sockets first, then the work finished off the loop, then the watched fds (exits).
            woken = False
            for what, _ in ready:
                socket = self._sockets.get(what)
                if socket is not None:
                    socket.process_ready()
                elif what == self._wake.fileno():
                    woken = True
            if woken:
                self._wake.drain()
                for lane in self._lanes:
                    lane.drain()
            for what, _ in ready:
                callback = self._fd_callbacks.get(what)
                if callback is not None:
                    _guarded(callback)
            self.timers.run_due(_guarded)

    def close(self) -> None:
        """Give the signals back, finish the lanes' queued work, close the wake-up pipe."""
        for sig, old in self._old_signals.items():
            if sig == -1:
                signal.set_wakeup_fd(old)
            else:
                signal.signal(sig, old)
        self._old_signals.clear()
        for lane in self._lanes:
            lane.close()
        self._lanes.clear()
        self._wake.close()


def _guarded(fn: Callable[[], object]) -> None:
    """Run a loop callback; a bug in one must not stop the parent (and orphan its jobs)."""
    try:
        fn()
    except Exception:
        log.exception("a callback of the parent's loop failed")
