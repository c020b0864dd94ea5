"""Hostile and malformed input to a real parent's three sockets.

The contract (DESIGN.md, "Wire protocol" and "Invariants worth tests"): bad input to any socket
gets a clear ``BAD_REQUEST`` (naming the op or field) or is dropped and counted; a peer that has
not authenticated gets ``UNAUTHORIZED``; nothing a peer sends stops the parent. Every batch below
ends by checking that the parent still answers an admin ping, still lets a site log in, and still
runs a job to ``FINISHED:COMPLETED``.

Valid-looking messages are built with `flrunner.transport.wire`; malformed ones are raw bytes.
"""

from __future__ import annotations

import random
import time

import msgpack
import pytest
import zmq

from flrunner.transport.wire import Message, encode, next_id

from .support import call, receive, reply_to

SOCKETS = ("sites", "jobs", "admin")

#: For each socket, a known op with a field of the wrong type, and the field the reason must name.
WRONG_TYPES = {
    "sites": [("login", {"name": 5}, "name"), ("login", {"name": "s1", "resources": "lots"}, "resources"),
              ("login", {"name": "s1", "pid": True}, "pid"), ("login", {}, "name")],
    "jobs": [("hello", {"job_id": 5, "secret": "s", "pid": 1}, "job_id"),
             ("hello", {"job_id": "j", "secret": "s", "pid": "1"}, "pid"),
             ("hello", {"job_id": "j", "secret": ["s"], "pid": 1}, "secret"),
             ("hello", {"job_id": "j", "secret": "s", "pid": 1, "sealing_key": b"k" * 31}, "sealing_key")],
    "admin": [("status", {"job_id": 5}, "job_id"), ("submit", {"job_dir": ["/x"]}, "job_dir"),
              ("abort", {"job_id": "x", "reason": 5}, "reason"), ("ping", {"extra": 1}, "extra")],
}


def raw_header(**fields) -> bytes:
    h = {"v": 1, "op": "ping", "id": next_id(), "b": {}}
    h.update(fields)
    return msgpack.packb(h, use_bin_type=True)


def probe(sock: zmq.Socket) -> None:
    """Prove nothing sent earlier on ``sock`` was answered: the next message is this probe's reply.

    A parent serves one peer's messages in order, so a reply to anything sent before would come first.
    """
    reply = call(sock, "no-such-op-probe")
    assert reply.rc == "BAD_REQUEST" and "no-such-op-probe" in reply.body["reason"]


def assert_still_serves(parent, start_site, make_job, peers, site_name: str) -> None:
    assert parent.proc.poll() is None, f"the parent died:\n{parent.procs.output(parent.name)}"
    assert parent.admin.ping()["pid"] == parent.pid
    assert call(peers(parent.info["admin"]), "ping").rc == "OK"  # a new peer, too
    start_site(parent, site_name)
    job = parent.wait_final(parent.admin.submit(make_job([("wf", "Progress", {"steps": 1})])))
    assert job["status"] == "FINISHED:COMPLETED"


# --- malformed input, socket by socket ----------------------------------------------------------------

@pytest.mark.parametrize("socket_name", SOCKETS)
def test_malformed_input_is_dropped_or_refused_and_the_parent_serves_on(parent, peers, start_site, make_job,
                                                                        socket_name):
    endpoint = parent.info[socket_name]
    sock = peers(endpoint)
    rnd = random.Random(socket_name)

    # Dropped (no id to answer): random bytes, an empty frame, truncated headers, a reply to nothing.
    sock.send(b"\xc1" + rnd.randbytes(200))  # 0xc1 is never valid msgpack
    sock.send(rnd.randbytes(64))
    sock.send_multipart([rnd.randbytes(10), rnd.randbytes(10), b""])
    sock.send(b"")
    whole = encode(Message("ping", {"pad": "x" * 100}, id=next_id()))[0]
    for cut in (1, 2, len(whole) // 2, len(whole) - 1):
        sock.send(whole[:cut])
    sock.send_multipart(encode(Message("ping", {}, id=next_id(), re=987654321, rc="OK")))
    sock.send_multipart(encode(Message("login", {"name": "x"}, id=next_id(), re=1, rc="ERROR")))
    probe(sock)

    # An unknown op: BAD_REQUEST naming it.
    reply = call(sock, "frobnicate", {"x": 1})
    assert reply.rc == "BAD_REQUEST" and "'frobnicate'" in reply.body["reason"]
    reply = call(sock, "x" * 10_000)
    assert reply.rc == "BAD_REQUEST" and len(reply.body["reason"]) < 1000

    # Wrong types in a known op's fields: BAD_REQUEST naming the field.
    for op, body, field in WRONG_TYPES[socket_name]:
        reply = call(sock, op, body)
        assert reply.rc == "BAD_REQUEST", (op, body, reply)
        assert f"'{op}'" in reply.body["reason"] and field in reply.body["reason"], reply.body["reason"]

    # Header fields of the wrong type, with an id to answer: BAD_REQUEST naming the header field.
    deep_op = b"\x91" * 1000 + b"\x90"  # deep enough to break repr(): once killed the parent
    for field, data in [("op", raw_header(op=5)), ("v", raw_header(v="1")), ("b", raw_header(b=[1])),
                        ("rc", raw_header(re=3, rc=200)),
                        ("op", b"\x84\xa1v\x01\xa2id\xcd\x30\x39\xa1b\x80\xa2op" + deep_op)]:
        sock.send(data)
        mid = msgpack.unpackb(data)["id"]
        reply = reply_to(sock, mid)
        assert reply.rc == "BAD_REQUEST" and f"'{field}'" in reply.body["reason"], reply.body

    # Too many raw frames: BAD_REQUEST.
    mid = next_id()
    sock.send_multipart([encode(Message("ping", {}, id=mid))[0]] + [b"f"] * 100)
    reply = reply_to(sock, mid)
    assert reply.rc == "BAD_REQUEST" and "raw frames" in reply.body["reason"]

    # Msgpack extension types: BAD_REQUEST.
    mid = next_id()
    sock.send(msgpack.packb({"v": 1, "op": "ping", "id": mid, "b": {"t": msgpack.ExtType(3, b"xyz")}}))
    assert reply_to(sock, mid).rc == "BAD_REQUEST"

    # An oversized header (over the 16 MiB decode limit, and over the admin socket's 1 MiB
    # MAXMSGSIZE, where libzmq drops the connection): no answer, nothing else happens.
    big = peers(endpoint)
    big.send(encode(Message("ping", {"pad": "x" * (17 << 20)}, id=next_id()))[0])
    assert receive(big, 1.0) is None
    if socket_name != "admin":
        probe(big)  # it was dropped, and the connection still works

    assert_still_serves(parent, start_site, make_job, peers, f"site-after-{socket_name}")


# --- authentication -----------------------------------------------------------------------------

def test_unauthenticated_peer_on_the_jobs_socket_is_unauthorized(parent, peers):
    sock = peers(parent.info["jobs"])
    for op, body in [("sync_clients", {}), ("sync_clients", {"since": 0}), ("run_status", {"status": "RUNNING"}),
                     ("run_status", {"status": "FINISHED:COMPLETED"}), ("heartbeat", {}),
                     ("aux", {"topic": "t"})]:
        reply = call(sock, op, body)
        assert reply.rc == "UNAUTHORIZED", (op, reply)
        assert reply.body["reason"]
    assert parent.admin.ping()["pid"] == parent.pid


def test_hello_with_a_wrong_secret_or_unknown_job_is_unauthorized(parent, peers, make_job):
    job_id = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 3})]))
    job = parent.wait_status(job_id, lambda j: j["status"] == "RUNNING")
    [pid] = [j["pid"] for j in parent.admin.ps()["jobs"] if j["job_id"] == job_id]
    sock = peers(parent.info["jobs"])
    for body in [{"job_id": job_id, "secret": "not-the-secret", "pid": pid},
                 {"job_id": job_id, "secret": "", "pid": pid},
                 {"job_id": job_id, "secret": "x" * 256, "pid": 1},
                 {"job_id": "no-such-job", "secret": "whatever", "pid": pid},
                 {"job_id": "", "secret": "s", "pid": 0}]:
        reply = call(sock, "hello", body)
        assert reply.rc == "UNAUTHORIZED", (body, reply)
    # Still not authenticated afterwards, and the real job is unaffected.
    assert call(sock, "run_status", {"status": "FINISHED:ABORTED"}).rc == "UNAUTHORIZED"
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED"


def test_site_ops_with_a_made_up_token_are_unauthorized(parent, peers, start_site):
    sock = peers(parent.info["sites"])
    for op, body in [("heartbeat", {"token": "made-up"}), ("heartbeat", {"token": ""}),
                     ("logout", {"token": "made-up"}), ("heartbeat", {"token": "t" * 128})]:
        reply = call(sock, op, body)
        assert reply.rc == "UNAUTHORIZED", (op, body, reply)
    # A real token works; a real site is not disturbed by guesses.
    start_site(parent, "real-site")
    token = call(sock, "login", {"name": "raw-site"}).body["token"]
    assert call(sock, "heartbeat", {"token": token}).rc == "OK"
    assert call(sock, "heartbeat", {"token": token[:-1] + ("A" if token[-1] != "A" else "B")}).rc == "UNAUTHORIZED"
    assert call(sock, "logout", {"token": token}).rc == "OK"
    assert call(sock, "heartbeat", {"token": token}).rc == "UNAUTHORIZED"  # gone after logout
    assert [c["name"] for c in parent.admin.clients()] == ["real-site"]


def test_a_peer_cannot_take_over_another_peers_identity(parent, peers):
    """Sessions are bound to the ROUTER identity, so reusing one must not hijack the session."""
    victim = peers(parent.info["sites"], identity=b"victim")
    token = call(victim, "login", {"name": "victim-site"}).body["token"]
    thief = peers(parent.info["sites"], identity=b"victim")
    thief.send_multipart(encode(Message("login", {"name": "thief-site"}, id=next_id())))
    time.sleep(0.3)
    # The victim still gets its replies; the thief gets nothing meant for the victim.
    assert call(victim, "heartbeat", {"token": token}).rc == "OK"
    assert receive(thief, 0.3) is None
    assert [c["name"] for c in parent.admin.clients()] == ["victim-site"]


# --- stored values that later travel back ---------------------------------------------------------------

def test_deeply_nested_site_resources_cannot_break_the_registry_listing(parent, peers, start_site, make_job):
    """Once, resources nested ~1000 deep were stored, then every admin 'clients' killed the parent."""
    sock = peers(parent.info["sites"])
    mid = next_id()
    # {"v":1,"id":mid,"op":"login","b":{"name":"deep","resources":{"a":{"a":...}}}} 1024 levels deep in all.
    sock.send(b"\x84\xa1v\x01\xa2id\xce" + mid.to_bytes(4, "big") + b"\xa2op\xa5login\xa1b\x82\xa4name\xa4deep"
              b"\xa9resources" + b"\x81\xa1a" * 1021 + b"\x80")
    reply = reply_to(sock, mid)
    assert reply.rc == "BAD_REQUEST" and "'resources'" in reply.body["reason"]
    assert parent.admin.clients() == []
    assert_still_serves(parent, start_site, make_job, peers, "site-after-deep")


# --- floods ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("socket_name", SOCKETS)
def test_a_flood_of_malformed_messages_does_not_starve_another_admin_peer(parent, peers, socket_name):
    flooder = peers(parent.info[socket_name])
    admin = peers(parent.info["admin"])
    rnd = random.Random(0)
    kinds = [
        lambda: [b"\xc1" + rnd.randbytes(rnd.randrange(1, 100))],  # garbage: dropped
        lambda: [raw_header(op=rnd.randrange(100))],  # answered BAD_REQUEST (never read by the flooder)
        lambda: encode(Message("no-such-op", {}, id=next_id())),  # answered BAD_REQUEST
        lambda: encode(Message("ping", {}, id=next_id(), re=rnd.randrange(1 << 30), rc="OK")),  # dropped
        lambda: [b"\x85\xa1v\x01\xa2op"],  # truncated: dropped
    ]
    latencies = []
    for i in range(5000):
        flooder.send_multipart(kinds[i % len(kinds)]())
        if i % 1250 == 1249:
            t0 = time.monotonic()
            assert call(admin, "ping", timeout=5).rc == "OK"
            latencies.append(time.monotonic() - t0)
    t0 = time.monotonic()
    assert call(admin, "ping", timeout=5).rc == "OK"
    latencies.append(time.monotonic() - t0)
    assert max(latencies) < 2.0, latencies
    assert parent.proc.poll() is None
    # The flooder itself is still served once it reads again. (While it did not read, answers
    # beyond the high-water mark were dropped; so read what was queued first.)
    deadline = time.monotonic() + 10
    while receive(flooder, 0.5) is not None:
        assert time.monotonic() < deadline, "the parent kept sending"
    reply = call(flooder, "frobnicate")
    assert reply.rc == "BAD_REQUEST" and "'frobnicate'" in reply.body["reason"]
