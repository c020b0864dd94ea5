"""The per-peer rate limiter: messages and bytes a second (fake clock), and how a socket uses it."""

from __future__ import annotations

import pytest
import zmq

from flrunner.protocol import Channel, Field, Op, Rc, admin_ops, aux_ops, job_ops, site_ops  # noqa: F401
from flrunner.transport.wire import Message, decode, encode, next_id
from parent.edge.limits import RateLimiter, format_bytes
from parent.edge.endpoint import RouterEndpoint

from .support import FakeClock


def test_a_burst_then_the_rate_and_one_notice_a_second():
    clock = FakeClock()
    rl = RateLimiter(rate=10, burst=5, clock=clock)
    assert [rl.allow(b"a")[0] for _ in range(5)] == [True] * 5
    assert rl.allow(b"a") == (False, "10 messages/s")  # over: dropped, told once
    assert rl.allow(b"a") == (False, None)             # not told again within the second
    assert rl.allow(b"b") == (True, None)              # another peer is not affected
    clock.now += 0.25                                  # two tokens back (and a half)
    assert [rl.allow(b"a")[0] for _ in range(3)] == [True, True, False]
    clock.now += 1.0
    assert rl.allow(b"a") == (True, None)
    assert rl.limited == 3


def test_bytes_are_counted_apart_from_messages():
    clock = FakeClock()
    rl = RateLimiter(None, byte_rate=1000, byte_burst=4000, clock=clock)
    assert rl.allow(b"a", 3000) == (True, None)
    assert rl.allow(b"a", 1500) == (False, "1000 B/s in bursts of 3.906 KiB")
    assert rl.allow(b"a", 1000) == (True, None)  # what is left is enough for a smaller one
    assert rl.allow(b"a", 1) == (False, None)
    assert all(rl.allow(b"b", 1)[0] for _ in range(4000))  # no message limit: only bytes count
    clock.now += 0.5
    assert rl.allow(b"a", 500) == (True, None)
    assert rl.limited == 2


def test_a_message_over_the_burst_passes_from_a_rested_peer_and_leaves_a_debt():
    clock = FakeClock()
    rl = RateLimiter(None, byte_rate=1000, byte_burst=1000, clock=clock)
    assert rl.allow(b"a", 5000)[0]  # a full bucket lets it through: 4000 bytes owed
    clock.now += 4.0
    assert not rl.allow(b"a", 1)[0]  # still in debt
    clock.now += 1.0
    assert rl.allow(b"a", 1000)[0]   # paid off and full again
    clock.now += 0.999
    assert not rl.allow(b"a", 5000)[0]  # only a full bucket admits a message over the burst


@pytest.mark.parametrize("huge_every", [1, 7])
def test_the_average_holds_whatever_the_message_sizes(huge_every):
    clock = FakeClock()
    rl = RateLimiter(None, byte_rate=10_000, byte_burst=50_000, clock=clock)
    accepted = 0
    for i in range(10_000):  # ten seconds of a peer sending as fast as it can, messages over the burst among them
        size = 120_000 if i % huge_every == 0 else 3_000
        if rl.allow(b"flood", size)[0]:
            accepted += size
        clock.now += 0.001
    # The bucket never owes more than one message's excess over the burst.
    assert 100_000 - 120_000 <= accepted <= 100_000 + 120_000


def test_both_limits_name_the_one_exceeded_and_a_refused_message_costs_nothing():
    clock = FakeClock()
    rl = RateLimiter(rate=2, burst=2, byte_rate=100, byte_burst=100, clock=clock)
    assert rl.allow(b"a", 60)[0]
    assert rl.allow(b"a", 60) == (False, "100 B/s in bursts of 100 B")
    assert rl.allow(b"a", 40)[0]  # the refused message took no message token
    clock.now += 1.0
    assert rl.allow(b"a", 0)[0] and rl.allow(b"a", 0)[0]
    assert rl.allow(b"a", 0) == (False, "2 messages/s")


def test_a_rate_needs_its_burst():
    with pytest.raises(ValueError):
        RateLimiter(10)
    with pytest.raises(ValueError):
        RateLimiter(None, byte_rate=10)


def test_idle_peers_are_forgotten_unless_still_in_debt():
    clock = FakeClock()
    rl = RateLimiter(rate=1, burst=1, byte_rate=1000, byte_burst=1000, clock=clock)
    rl.allow(b"a", 10)
    rl.allow(b"in-debt", 100_000)  # owes 99 s
    clock.now += 61
    rl.allow(b"b")
    rl.prune(idle=60)
    assert sorted(rl._buckets) == [b"b", b"in-debt"]
    clock.now += 40  # paid off now; "b" has been silent for 40 s only
    rl.prune(idle=60)
    assert list(rl._buckets) == [b"b"]


def test_sizes_for_people():
    assert [format_bytes(n) for n in (300, 1536, 64 << 20, 1023 << 20, 4 << 30)] == \
        ["300 B", "1.5 KiB", "64 MiB", "1023 MiB", "4 GiB"]


def test_a_socket_drops_what_is_over_the_byte_limit_and_tells_the_peer_once():
    clock = FakeClock()
    ctx = zmq.Context()
    endpoint = RouterEndpoint(ctx, "admin", admin_ops.FROM_ADMIN, 1 << 20,
                              limiter=RateLimiter(None, byte_rate=1000, byte_burst=10_000, clock=clock))
    peer = ctx.socket(zmq.DEALER)
    try:
        endpoint.on(admin_ops.PING, lambda req: {"pong": True})
        address = endpoint.bind("inproc://limits")
        peer.connect(address)
        ids = [next_id() for _ in range(4)]
        for mid in ids:  # a small header and 4 KB of raw frames each: two fit in the burst
            peer.send_multipart(encode(Message("ping", {}, id=mid, frames=[b"x" * 4000])))
        while endpoint.dropped < 2:
            endpoint.process_ready()
        replies = []
        while peer.poll(200):
            replies.append(decode(peer.recv_multipart()))
        assert [(r.re, r.rc) for r in replies] == [(ids[0], "OK"), (ids[1], "OK"), (ids[2], "RATE_LIMITED")]
        assert replies[2].body["reason"] == ("rate limit of the admin socket exceeded (1000 B/s in bursts of "
                                             "9.766 KiB); messages are dropped")
    finally:
        peer.close(0)
        endpoint.close()
        ctx.term()
