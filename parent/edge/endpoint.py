"""One ROUTER socket of the parent: receive, decode, limit, dispatch, answer, push.

This is where bytes from a peer become messages and messages go out as bytes: a frame that does
not decode is answered with ``BAD_REQUEST`` (or counted and dropped when there is no id to
answer), a peer over its rate limit is told so once a second, and every decoded request goes to
the socket's `flrunner.protocol.Dispatcher`, which validates it, calls its handler and turns what
the handler raises into a coded answer. Nothing a peer sends stops the parent's loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import zmq

from flrunner.errors import EncodeError, FlrunnerError, FrameError, Rc
from flrunner.protocol import Channel, Dispatcher, Handler, Op, Request
from flrunner.protocol.dispatch import Authorize
from flrunner.transport.wire import MAX_HEADER_BYTES, Message, decode, encode, next_id, peek_id
from flrunner.util.logthrottle import LogThrottle
from parent.edge.awaited import AwaitedReplies
from parent.edge.limits import RateLimiter

log = logging.getLogger(__name__)

#: Lines about bad input logged per socket per second; the rest are counted.
LOG_BURST = 20


def source_fd(req: Request) -> int | None:
    """The file descriptor of the connection a request came in on (CURVE sockets only; see
    `parent.edge.connections`). Asked for by the few handlers that need it, not for every message."""
    try:
        return req.frame.get(zmq.SRCFD)  # type: ignore[union-attr]
    except Exception:
        return None


@dataclass(frozen=True)
class CurveServer:
    """How a socket is a CURVE server: the parent's key pair, and the ZAP domain whose handler
    admits (or refuses) each peer's key."""

    public_key: bytes
    secret_key: bytes
    domain: str


class RouterEndpoint:
    """A ROUTER socket serving one `Channel` (`bind` it, then the loop calls `process_ready`).

    Args:
        ctx: ZeroMQ context.
        name: ``"sites"``, ``"jobs"`` or ``"admin"`` (for logs and errors).
        channel: the operations peers send on this socket.
        max_msg_size: ZMQ_MAXMSGSIZE: a peer sending a larger frame is disconnected by libzmq.
        limiter: per-peer limits on messages and bytes a second (None: unlimited).
        authorize: called with each request before its handler; raises `Unauthorized` to refuse it.
        curve: make the socket a CURVE server (its requests then carry the peer's ZAP User-Id).
        awaited: the requests this socket's peers are expected to answer (their replies go there;
            without it, replies are dropped).
        backlog: ZMQ_BACKLOG, the kernel's queue of connections not yet accepted.
    """

    def __init__(self, ctx: zmq.Context, name: str, channel: Channel, max_msg_size: int, *,
                 limiter: RateLimiter | None = None, authorize: Authorize | None = None,
                 curve: CurveServer | None = None, awaited: AwaitedReplies | None = None,
                 backlog: int | None = None, max_header: int = MAX_HEADER_BYTES) -> None:
        self.name = name
        self.channel = channel
        self.max_header = max_header
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
        if backlog is not None:
            self.sock.setsockopt(zmq.BACKLOG, backlog)
        if curve is not None:
            from flrunner.security.gate import make_curve_server

            make_curve_server(self.sock, curve.public_key, curve.secret_key, curve.domain)
        # No ROUTER_HANDOVER: the jobs socket authenticates a peer by its routing identity, and with
        # handover any peer that sets the same ZMQ_ROUTING_ID would take over that session (its
        # replies and pushes, and its authentication). Peers here use libzmq-assigned identities.
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
        # Report a message to a peer that is gone (EHOSTUNREACH) instead of dropping it silently,
        # so a request to a departed site fails at once.
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.dispatcher = Dispatcher(channel, f"{name} socket", authorize=authorize, on_refused=self._refused)
        self.awaited = awaited
        self.dropped = 0
        self.errors = 0
        #: A CURVE server: requests carry the peer's ZAP User-Id.
        self.curve = curve is not None
        self.limiter = limiter
        self._log = LogThrottle(log, f"{name} socket: ", LOG_BURST)
        self.endpoint = ""

    def bind(self, endpoint: str) -> str:
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def on(self, op: Op, handler: Handler) -> None:
        """Serve ``op`` with ``handler``."""
        self.dispatcher.on(op, handler)

    def _refused(self, msg: Message, exc: FlrunnerError) -> None:
        self.errors += 1
        self._warn("%s -> %s: %s", msg.op[:60], exc.rc, exc, level=logging.INFO)

    def process_ready(self, budget: int = 256) -> None:
        """Serve the messages waiting on the socket, at most ``budget`` so other sockets get a turn."""
        for _ in range(budget):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._serve(frames)
            except Exception:  # last resort: nothing a peer sends may stop the parent's loop
                self.errors += 1
                log.exception("%s socket: serving a message failed", self.name)

    def _serve(self, frames: list) -> None:
        if len(frames) < 2:
            self.dropped += 1
            return
        identity = frames[0].bytes
        body_frames = frames[1:]
        if self.limiter is not None:
            accept, over = self.limiter.allow(identity, sum(len(frame) for frame in body_frames))
            if not accept:
                self.dropped += 1
                mid = peek_id(body_frames) if over else None
                if mid is not None:
                    self._send(identity, Message("error", {"reason": f"rate limit of the {self.name} socket exceeded "
                                                                     f"({over}); messages are dropped"},
                                                 re=mid, rc=Rc.RATE_LIMITED))
                return
        try:
            msg = decode(body_frames, self.max_header)
        except FrameError as exc:
            mid = peek_id(body_frames)
            self.errors += 1
            self._warn("undecodable message: %s", exc)
            if mid is not None:
                self._send(identity, Message("error", {"reason": str(exc)}, re=mid, rc=Rc.BAD_REQUEST))
            else:
                self.dropped += 1
            return
        except Exception:  # a decoder bug: count and drop, never stop the loop
            self.errors += 1
            self.dropped += 1
            log.exception("%s socket: decoding a message failed", self.name)
            return
        if msg.is_reply:
            # A reply to one of this socket's pushes: late (after its timeout) or never asked
            # for, it is counted and dropped.
            if self.awaited is None or not self.awaited.reply(self.name, identity, msg):
                self.dropped += 1
            return
        self.dispatcher.dispatch(msg, lambda answer: self._send(identity, answer), peer=identity,
                                 user_id=_user_id(body_frames[0]) if self.curve else None,
                                 frame=body_frames[0] if self.curve else None)

    def reply(self, identity: bytes, request: Message, body: dict, frames: list | None = None,
              rc: Rc = Rc.OK) -> None:
        """Answer ``request`` of peer ``identity`` (for a handler that answers later)."""
        self._send(identity, Message(request.op, body, re=request.id, rc=rc, frames=list(frames or [])))

    def push(self, identity: bytes, msg: Message | None = None, prepared: tuple[int, list] | None = None) -> int | None:
        """Send a request or notice (built by its op: ``op.message(...)``) to a peer; its message
        id, or None if it could not be sent.

        ``prepared`` (from `prepare`) sends one message, encoded once, to many peers: the same id
        is fine, as replies are told apart by the peer that sends them.
        """
        if prepared is not None:
            mid, encoded = prepared
            return mid if self._send_frames(identity, encoded, "prepared message") else None
        assert msg is not None
        mid = next_id()
        return mid if self._send(identity, replace(msg, id=mid)) else None

    def prepare(self, msg: Message) -> tuple[int, list]:
        """A push encoded once, for `push` to several peers (the header is packed and checked once)."""
        mid = next_id()
        return mid, encode(replace(msg, id=mid))

    def _send(self, identity: bytes, msg: Message) -> bool:
        try:
            frames = encode(msg)
        except EncodeError as exc:
            # A body built from what a peer sent (or a handler bug) cannot travel: answer a request
            # with ERROR rather than let the exception reach the loop; drop a push.
            self.errors += 1
            log.error("%s socket: cannot encode '%s': %s", self.name, msg.op, exc)
            if not msg.is_reply:
                self.dropped += 1
                return False
            frames = encode(Message(msg.op, {"reason": f"internal error: the reply cannot be encoded: {exc}"[:4096]},
                                    re=msg.re, rc=Rc.ERROR))
        return self._send_frames(identity, frames, msg.op)

    def _send_frames(self, identity: bytes, frames: list, op: str) -> bool:
        try:
            self.sock.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            # The peer's queue is full (it is not reading): drop rather than block the loop.
            self.dropped += 1
            self._warn("peer is not reading; dropped '%s'", op)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY)
            self.dropped += 1
            self._warn("could not send '%s': %s", op, exc)
        return False

    def _warn(self, fmt: str, *args: Any, level: int = logging.WARNING) -> None:
        """Log a peer's bad input, at most `LOG_BURST` lines per second per socket, so a flooding
        peer cannot fill the disk; the number of lines held back is logged with the next one."""
        self._log.log(level, fmt, *args)

    def close(self) -> None:
        self.sock.close(0)


def _user_id(frame: object) -> str | None:
    """The ZAP User-Id of the connection a frame came in on (CURVE sockets only)."""
    try:
        return frame.get("User-Id") or None  # type: ignore[attr-defined]
    except Exception:
        return None
