"""Secure aux (``send_aux_request(..., secure=True)``): sealed end to end between a job and its sites.

Real parents, sites and job processes throughout, in both directions: from the job's engine to
its sites, and from a site's components to the engine. The job's workflows and the sites'
components are in ``tests/job_components_secure.py``; each request carries a marker string,
which the receiver writes down and echoes. To see what the parent itself sees, two tests run the
parent in this process and record every frame its sockets receive and send; to send what no real
peer would (garbage, a tampered ciphertext), others put a bare ROUTER socket in the parent's
place, or a bare DEALER socket in a site's.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import zmq

from flrunner import FLRunner
from flrunner.util.bundles import make_bundle
from flrunner.aux.payload import decode_shareable, encode_shareable
from flrunner.security.kit import load_kit
from flrunner.security.sealed import (key_from_z85, new_secret_key, open_reply, public_key_of, reply_context,
                                      request_context, seal_request, site_request_context)
from flrunner.transport.wire import Message, decode, encode, next_id
from parent.edge.endpoint import RouterEndpoint

from .job_components_secure import marker_payload
from .support import start_kit_site, wait_for

SITES = ["site-1", "site-2"]
SITE_APP = {"executors": [(["seen"], "job_components_secure.SeenBySite", {})]}


def secure_job(make_job, calls: list[dict], sites: list[str]) -> Path:
    return make_job([("wf", "job_components_secure.SecureCalls", {"calls": calls, "wait_sites": sites})],
                    site_app=SITE_APP, sites=sites, name="secure-aux")


def results(workspace: Path, job_id: str) -> list[dict]:
    return json.loads((workspace / "jobs" / job_id / "secure.json").read_text())


def seen_by(tmp: Path, site: str, job_id: str, marker: str) -> dict | None:
    """What a site's executor wrote on receiving the request with ``marker`` (None: never got it)."""
    path = tmp / f"flrunner-site-{site}" / "jobs" / job_id / f"seen-{marker}.json"
    return json.loads(path.read_text()) if path.exists() else None


def new_marker(kind: str) -> str:
    return f"{kind}-MARKER-{secrets.token_hex(8)}"


def echo(site: str, marker: str) -> dict:
    """What the receiver of ``marker``'s payload from (or to) ``site`` answers when it read it all."""
    return {"site": site, "marker": marker, "blob_len": 80 * 1024, "blob_head": marker}


def assert_echoed(replies: dict, marker: str) -> None:
    """Each site answered OK with the marker it read and the whole blob."""
    for site, reply in replies.items():
        assert reply["rc"] == "OK", (site, reply)
        assert reply["data"] == echo(site, marker)


# --- through a real provisioned parent ----------------------------------------------------------------


def test_secure_aux_reaches_two_kit_sites_and_their_replies_come_back_opened(start_parent, project, procs,
                                                                            make_job, tmp):
    secure_parent = start_parent("--kit", str(project / "parent"))
    for kit in SITES:
        start_kit_site(procs, secure_parent, project, kit)
    wait_for(lambda: {c["name"] for c in secure_parent.admin.clients()} == set(SITES), 15, "both kit sites")
    marker = new_marker("SECRET")
    job_id = secure_parent.admin.submit(secure_job(make_job, [{"marker": marker}], SITES))
    assert secure_parent.wait_final(job_id, 30)["status"] == "FINISHED:COMPLETED"
    replies, = results(tmp / "ws", job_id)
    assert sorted(replies) == SITES
    assert_echoed(replies, marker)
    for site in SITES:  # each site's handler read the plaintext
        assert seen_by(tmp, site, job_id, marker) == {"site": site, "marker": marker, "blob_len": 80 * 1024}
    assert marker not in (tmp / "ws" / "parent.log").read_text()


# --- what the parent sees ---------------------------------------------------------------------------------


def frame_bytes(frame) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


@pytest.fixture
def recorded(monkeypatch) -> list[tuple[str, str, bytes]]:
    """Every frame any parent started in this process receives or sends: (socket, "in"/"out", bytes)."""
    frames: list[tuple[str, str, bytes]] = []
    serve, send = RouterEndpoint._serve, RouterEndpoint._send_frames

    def recording_serve(self, received: list) -> None:
        frames.extend((self.name, "in", frame_bytes(f)) for f in received)
        serve(self, received)

    def recording_send(self, identity: bytes, sent: list, op: str) -> bool:
        frames.extend((self.name, "out", frame_bytes(f)) for f in sent)
        return send(self, identity, sent, op)

    monkeypatch.setattr(RouterEndpoint, "_serve", recording_serve)
    monkeypatch.setattr(RouterEndpoint, "_send_frames", recording_send)
    return frames


@pytest.fixture
def embedded_secure_parent(recorded, project, procs, tmp):
    # `procs` is requested so the leak check covers the job processes this parent starts.
    runner = FLRunner.start(tmp / "ws", kit=str(project / "parent"), abort_grace=1.0, term_grace=1.0)
    yield runner
    runner.stop()


def flows_with(recorded: list[tuple[str, str, bytes]], marker: str) -> set[tuple[str, str]]:
    """Which (socket, direction) carried a frame holding ``marker``."""
    needle = marker.encode()
    return {(socket, direction) for socket, direction, data in recorded if needle in data}


@pytest.mark.slow
def test_the_parent_never_holds_a_secure_payload_but_does_hold_a_plain_one(embedded_secure_parent, recorded, project,
                                                                          procs, make_job, tmp):
    for kit in SITES:
        procs.spawn(["-m", "flrunner", "site", "--kit", str(project / kit), "--server",
                     embedded_secure_parent.sites_endpoint], f"site-{kit}")
    wait_for(lambda: {c["name"] for c in embedded_secure_parent.clients()} == set(SITES), 15, "both kit sites")
    secret, plain = new_marker("SECRET"), new_marker("PLAIN")
    job_id = embedded_secure_parent.submit(secure_job(make_job, [{"marker": secret, "secure": True},
                                                                 {"marker": plain, "secure": False}], SITES))
    assert embedded_secure_parent.wait(job_id, timeout=30)["status"] == "FINISHED:COMPLETED"
    secure_replies, plain_replies = results(tmp / "ws", job_id)
    assert_echoed(secure_replies, secret)
    assert_echoed(plain_replies, plain)
    # The same check finds the plain request and its replies on every hop through the parent...
    assert flows_with(recorded, plain) == {("jobs", "in"), ("sites", "out"), ("sites", "in"), ("jobs", "out")}
    # ...and finds nothing of the secure one, though it travelled the same way.
    assert flows_with(recorded, secret) == set()
    assert secret not in (tmp / "ws" / "parent.log").read_text()


# --- sites without a provisioned key --------------------------------------------------------------------


def test_secure_aux_to_a_site_without_a_key_fails_for_it_with_the_reason(parent, start_site, make_job, tmp):
    start_site(parent, "site-1")
    secret, plain = new_marker("SECRET"), new_marker("PLAIN")
    job_id = parent.admin.submit(secure_job(make_job, [{"marker": secret, "secure": True},
                                                       {"marker": plain, "secure": False}], ["site-1"]))
    assert parent.wait_final(job_id, 30)["status"] == "FINISHED:COMPLETED"
    secure_replies, plain_replies = results(tmp / "ws", job_id)
    reply = secure_replies["site-1"]
    assert reply["rc"] == "UNAUTHENTICATED"
    assert reply["reason"] == ("site 'site-1' has no provisioned key: secure aux needs a parent and sites "
                               "started with --kit")
    assert seen_by(tmp, "site-1", job_id, secret) is None  # the request never left the parent
    assert_echoed(plain_replies, plain)
    assert seen_by(tmp, "site-1", job_id, plain) is not None  # while a plain one reaches the site


# --- what a site does with sealed requests that do not open ---------------------------------------------


class FakeParent:
    """A bare ROUTER socket in the parent's place: it answers a site's login and heartbeats, and
    lets a test push the site whatever it likes and read the site's answer."""

    def __init__(self, kit=None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        if kit is not None:  # a CURVE server with the parent's keys (any client key is let in)
            self.sock.curve_server = True
            self.sock.curve_publickey, self.sock.curve_secretkey = kit.public_key, kit.secret_key
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.site: bytes | None = None

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()

    def wait_login(self, timeout: float = 15.0) -> None:
        self._pump(lambda msg: msg.op == "login" and not msg.is_reply, timeout, "the site to log in")

    def request(self, op: str, body: dict, frames: list, timeout: float = 10.0) -> Message:
        mid = int.from_bytes(os.urandom(4), "big")
        self.sock.send_multipart([self.site, *encode(Message(op, body, id=mid, frames=frames))])
        return self._pump(lambda msg: msg.re == mid, timeout, f"the site's answer to '{op}'")

    def _pump(self, until, timeout: float, what: str) -> Message:
        """Serve the site's own requests until a message matches ``until``; return that message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(50):
                continue
            self.site, *frames = self.sock.recv_multipart()
            msg = decode(frames)
            if not msg.is_reply:
                body = {"token": "fake", "heartbeat_interval": 5.0, "revision": 1, "stop_jobs": []} \
                    if msg.op == "login" else {}
                self.sock.send_multipart([self.site, *encode(Message(msg.op, body, re=msg.id, rc="OK"))])
            if until(msg):
                return msg
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def fake_parent_for():
    made: list[FakeParent] = []

    def make(kit=None) -> FakeParent:
        made.append(FakeParent(kit))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


JOB_ID = "sealed-job"


def start_site_job(fake: FakeParent, make_job) -> None:
    """Run the secure test app on the fake parent's site, as a parent's start_job would."""
    folder = secure_job(make_job, [], ["site-1"])
    reply = fake.request("start_job", {"job_id": JOB_ID, "job_name": "sealed", "app": "app_site"},
                         [make_bundle(str(folder / "app_site"))])
    assert reply.rc == "OK", reply.body


def aux_body(sealed_key: bytes, sender_key: bytes, topic: str = "seen") -> dict:
    return {"job_id": JOB_ID, "topic": topic, "timeout": 5.0, "sealed_key": sealed_key, "sender_key": sender_key}


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def test_a_kit_site_refuses_garbage_and_tampered_ciphertext_and_keeps_serving(fake_parent_for, project, procs,
                                                                               make_job):
    site_kit = load_kit(project / "site-1")
    fake = fake_parent_for(load_kit(project / "parent"))
    site = procs.spawn(["-m", "flrunner", "site", "--kit", str(project / "site-1"), "--server", fake.endpoint],
                       "site-1")
    fake.wait_login()
    start_site_job(fake, make_job)
    job_secret = new_secret_key()
    job_public = public_key_of(job_secret)
    marker = new_marker("SECRET")
    blob, sealed = seal_request(encode_shareable(marker_payload(marker)), job_secret,
                                {"site-1": key_from_z85(site_kit.public_key)}, context=request_context(JOB_ID, "seen"))

    garbage = fake.request("aux", aux_body(os.urandom(72), job_public), [os.urandom(300)])
    assert garbage.rc == "BAD_REQUEST"
    assert garbage.body["reason"].startswith("site site-1 cannot open the secure request: its sealed key does not "
                                             "open with this site's key")
    tampered = fake.request("aux", aux_body(sealed["site-1"], job_public), [flipped(blob, len(blob) // 2)])
    assert tampered.rc == "BAD_REQUEST"
    assert tampered.body["reason"] == ("site site-1 cannot open the secure request: its payload does not open "
                                       "with its key (tampered with)")
    impostor = fake.request("aux", aux_body(sealed["site-1"], public_key_of(new_secret_key())), [blob])
    assert impostor.rc == "BAD_REQUEST" and "sealed key does not open" in impostor.body["reason"]
    redirected = fake.request("aux", aux_body(sealed["site-1"], job_public, topic="other"), [blob])
    assert redirected.rc == "BAD_REQUEST" and "sealed for another request, job or topic" in redirected.body["reason"]

    good = fake.request("aux", aux_body(sealed["site-1"], job_public), [blob])
    assert good.rc == "OK", good.body
    assert marker.encode() not in b"".join(frame_bytes(f) for f in good.frames)
    reply = decode_shareable(open_reply(good.frames, job_secret, key_from_z85(site_kit.public_key),
                                        context=reply_context(blob)))
    assert reply.get("marker") == marker and reply.get("site") == "site-1"
    assert site.poll() is None


def test_a_site_without_a_kit_says_it_cannot_open_secure_requests(fake_parent_for, procs, make_job):
    fake = fake_parent_for()
    site = procs.spawn(["-m", "flrunner", "site", "--name", "site-1", "--server", fake.endpoint], "site-1")
    fake.wait_login()
    start_site_job(fake, make_job)
    blob, sealed = seal_request(encode_shareable(marker_payload(new_marker("SECRET"))), new_secret_key(),
                                {"site-1": public_key_of(new_secret_key())})
    refused = fake.request("aux", aux_body(sealed["site-1"], public_key_of(new_secret_key())), [blob])
    assert refused.rc == "BAD_REQUEST"
    assert refused.body["reason"] == ("site site-1 cannot open the secure request: this site has no provisioned "
                                      "key (it was not started with --kit)")
    marker = new_marker("PLAIN")
    plain = fake.request("aux", {"job_id": JOB_ID, "topic": "seen", "timeout": 5.0},
                         encode_shareable(marker_payload(marker)))
    assert plain.rc == "OK" and decode_shareable(plain.frames).get("marker") == marker
    assert site.poll() is None


# --- from a site to the job's engine ------------------------------------------------------------------


def to_engine_job(make_job, calls: list[dict], sites: list[str], expect: int, start_sites: list[str] = ()) -> Path:
    """A job whose engine handles ``to_engine`` until it has served ``expect`` requests (and starts
    its site app on ``start_sites`` itself), and whose site app sends ``calls`` to it."""
    sender = ("sender", "job_components_secure.SendsToEngine", {"calls": calls})
    handler = {"expect": expect, "start_sites": list(start_sites)}
    return make_job([("wf", "job_components_secure.SecureHandler", handler)], site_app={"components": [sender]},
                    sites=sites, name="secure-to-engine")


def sent_by(tmp: Path, site: str, job_id: str) -> list[dict]:
    """What came of a site's calls to the engine, once it has made them all."""
    path = tmp / f"flrunner-site-{site}" / "jobs" / job_id / "to-engine.json"
    return json.loads(wait_for(lambda: path.exists() and path.read_text(), 15, f"{site}'s calls to the engine"))


def engine_seen(workspace: Path, job_id: str) -> list[dict]:
    """The requests the engine's handler served, in order."""
    return json.loads((workspace / "jobs" / job_id / "engine-seen.json").read_text())


def answered(site: str, marker: str) -> dict:
    return {"rc": "OK", "reason": None, "data": echo(site, marker)}


def test_a_kit_sites_secure_request_reaches_the_engines_handler_and_its_reply_comes_back_opened(
        start_parent, project, procs, make_job, tmp):
    secure_parent = start_parent("--kit", str(project / "parent"))
    for kit in SITES:
        start_kit_site(procs, secure_parent, project, kit)
    wait_for(lambda: {c["name"] for c in secure_parent.admin.clients()} == set(SITES), 15, "both kit sites")
    marker = new_marker("SECRET")
    job_id = secure_parent.admin.submit(to_engine_job(make_job, [{"marker": marker, "secure": True}], SITES,
                                                      expect=len(SITES)))
    assert secure_parent.wait_final(job_id, 30)["status"] == "FINISHED:COMPLETED"
    assert sorted(engine_seen(tmp / "ws", job_id), key=lambda e: e["site"]) == [echo(s, marker) for s in SITES]
    for site in SITES:
        call, = sent_by(tmp, site, job_id)
        assert call["reply"] == answered(site, marker)
        # A site app starts before its job's process: until that process's hello, no key to seal to.
        assert call["tries"][0] == (f"SealedError: the key of job {job_id}'s process has not reached site {site} "
                                    f"yet (the parent sends it once that process has said hello)")
        assert call["tries"][-1] == "OK"
    assert marker not in (tmp / "ws" / "parent.log").read_text()


@pytest.mark.slow
def test_the_parent_never_holds_a_sites_secure_payload_but_does_hold_a_plain_one(embedded_secure_parent, recorded,
                                                                                project, procs, make_job, tmp):
    for kit in SITES:
        procs.spawn(["-m", "flrunner", "site", "--kit", str(project / kit), "--server",
                     embedded_secure_parent.sites_endpoint], f"site-{kit}")
    wait_for(lambda: {c["name"] for c in embedded_secure_parent.clients()} == set(SITES), 15, "both kit sites")
    secret, plain = new_marker("SECRET"), new_marker("PLAIN")
    calls = [{"marker": secret, "secure": True}, {"marker": plain, "secure": False}]
    job_id = embedded_secure_parent.submit(to_engine_job(make_job, calls, SITES, expect=2 * len(SITES)))
    assert embedded_secure_parent.wait(job_id, timeout=30)["status"] == "FINISHED:COMPLETED"
    for site in SITES:
        assert [call["reply"] for call in sent_by(tmp, site, job_id)] == [answered(site, secret),
                                                                          answered(site, plain)]
    # The plain request and its reply cross the parent on every hop; the secure ones on none.
    assert flows_with(recorded, plain) == {("sites", "in"), ("jobs", "out"), ("jobs", "in"), ("sites", "out")}
    assert flows_with(recorded, secret) == set()
    assert secret not in (tmp / "ws" / "parent.log").read_text()


def test_a_site_without_a_kit_cannot_send_secure_requests_to_the_engine_and_says_why(parent, start_site, make_job,
                                                                                    tmp):
    start_site(parent, "site-1")
    secret, plain = new_marker("SECRET"), new_marker("PLAIN")
    calls = [{"marker": secret, "secure": True, "limit": 0}, {"marker": plain, "secure": False}]
    job_id = parent.admin.submit(to_engine_job(make_job, calls, ["site-1"], expect=1))
    assert parent.wait_final(job_id, 30)["status"] == "FINISHED:COMPLETED"
    refused, sent = sent_by(tmp, "site-1", job_id)
    assert refused == {"marker": secret, "reply": None, "tries": [
        "SealedError: site site-1 has no provisioned key (it was not started with --kit): it cannot send secure "
        "aux requests"]}
    assert sent["reply"] == answered("site-1", plain)
    assert engine_seen(tmp / "ws", job_id) == [echo("site-1", plain)]  # the secure request never left the site


class RawSite:
    """A bare DEALER socket in a site's place, with the site's kit keys: it logs in, answers the
    parent's start_job (and records it), keeps the job keys the parent sends, heartbeats, and lets
    a test send the parent whatever it likes."""

    def __init__(self, endpoint: str, kit, parent_kit) -> None:
        self.name = kit.name
        self.secret = key_from_z85(kit.secret_key)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.curve_publickey, self.sock.curve_secretkey = kit.public_key, kit.secret_key
        self.sock.curve_serverkey = parent_kit.public_key
        self.sock.connect(endpoint)
        self.token = ""
        self.job_keys: dict[str, bytes] = {}
        self.started: list[dict] = []
        self.replies: dict[int, Message] = {}
        self.next_beat = float("inf")

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()

    def login(self, jobs: list[str] = ()) -> Message:
        # One agent instance: logging in again resumes this site's session instead of being refused.
        reply = self.request("login", {"name": self.name, "jobs": list(jobs), "instance": f"raw-{self.name}"})
        assert reply.rc == "OK", reply.body
        self.token = reply.body["token"]
        self.next_beat = time.monotonic() + 1.0
        return reply

    def request(self, op: str, body: dict, frames: list = (), timeout: float = 10.0) -> Message:
        mid = next_id()
        self.sock.send_multipart(encode(Message(op, body, id=mid, frames=list(frames))))
        return self.pump(lambda: self.replies.pop(mid, None), timeout, f"the parent's answer to '{op}'")

    def pump(self, until: Callable[[], Any], timeout: float, what: str) -> Any:
        """Serve the parent until ``until()`` returns something other than None; return that."""
        deadline = time.monotonic() + timeout
        while (found := until()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}")
            if time.monotonic() > self.next_beat:
                self.sock.send_multipart(encode(Message("heartbeat", {"token": self.token}, id=next_id())))
                self.next_beat = time.monotonic() + 1.0
            if self.sock.poll(50):
                self._serve(decode(self.sock.recv_multipart()))
        return found

    def _serve(self, msg: Message) -> None:
        if msg.is_reply:
            if msg.op != "heartbeat":
                self.replies[msg.re] = msg
        elif msg.op == "start_job":
            self.started.append(msg.body)
            self.sock.send_multipart(encode(Message(msg.op, {"started": True}, re=msg.id, rc="OK")))
        elif msg.op == "job_key":
            self.job_keys[msg.body["job_id"]] = msg.body["key"]


@pytest.fixture
def raw_site_for():
    made: list[RawSite] = []

    def make(*args) -> RawSite:
        made.append(RawSite(*args))
        return made[-1]

    yield make
    for site in made:
        site.close()


def test_the_engine_refuses_secure_requests_that_do_not_open_and_keeps_serving(start_parent, project, raw_site_for,
                                                                                make_job, tmp):
    secure_parent = start_parent("--kit", str(project / "parent"))
    site = raw_site_for(secure_parent.sites_endpoint, load_kit(project / "site-1"), load_kit(project / "parent"))
    site.login()
    job_id = secure_parent.admin.submit(to_engine_job(make_job, [], ["site-1"], expect=2))
    job_key = site.pump(lambda: site.job_keys.get(job_id), 20, "the job's key, after its process's hello")

    def seal(marker: str, secret: bytes = site.secret, context: bytes | None = None) -> tuple[bytes, bytes]:
        """(the ciphertext, its sealed key) of a request to the engine's ``to_engine``."""
        blob, keys = seal_request(encode_shareable(marker_payload(marker)), secret, {"server": job_key},
                                  context=context or site_request_context(job_id, "to_engine"))
        return blob, keys["server"]

    def send(blob: bytes, sealed_key: bytes, topic: str = "to_engine") -> Message:
        return site.request("aux", {"token": site.token, "job_id": job_id, "topic": topic, "timeout": 5.0,
                                    "sealed_key": sealed_key}, [blob])

    def served(marker: str) -> dict:
        """Send a good request until the engine's handler answers it (it may not be registered yet)."""
        blob, sealed_key = seal(marker)
        deadline = time.monotonic() + 15
        while True:
            reply = send(blob, sealed_key)
            assert reply.rc == "OK", reply.body
            assert marker.encode() not in b"".join(frame_bytes(f) for f in reply.frames)
            opened = decode_shareable(open_reply(reply.frames, site.secret, job_key, context=reply_context(blob)))
            if opened.get_return_code() == "OK" or time.monotonic() > deadline:
                return {k: v for k, v in opened.items() if k != "__headers__"}
            time.sleep(0.05)

    first, second = new_marker("SECRET"), new_marker("SECRET")
    assert served(first) == echo("site-1", first)
    blob, sealed_key = seal(new_marker("SECRET"))
    site_2 = key_from_z85(load_kit(project / "site-2").secret_key)
    refused = {
        "garbage": send(os.urandom(300), os.urandom(72)),
        "tampered": send(flipped(blob, len(blob) // 2), sealed_key),
        "redirected": send(blob, sealed_key, topic="other"),
        # Sealed in the engine's direction: a box opens with the key of either end, its context does not.
        "reflected": send(*seal(new_marker("SECRET"), context=request_context(job_id, "to_engine"))),
        # Sealed with site-2's key: the engine opens with the key its site list holds for site-1.
        "impostor": send(*seal(new_marker("SECRET"), secret=site_2)),
    }
    refusal = "the job's engine cannot open the secure request of site 'site-1': "
    assert {name: (m.rc, m.body["reason"].startswith(refusal)) for name, m in refused.items()} == \
        {name: ("BAD_REQUEST", True) for name in refused}
    reasons = {name: m.body["reason"][len(refusal):] for name, m in refused.items()}
    assert reasons["garbage"].startswith("its sealed key does not open")
    assert reasons["tampered"] == "its payload does not open with its key (tampered with)"
    assert reasons["impostor"].startswith("its sealed key does not open")
    for name in ("redirected", "reflected"):
        assert reasons[name] == "it was sealed for another request, job or topic (replayed or redirected on the way)"
    assert served(second) == echo("site-1", second)
    assert secure_parent.wait_final(job_id, 30)["status"] == "FINISHED:COMPLETED"
    assert engine_seen(tmp / "ws", job_id) == [echo("site-1", first), echo("site-1", second)]


def test_a_site_gets_the_key_of_its_jobs_process_after_each_hello_in_a_later_start_job_and_at_login(
        start_parent, project, raw_site_for, make_job):
    secure_parent = start_parent("--kit", str(project / "parent"))
    site = raw_site_for(secure_parent.sites_endpoint, load_kit(project / "site-1"), load_kit(project / "parent"))
    site.login()
    job_id = secure_parent.admin.submit(to_engine_job(make_job, [], ["site-1"], expect=0, start_sites=["site-1"]))
    # The scheduler starts the site app before the job's process exists: the key follows its hello.
    job_key = site.pump(lambda: site.job_keys.get(job_id), 20, "the job's key, after its process's hello")
    assert len(job_key) == 32
    # The engine starting the site app itself sends the key along.
    site.pump(lambda: len(site.started) == 2 or None, 20, "the engine's own start_job")
    assert [start.get("job_key") for start in site.started] == [None, job_key]
    # A site that logs in again gets the keys of the jobs it runs, which may have changed meanwhile.
    assert site.login(jobs=[job_id]).body["job_keys"] == {job_id: job_key}
    assert secure_parent.wait_final(job_id, 30)["status"] == "FINISHED:COMPLETED"
