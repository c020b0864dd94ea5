"""A blocking request/reply client over a DEALER socket, for admin tools and site agents.

Replies are matched to requests by id; a late reply to a request that timed out is dropped.
Messages that are not replies (pushes from the parent) go to ``on_push``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable

import zmq

from flrunner.errors import FrameError, Rc, RequestTimeout, error_for_rc
from flrunner.transport.wire import MAX_HEADER_BYTES, Message, decode, encode, next_id

log = logging.getLogger(__name__)


def make_context() -> zmq.Context:
    """A fresh ZeroMQ context (never share one across a fork)."""
    return zmq.Context()


class DealerClient:
    """Request/reply over one DEALER socket.

    Args:
        endpoint: the ROUTER to connect to.
        ctx: the ZeroMQ context (one is created if None and terminated on `close`).
        on_push: called with every message that is not a reply.
        max_msg_size: socket-level inbound size limit (ZMQ_MAXMSGSIZE).
        curve: ``(public key, secret key, server's public key)`` (Z85) to connect as a CURVE client.
    """

    def __init__(self, endpoint: str, ctx: zmq.Context | None = None,
                 on_push: Callable[[Message], None] | None = None, max_msg_size: int = 1 << 30,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self._own_ctx = ctx is None
        self.ctx = ctx or make_context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
        if curve is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.sock.connect(endpoint)
        self.on_push = on_push
        self.bad_frames = 0

    def send(self, msg: Message, timeout: float = 10.0) -> int:
        """Queue ``msg`` (given a fresh id); return its id.

        A DEALER holds messages only for a peer it has a connection to, and while it has none (the
        parent is gone, or refused this client's CURVE key) a plain send would block for good.

        Raises:
            RequestTimeout: no connection took the message within ``timeout`` seconds.
        """
        mid = next_id()
        parts = encode(replace(msg, id=mid))
        if self.sock.poll(int(max(timeout, 0) * 1000), zmq.POLLOUT):
            try:
                self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return mid
            except zmq.Again:
                pass
        raise RequestTimeout(f"could not send '{msg.op}' to {self.endpoint} within {timeout:g}s: no connection to it")

    def request(self, msg: Message, timeout: float = 10.0) -> Message:
        """Send and wait for the reply; raise the named error for a non-OK reply code.

        Raises:
            RequestTimeout: no reply within ``timeout`` seconds.
            FlrunnerError: the peer replied with an error code (subclass chosen by the code).
        """
        deadline = time.monotonic() + timeout
        mid = self.send(msg, timeout=timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout(f"no reply to '{msg.op}' from {self.endpoint} within {timeout:g}s")
            got = self.receive(left)
            if got is None:
                continue
            if got.re == mid:
                if got.rc != Rc.OK:
                    raise error_for_rc(got.rc or Rc.ERROR, str(got.body.get("reason", got.rc)))
                return got
            if not got.is_reply and self.on_push is not None:
                self.on_push(got)

    def receive(self, timeout: float) -> Message | None:
        """One decoded message, or None on timeout or an undecodable frame (counted)."""
        if not self.sock.poll(int(max(timeout, 0) * 1000)):
            return None
        frames = self.sock.recv_multipart(copy=False)
        try:
            return decode(frames, MAX_HEADER_BYTES)
        except FrameError as exc:
            self.bad_frames += 1
            log.warning("dropped an undecodable message from %s: %s", self.endpoint, exc)
            return None

    def close(self) -> None:
        self.sock.close(0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> DealerClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
