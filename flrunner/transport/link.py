"""A link to the parent: one DEALER socket owned by one I/O thread (job processes and sites).

Any thread may call `Link.request` (one reply), `Link.call` (several replies to one request,
e.g. one per site of an aux request), `Link.send` or `Link.reply`; the I/O thread sends,
matches replies to requests by id, hands pushes from the parent to a callback, heartbeats, and
notices when the parent has been silent too long. Keeping the socket on one thread is what
ZeroMQ requires; the wake-up pipe lets callers hand it work without polling.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from flrunner.errors import FrameError, Rc, RequestTimeout, error_for_rc
from flrunner.transport.wakeup import WakePipe
from flrunner.transport.wire import Message, decode, encode, next_id

log = logging.getLogger(__name__)


#: How often a wait that can be cancelled looks at its cancel condition.
CANCEL_CHECK = 0.05


class Call:
    """An outstanding request: collects its replies until the caller is done with it."""

    __slots__ = ("mid", "op", "replies", "_cond")

    def __init__(self, mid: int, op: str) -> None:
        self.mid = mid
        self.op = op
        self.replies: list[Message] = []
        self._cond = threading.Condition()

    def _add(self, msg: Message) -> None:
        with self._cond:
            self.replies.append(msg)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float | None, cancelled: Callable[[], bool] | None = None) -> bool:
        """Block until ``count`` replies arrived or ``timeout`` passed; True if they all arrived.

        ``cancelled`` (e.g. a job's abort signal) is checked every `CANCEL_CHECK` seconds and ends
        the wait early.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self.replies) < count:
                if cancelled is not None and cancelled():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if cancelled is not None:
                    left = CANCEL_CHECK if left is None else min(left, CANCEL_CHECK)
                self._cond.wait(left)
            return True


class Link:
    """Request/reply and pushes between a job process (or a site) and the parent.

    Args:
        endpoint: the parent's socket.
        on_push: called on the I/O thread with each message the parent pushes; must not block.
        heartbeat_interval: seconds between heartbeats (sent once `authenticated` is set).
        parent_loss_timeout: silence after which ``on_parent_lost`` is called (once).
        on_parent_lost: called on the I/O thread when the parent is considered gone.
        heartbeat: makes each heartbeat message (a site's carries its token); None: no heartbeats.
        configure: called with the DEALER socket before it connects (e.g. to set CURVE keys).
        on_heartbeat_refused: called on the I/O thread when the parent answers a heartbeat with an
            error (it no longer knows this peer: it restarted, or expired the session); not for
            ``RATE_LIMITED``, which only means the peer sends too much.
        immediate: queue messages only while connected (ZMQ_IMMEDIATE); while the parent is
            unreachable they are dropped and their requests time out, instead of piling up and
            all arriving at once when it is back (what a site wants; a job process sends its
            hello before the connection completes, so it keeps the default).
        on_reconnected: called on the I/O thread when the connection to the parent is made again
            after it was lost (a restarted parent bound the endpoint again, or a network path came
            back). The parent then knows this peer under a new routing identity: whatever
            authenticated the old connection must be done again. Seen through a socket monitor,
            so it comes within ZeroMQ's reconnect interval, not at the next heartbeat.
        reconnect_interval: seconds between ZeroMQ's attempts to reconnect (ZMQ_RECONNECT_IVL).
    """

    def __init__(self, endpoint: str, on_push: Callable[[Message], None], heartbeat_interval: float = 2.0,
                 parent_loss_timeout: float = 20.0, on_parent_lost: Callable[[], None] | None = None,
                 heartbeat: Callable[[], Message] | None = None, immediate: bool = False,
                 on_heartbeat_refused: Callable[[Message], None] | None = None,
                 configure: Callable[[zmq.Socket], None] | None = None,
                 on_reconnected: Callable[[], None] | None = None, reconnect_interval: float = 0.1) -> None:
        self.endpoint = endpoint
        self.on_push = on_push
        self.heartbeat_interval = heartbeat_interval
        self.parent_loss_timeout = parent_loss_timeout
        self.on_parent_lost = on_parent_lost
        self.heartbeat = heartbeat
        self.immediate = immediate
        self.on_heartbeat_refused = on_heartbeat_refused
        self.configure = configure
        self.on_reconnected = on_reconnected
        self.reconnect_interval = reconnect_interval
        self._was_disconnected = False
        self._heartbeat_id: int | None = None
        self.dropped = 0
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[int, Call] = {}
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

    def request(self, msg: Message, timeout: float = 30.0) -> Message:
        """Send ``msg`` (a request: it is given its id here) and wait for the parent's reply.

        Raises:
            RequestTimeout: no reply within ``timeout``.
            FlrunnerError: the parent answered with an error code (subclass chosen by it).
        """
        call = self.call(msg)
        try:
            if not call.wait(1, timeout):
                raise RequestTimeout(f"no reply to '{msg.op}' from the parent within {timeout:g}s")
        finally:
            self.end_call(call)
        reply = call.replies[0]
        if reply.rc != Rc.OK:
            raise error_for_rc(reply.rc or Rc.ERROR, str(reply.body.get("reason", reply.rc)))
        return reply

    def call(self, msg: Message) -> Call:
        """Send a request whose replies (any number) collect in the returned `Call`; `end_call` it."""
        call = Call(next_id(), msg.op)
        with self._pending_lock:
            self._pending[call.mid] = call
        self._post(replace(msg, id=call.mid))
        return call

    def end_call(self, call: Call) -> None:
        """Stop collecting replies for ``call``; later ones are dropped."""
        with self._pending_lock:
            self._pending.pop(call.mid, None)

    def send(self, msg: Message) -> None:
        """Send without waiting for (or collecting) a reply."""
        self._post(replace(msg, id=next_id()))

    def reply(self, answer: Message) -> None:
        """Send the answer to a request the parent pushed (``re`` and ``rc`` set)."""
        self._post(answer)

    def _post(self, msg: Message) -> None:
        self._outbox.put(encode(msg))
        self._wake.wake()

    def set_heartbeat_interval(self, seconds: float) -> None:
        """Change the heartbeat interval now (the I/O thread may be asleep on the old one)."""
        self.heartbeat_interval = seconds
        self._wake.wake()

    def close(self, timeout: float = 2.0) -> None:
        self._closing.set()
        self._wake.wake()
        self._thread.join(timeout)

    # --- the I/O thread ------------------------------------------------------------------------
    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)  # let a last message out when closing
        if self.immediate:
            sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, max(1, int(self.reconnect_interval * 1000)))
        if self.configure is not None:
            self.configure(sock)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED) \
            if self.on_reconnected is not None else None
        sock.connect(self.endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake.fileno(), zmq.POLLIN)
        if monitor is not None:
            poller.register(monitor, zmq.POLLIN)
        last_beat = time.monotonic()
        try:
            while not self._closing.is_set():
                # The interval is read each time: a site learns it from the parent at login.
                next_beat = last_beat + self.heartbeat_interval
                timeout = max(0.0, next_beat - time.monotonic())
                for what, _ in poller.poll(int(timeout * 1000)):
                    if what == self._wake.fileno():
                        self._wake.drain()
                    elif what is monitor:
                        self._connection_events(monitor)
                    else:
                        self._receive(sock)
                self._send_outbox(sock)
                now = time.monotonic()
                if now >= next_beat:
                    last_beat = now
                    if self.authenticated and self.heartbeat is not None:
                        self._heartbeat_id = next_id()
                        self._send(sock, encode(replace(self.heartbeat(), id=self._heartbeat_id)))
                    if now - self.last_heard > self.parent_loss_timeout and not self.parent_lost:
                        self.parent_lost = True
                        log.error("no word from the parent for %.1fs", now - self.last_heard)
                        if self.on_parent_lost is not None:
                            self.on_parent_lost()
            self._send_outbox(sock)
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(0)
            sock.close()
            ctx.term()
            self._wake.close()

    def _connection_events(self, monitor: zmq.Socket) -> None:
        """Connection events of the socket: a connection made after one was lost is a reconnection."""
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._was_disconnected = True
            elif event["event"] == zmq.EVENT_CONNECTED and self._was_disconnected:
                self._was_disconnected = False
                log.info("connected to the parent again (%s)", self.endpoint)
                try:
                    self.on_reconnected()  # type: ignore[misc]
                except Exception:
                    log.exception("handling the reconnection failed")

    def _send_outbox(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(sock, frames)

    def _send(self, sock: zmq.Socket, frames: list) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            # Not connected (immediate) or the parent is not reading: the request times out.
            self.dropped += 1

    def _receive(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.last_heard = time.monotonic()
            self.parent_lost = False
            try:
                msg = decode(frames)
            except FrameError as exc:
                self.bad_frames += 1
                log.warning("dropped an undecodable message from the parent: %s", exc)
                continue
            if msg.is_reply and msg.re == self._heartbeat_id:
                # RATE_LIMITED only says this peer is sending too much: the parent still knows it.
                if msg.rc not in (Rc.OK, Rc.RATE_LIMITED) and self.on_heartbeat_refused is not None:
                    self.on_heartbeat_refused(msg)
                continue
            if msg.is_reply:
                with self._pending_lock:
                    pending = self._pending.get(msg.re)  # type: ignore[arg-type]
                if pending is not None:
                    pending._add(msg)
                continue
            try:
                self.on_push(msg)
            except Exception:
                log.exception("handling '%s' from the parent failed", msg.op)
