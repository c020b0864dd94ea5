"""Secure aux (``send_aux_request(..., secure=True)``): sealed end to end between a job and its sites.

Real parents, sites and job processes throughout. The job's workflow and the sites' executor are
in ``tests/job_components_secure.py``; each request carries a marker string, which the sites
write down and echo. To see what the parent itself sees, one test runs the parent in this
process and records every frame its sockets receive and send; to send what no real parent would
(garbage, a tampered ciphertext), others put a bare ROUTER socket in the parent's place.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from flrunner import FLRunner
from flrunner.bundles import make_bundle
from flrunner.payload import decode_shareable, encode_shareable
from flrunner.security.kit import load_kit
from flrunner.security.sealed import (key_from_z85, new_secret_key, open_reply, public_key_of, reply_context,
                                      request_context, seal_request)
from flrunner.wire import Message, decode, encode
from parent.router import RouterEndpoint

from .conftest import wait_for
from .job_components_secure import marker_payload
from .test_security import start_kit_site

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


def assert_echoed(replies: dict, marker: str) -> None:
    """Each site answered OK with the marker it read and the whole blob."""
    for site, reply in replies.items():
        assert reply["rc"] == "OK", (site, reply)
        assert reply["data"] == {"site": site, "marker": marker, "blob_len": 80 * 1024, "blob_head": marker}


@pytest.fixture
def project(tmp) -> Path:
    """A provisioned project: the parent's kit, and one kit for each of `SITES`."""
    out = tmp / "project"
    subprocess.run([sys.executable, "-m", "flrunner", "provision", "--out", str(out), "--site", SITES[0], "--site",
                    SITES[1]], check=True, capture_output=True)
    return out


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
