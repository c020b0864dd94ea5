"""Closing one peer's connection under a ZeroMQ ROUTER socket.

ZeroMQ has no per-peer disconnect on a bound socket, but each message says which file
descriptor it came in on (``ZMQ_SRCFD``). Shutting that descriptor down makes libzmq's I/O thread
see the connection end and drop it, like a network failure: the peer's own socket then reconnects,
and on a CURVE socket that means a new handshake, which the ZAP handler checks against the
current allowlist. This is how a revoked site is cut off at once.

File descriptors are reused: the one a site logged in on may belong to another peer's connection
by the time it is cut. So the connection's far end is recorded when it is seen (address and port
for tcp; the peer's pid for ipc) and checked again just before the shutdown; a descriptor whose
far end differs is left alone.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import NamedTuple

log = logging.getLogger(__name__)


class Connection(NamedTuple):
    """One peer connection under a ZeroMQ socket: its descriptor and who is at the other end."""

    fd: int
    peer: tuple


def _far_end(fd: int) -> tuple | None:
    """The peer of descriptor ``fd``: ``(host, port, …)`` for tcp, ``("pid", pid)`` for ipc; None if it is not a connected socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if sock.family == socket.AF_UNIX:
            pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            return ("pid", pid)
        return tuple(sock.getpeername())
    except OSError:
        return None
    finally:
        sock.detach()  # the descriptor stays libzmq's


def connection_of(fd: int | None) -> Connection | None:
    """The connection behind a message's source descriptor, or None if it cannot be told."""
    if fd is None or fd < 0:
        return None
    peer = _far_end(fd)
    return Connection(fd, peer) if peer is not None else None


def cut(conn: Connection) -> bool:
    """Shut the connection down if its descriptor still leads to the same peer; whether it did."""
    if _far_end(conn.fd) != conn.peer:
        return False
    sock = socket.socket(fileno=conn.fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError as exc:
        log.warning("cannot close the connection to %s: %s", conn.peer, exc)
        return False
    finally:
        sock.detach()
