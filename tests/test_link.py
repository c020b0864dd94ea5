"""`Link` against a real ROUTER socket standing in for the parent."""

from __future__ import annotations

import zmq

from flrunner.transport.link import Link
from flrunner.protocol import Rc, job_ops
from flrunner.transport.wire import Message, decode, encode

from .support import wait_for


def test_a_rate_limited_heartbeat_is_not_taken_for_a_parent_that_forgot_the_peer(tmp):
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    router.bind(f"ipc://{tmp}/parent.sock")
    refused: list[str] = []
    link = Link(f"ipc://{tmp}/parent.sock", lambda msg: None, heartbeat_interval=0.05, heartbeat=job_ops.HEARTBEAT.message,
                on_heartbeat_refused=lambda msg: refused.append(msg.rc))
    link.start()
    link.authenticated = True  # heartbeats start once the peer has said who it is
    try:
        answers = [Rc.RATE_LIMITED, Rc.RATE_LIMITED, Rc.UNAUTHORIZED]
        for rc in answers:
            assert router.poll(5000), "no heartbeat from the link"
            identity, *frames = router.recv_multipart()
            beat = decode(frames)
            assert beat.op == "heartbeat"
            router.send_multipart([identity, *encode(Message("error", {"reason": rc}, re=beat.id, rc=rc))])
        wait_for(lambda: refused, 5, "the refused heartbeat to be reported")
        assert refused == [Rc.UNAUTHORIZED]
    finally:
        link.close()
        router.close()
