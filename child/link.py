"""The job process's link to its parent: one DEALER socket owned by one I/O thread.

Any thread may call `ParentLink.request`; the I/O thread sends, matches replies to requests by
id, hands pushes from the parent (``abort``, ``clients_changed``) to a callback, heartbeats, and
notices when the parent has been silent too long. Keeping the socket on one thread is what
ZeroMQ requires; the wake-up pipe lets callers hand it work without polling.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import zmq

from flrunner.errors import FrameError, RequestTimeout, error_for_rc
from flrunner.protocol import Rc
from flrunner.wakeup import WakePipe
from flrunner.wire import Message, decode, encode, next_id

log = logging.getLogger(__name__)


class _Pending:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Message | None = None


class ParentLink:
    """Request/reply and pushes between a job process and its parent.

    Args:
        endpoint: the parent's jobs socket.
        on_push: called on the I/O thread with each message the parent pushes; must not block.
        heartbeat_interval: seconds between heartbeats.
        parent_loss_timeout: silence after which ``on_parent_lost`` is called (once).
        on_parent_lost: called on the I/O thread when the parent is considered gone.
    """

    def __init__(self, endpoint: str, on_push: Callable[[Message], None], heartbeat_interval: float = 2.0,
                 parent_loss_timeout: float = 20.0, on_parent_lost: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        self.on_push = on_push
        self.heartbeat_interval = heartbeat_interval
        self.parent_loss_timeout = parent_loss_timeout
        self.on_parent_lost = on_parent_lost
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[int, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._wake = WakePipe()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="parent-link", daemon=True)
        self.last_heard = time.monotonic()
        self.parent_lost = False
        self.authenticated = False
        self.bad_frames = 0

    def start(self) -> None:
        self._thread.start()

    def request(self, op: str, body: dict | None = None, timeout: float = 30.0, frames: list | None = None) -> Message:
        """Send and wait for the parent's reply.

        Raises:
            RequestTimeout: no reply within ``timeout``.
            FlrunnerError: the parent answered with an error code (subclass chosen by it).
        """
        mid = next_id()
        pending = _Pending()
        with self._pending_lock:
            self._pending[mid] = pending
        try:
            self._outbox.put(encode(Message(op, body or {}, id=mid, frames=list(frames or []))))
            self._wake.wake()
            if not pending.event.wait(timeout):
                raise RequestTimeout(f"no reply to '{op}' from the parent within {timeout:g}s")
        finally:
            with self._pending_lock:
                self._pending.pop(mid, None)
        reply = pending.reply
        assert reply is not None
        if reply.rc != Rc.OK:
            raise error_for_rc(reply.rc or Rc.ERROR, str(reply.body.get("reason", reply.rc)))
        return reply

    def close(self, timeout: float = 2.0) -> None:
        self._closing.set()
        self._wake.wake()
        self._thread.join(timeout)

    # --- the I/O thread ------------------------------------------------------------------------
    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)  # let a last message out when closing
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake.fileno(), zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_interval
        try:
            while not self._closing.is_set():
                timeout = max(0.0, next_beat - time.monotonic())
                for what, _ in poller.poll(timeout * 1000):
                    if what == self._wake.fileno():
                        self._wake.drain()
                    else:
                        self._receive(sock)
                self._send_outbox(sock)
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + self.heartbeat_interval
                    if self.authenticated:
                        sock.send_multipart(encode(Message("heartbeat", {}, id=next_id())), copy=False)
                    if now - self.last_heard > self.parent_loss_timeout and not self.parent_lost:
                        self.parent_lost = True
                        log.error("no word from the parent for %.1fs", now - self.last_heard)
                        if self.on_parent_lost is not None:
                            self.on_parent_lost()
            self._send_outbox(sock)
        finally:
            sock.close()
            ctx.term()
            self._wake.close()

    def _send_outbox(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = self._outbox.get_nowait()
            except queue.Empty:
                return
            sock.send_multipart(frames, copy=False)

    def _receive(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.last_heard = time.monotonic()
            try:
                msg = decode(frames)
            except FrameError as exc:
                self.bad_frames += 1
                log.warning("dropped an undecodable message from the parent: %s", exc)
                continue
            if msg.is_reply:
                with self._pending_lock:
                    pending = self._pending.get(msg.re)  # type: ignore[arg-type]
                if pending is not None:
                    pending.reply = msg
                    pending.event.set()
                continue
            try:
                self.on_push(msg)
            except Exception:
                log.exception("handling '%s' from the parent failed", msg.op)
