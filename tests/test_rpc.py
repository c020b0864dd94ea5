"""`DealerClient` against a real CURVE ROUTER whose ZAP handler refuses every key."""

from __future__ import annotations

import time

import pytest
import zmq
from zmq.auth.thread import ThreadAuthenticator

from flrunner.errors import RequestTimeout
from flrunner.transport.dealer import DealerClient
from flrunner.transport.wire import Message


@pytest.fixture
def refusing_server():
    """A CURVE server on 127.0.0.1 that admits no client key; yields (endpoint, its public key)."""
    ctx = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()  # with no curve configuration it refuses every CURVE client
    public, secret = zmq.curve_keypair()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.curve_server, router.curve_publickey, router.curve_secretkey = True, public, secret
    router.zap_domain = b"test"
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield f"tcp://127.0.0.1:{port}", public
    finally:
        router.close()
        auth.stop()
        ctx.term()


@pytest.mark.timeout(30)
def test_sending_to_a_parent_that_refused_the_key_fails_instead_of_blocking(refusing_server):
    endpoint, server_key = refusing_server
    client = DealerClient(endpoint, curve=(*zmq.curve_keypair(), server_key))
    try:
        with pytest.raises(RequestTimeout):  # the first message is queued, and never answered
            client.request(Message("ping", {}), timeout=0.5)
        # once the handshake has been refused libzmq drops the connection's queue: nothing can be sent
        deadline = time.monotonic() + 10
        while True:
            try:
                client.send(Message("unsubscribe", {}), timeout=0)
            except RequestTimeout as exc:
                assert "no connection" in str(exc) and endpoint in str(exc)
                break
            assert time.monotonic() < deadline, "sends were still taken 10 s after the key was refused"
            time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="could not send 'ping'"):
            client.request(Message("ping", {}), timeout=0.3)
        assert time.monotonic() - started < 5
    finally:
        client.close()
