"""`parent.edge.connections`: cutting one connection by descriptor, and only the one that was seen."""

from __future__ import annotations

import os
import socket

from parent.edge.connections import connection_of, cut


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return accepted, client


def test_a_tcp_connection_is_cut_and_its_peer_sees_the_end():
    accepted, client = tcp_pair()
    with accepted, client:
        conn = connection_of(accepted.fileno())
        assert conn is not None and conn.peer == client.getsockname()
        assert cut(conn)
        client.settimeout(5)
        assert client.recv(1) == b""  # the far end sees the connection end


def test_a_reused_descriptor_that_leads_elsewhere_is_left_alone():
    first, first_client = tcp_pair()
    conn = connection_of(first.fileno())
    second, second_client = tcp_pair()
    with second, second_client, first_client:
        os.dup2(second.fileno(), conn.fd)  # the descriptor now belongs to another connection
        assert not cut(conn)
        second_client.sendall(b"x")
        first.settimeout(5)
        assert first.recv(1) == b"x"  # still open
        first.close()


def test_an_ipc_connection_is_known_by_its_peers_pid():
    a, b = socket.socketpair()
    with a, b:
        conn = connection_of(a.fileno())
        assert conn is not None and conn.peer == ("pid", os.getpid())
        assert cut(conn)
        assert b.recv(1) == b""


def test_no_descriptor_or_not_a_socket_gives_no_connection(tmp_path):
    assert connection_of(None) is None and connection_of(-1) is None
    with open(tmp_path / "f", "w") as f:
        assert connection_of(f.fileno()) is None
