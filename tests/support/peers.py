"""Raw ZeroMQ peers of a real parent: well-framed requests built with `flrunner.transport.wire`,
sent from a test's own DEALER sockets (the ``peers`` fixture opens and closes them)."""

from __future__ import annotations

from typing import Any

import zmq

from flrunner.transport.wire import Message, decode, encode, next_id


def receive(sock: zmq.Socket, timeout: float) -> Message | None:
    """The next message on ``sock`` within ``timeout`` seconds, or None."""
    if not sock.poll(int(timeout * 1000)):
        return None
    return decode(sock.recv_multipart())


def call(sock: zmq.Socket, op: str, body: dict | None = None, timeout: float = 5.0, **header: Any) -> Message:
    """Send a well-framed request and return the reply to it (failing the test without one)."""
    mid = next_id()
    sock.send_multipart(encode(Message(op, body or {}, id=mid, **header)))
    return reply_to(sock, mid, timeout)


def reply_to(sock: zmq.Socket, mid: int, timeout: float = 5.0) -> Message:
    """The next message, which must be the reply to ``mid`` (anything before it is a failure)."""
    msg = receive(sock, timeout)
    assert msg is not None, f"no reply to message {mid} within {timeout}s"
    assert msg.re == mid, f"expected the reply to {mid}, got {msg}"
    return msg


def raw_login(endpoint: str, name: str, keys: tuple[bytes, bytes] | None, server_key: bytes | None,
              timeout_ms: int = 1500) -> Message | None:
    """A site ``login`` as ``name`` from a fresh socket, with CURVE ``keys`` (public, secret) if given;
    the reply, or None if none came within ``timeout_ms`` (a CURVE handshake that failed)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys
        sock.curve_serverkey = server_key
    sock.connect(endpoint)
    try:
        sock.send_multipart(encode(Message("login", {"name": name}, id=1)))
        if not sock.poll(timeout_ms):
            return None
        return decode(sock.recv_multipart())
    finally:
        sock.close()
