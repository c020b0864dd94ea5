"""Unit tests of a site's secure aux requests to its job's engine, both engines in this process.

The site's `ClientEngine` seals the request and opens the reply; the job's `ServerEngine` opens
the request with the key its site list holds for the sender, runs the handler and seals the
reply. `Relay` stands between them where the parent would: it is the server engine's link (the
site list, the replies) and the client engine's sender, and a test may change what it carries.
"""

from __future__ import annotations

import queue
from dataclasses import replace
from typing import Callable

import pytest
from zmq.utils import z85

from child.engine import ServerEngine
from flrunner.aux.secure import PeerKey
from flrunner.client import PUBLIC_KEY_PROP, Client
from flrunner.security.errors import SealedError
from flrunner.security.sealed import new_secret_key, public_key_of
from flrunner.shareable import Shareable
from flrunner.site.engine import ClientEngine
from flrunner.transport.wire import Message, next_id
from flrunner.workspace import Workspace

SITE = "site-1"
MARKER = "UNIT-MARKER-site-to-engine"


class Relay:
    """In the parent's place between a site's engine and its job's engine."""

    def __init__(self, site_public: bytes | None) -> None:
        props = {PUBLIC_KEY_PROP: z85.encode(site_public).decode()} if site_public is not None else {}
        self.clients = [Client(SITE, "tok", 1.0, props).to_dict(with_token=True)]
        self.server: ServerEngine | None = None
        self.epoch = 0  # the parent never restarts here
        self.replies: queue.Queue[Message] = queue.Queue()
        #: Every frame that passed, both ways.
        self.carried: list[bytes] = []
        #: Changes a reply on its way to the site.
        self.on_reply: Callable[[Message], Message] = lambda msg: msg

    # --- the job's link
    def request(self, msg: Message, timeout: float = 30.0) -> Message:
        assert msg.op == "sync_clients"
        return Message(msg.op, {"revision": 1, "clients": self.clients}, re=1, rc="OK")

    def reply(self, answer: Message) -> None:
        self.replies.put(answer)

    # --- the site's sender
    def send_to_server(self, topic: str, frames: list, timeout: float, fire_and_forget: bool,
                       sealed_key: bytes | None) -> Message | None:
        self.carried.extend(bytes(f) for f in frames)
        body = {"site": SITE, "topic": topic, "timeout": timeout, "sealed_key": sealed_key}
        self.server.on_push(Message("aux", body, id=next_id(), frames=list(frames)))
        if fire_and_forget:
            return None
        reply = self.on_reply(self.replies.get(timeout=5))
        self.carried.extend(bytes(f) for f in reply.frames)
        return reply


class Pair:
    """A job's engine with an ``echo`` handler, and a site's engine that knows the job's key."""

    def __init__(self, tmp_path, site_has_kit: bool = True, synced: bool = True) -> None:
        site_secret = new_secret_key()
        self.relay = Relay(public_key_of(site_secret) if synced else None)
        self.server = self.relay.server = ServerEngine("job-1", Workspace(tmp_path / "ws"), link=self.relay)
        self.server.register_aux_message_handler("echo", self._echo)
        #: The job process's key as the site knows it (the parent passes it on).
        self.job_key = PeerKey(self.server.sealing_public_key())
        self.site = ClientEngine(SITE, "job-1", Workspace(tmp_path / "site"), self.relay.send_to_server,
                                 site_secret if site_has_kit else None, self.job_key)

    @staticmethod
    def _echo(topic: str, request: Shareable, fl_ctx) -> Shareable:
        return Shareable({"marker": request.get("marker"), "peer": fl_ctx.get_prop("__peer_name__")})

    def send(self, topic: str = "echo", secure: bool = True) -> Shareable:
        request = Shareable({"marker": MARKER})
        return self.site.send_aux_request(["server"], topic, request, 5.0, self.site.new_context(),
                                          secure=secure)["server"]


def flipped(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def reason(reply: Shareable) -> str:
    return reply.get_header("reason")


def test_a_secure_request_and_its_reply_travel_sealed_and_arrive_opened(tmp_path):
    pair = Pair(tmp_path)
    reply = pair.send()
    assert reply.get_return_code() == "OK"
    assert (reply.get("marker"), reply.get("peer")) == (MARKER, SITE)
    assert pair.relay.carried and not any(MARKER.encode() in f for f in pair.relay.carried)
    plain = pair.send(secure=False)
    assert plain.get("marker") == MARKER and any(MARKER.encode() in f for f in pair.relay.carried)


def test_the_engines_own_answers_travel_sealed_too(tmp_path):
    pair = Pair(tmp_path)
    reply = pair.send(topic="no-such-topic")
    assert reply.get_return_code() == "TOPIC_UNKNOWN" and "no-such-topic" in reason(reply)
    assert not any(b"no-such-topic" in f for f in pair.relay.carried)


def test_a_site_without_a_kit_or_without_the_jobs_key_yet_cannot_seal_and_says_why(tmp_path):
    no_kit = Pair(tmp_path, site_has_kit=False)
    with pytest.raises(SealedError, match=r"^site site-1 has no provisioned key \(it was not started with --kit\)"):
        no_kit.send()
    no_key = Pair(tmp_path)
    no_key.job_key.set(None)
    with pytest.raises(SealedError, match=r"^the key of job job-1's process has not reached site site-1 yet"):
        no_key.send()
    assert no_key.relay.carried == []  # nothing was sent in the clear instead


def test_the_engine_refuses_a_site_it_holds_no_key_for_and_a_request_for_another_key(tmp_path):
    unsynced = Pair(tmp_path, synced=False)
    reply = unsynced.send()
    assert reply.get_return_code() == "BAD_REQUEST_DATA"
    assert reason(reply) == ("the job's engine cannot open the secure request of site 'site-1': site 'site-1' has no "
                             "provisioned key in the job's site list (secure aux needs a parent and sites started "
                             "with --kit)")
    stale = Pair(tmp_path)
    stale.job_key.set(public_key_of(new_secret_key()))  # e.g. the key of a process since relaunched
    reply = stale.send()
    assert reply.get_return_code() == "BAD_REQUEST_DATA"
    assert reason(reply).startswith("the job's engine cannot open the secure request of site 'site-1': its sealed key "
                                    "does not open")
    assert stale.send(secure=False).get("marker") == MARKER  # the engine serves on


def test_a_reply_changed_on_the_way_does_not_open_at_the_site(tmp_path):
    pair = Pair(tmp_path)
    pair.relay.on_reply = lambda msg: replace(msg, frames=[flipped(bytes(msg.frames[0]))])
    reply = pair.send()
    assert reply.get_return_code() == "BAD_REQUEST_DATA"
    assert reason(reply).startswith("the secure reply of job job-1's engine cannot be opened: it does not open")
    pair.relay.on_reply = lambda msg: replace(msg, body={"reason": "site-1 is gone"}, rc="UNAVAILABLE", frames=[])
    reply = pair.send()  # an error in the clear (from the parent) is passed on as it is
    assert reply.get_return_code() == "COMMUNICATION_ERROR" and reason(reply) == "site-1 is gone"
