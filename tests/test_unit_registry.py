"""Unit tests of `parent.sites.registry.SiteRegistry`: tokens, expiry on a fake clock, revisions, deltas."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flrunner.errors import Conflict, Unauthorized
from parent.sites.registry import ADDED, REMOVED, SiteRecord, SiteRegistry

from .support import FakeClock


class ChangesSeen:
    """The registry's events: every (base, revision, changes) it announces."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, list[dict]]] = []

    def sites_changed(self, base: int, revision: int, changes: list[dict]) -> None:
        self.seen.append((base, revision, changes))


def make_registry(timeout: float = 10.0, change_log: int = 4096,
                  events: ChangesSeen | None = None) -> tuple[SiteRegistry, FakeClock]:
    clock = FakeClock(1000.0)
    wall = FakeClock(1_700_000_000.0)
    return SiteRegistry(timeout, clock=clock, wall=wall, change_log=change_log, events=events), clock  # type: ignore[arg-type]


def by_name(clients: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in clients}


def apply_changes(base: dict[str, dict], changes: list[dict]) -> dict[str, dict]:
    out = dict(base)
    for ch in changes:
        if ch["op"] == ADDED:
            out[ch["client"]["name"]] = ch["client"]
        elif ch["op"] == REMOVED:
            out.pop(ch["name"], None)
        else:  # pragma: no cover - the registry only emits the two ops
            raise AssertionError(f"unknown op {ch['op']!r}")
    return out


# --- tokens ---------------------------------------------------------------------------------------

def test_login_gives_distinct_random_tokens():
    reg, _ = make_registry()
    recs = [reg.login(f"site-{i}", b"id%d" % i) for i in range(50)]
    tokens = [r.token for r in recs]
    assert len(set(tokens)) == 50
    assert all(isinstance(t, str) and len(t) >= 24 for t in tokens)
    # Two registries never hand out the same token for the same name (randomness, not a counter).
    other, _ = make_registry()
    assert other.login("site-0", b"x").token != recs[0].token
    for r in recs:
        assert reg.authenticate(r.token) is r


def test_a_login_after_the_old_session_went_silent_replaces_it():
    reg, clock = make_registry(timeout=10.0)
    old = reg.login("site-a", b"id1", {"num_gpus": 1}, instance="first")
    clock.advance(10.5)  # silent past the timeout, not swept by expire() yet
    new = reg.login("site-a", b"id2", {"num_gpus": 2}, instance="second")
    assert new.token != old.token
    assert len(reg) == 1
    with pytest.raises(Unauthorized):
        reg.authenticate(old.token)
    with pytest.raises(Unauthorized):
        reg.heartbeat(old.token)
    with pytest.raises(Unauthorized):
        reg.logout(old.token)
    assert reg.authenticate(new.token).identity == b"id2"
    assert reg.get("site-a").props == {"num_gpus": 2}
    # The replacement is one revision: the removal of the old session, then the new one.
    rev_before = reg.revision - 1
    delta = reg.changes_since(rev_before)
    assert [c["op"] for c in delta] == [REMOVED, ADDED]
    assert delta[0]["name"] == "site-a"
    assert delta[1]["client"]["token"] == new.token


@pytest.mark.parametrize("first, second", [("agent-1", "agent-2"), ("agent-1", None), (None, None), (None, "agent-1")],
                         ids=["another-instance", "second-sends-none", "neither-sends-one", "first-sent-none"])
def test_another_agent_is_refused_while_the_session_is_alive(first, second):
    reg, clock = make_registry(timeout=30.0)
    held = reg.login("site-a", b"id1", {"pid": 4242}, instance=first)
    rev = reg.revision
    clock.advance(2.1)
    with pytest.raises(Conflict) as refused:
        reg.login("site-a", b"id2", {"pid": 777}, instance=second)
    assert str(refused.value) == ("site 'site-a' is already logged in from another agent (pid 4242, last seen 2.1s "
                                  "ago); stop that agent, or wait up to 28s for its session to expire")
    assert refused.value.rc == "CONFLICT"
    # The registration is untouched: same record, token, identity, no revision.
    assert reg.get("site-a") is held and reg.authenticate(held.token) is held
    assert held.identity == b"id1" and held.props == {"pid": 4242}
    assert reg.revision == rev and reg.changes_since(rev) == []
    # At exactly the timeout the session is still alive; just past it, the other agent gets in.
    clock.advance(27.9)
    with pytest.raises(Conflict, match="wait up to 0s"):
        reg.login("site-a", b"id2", {"pid": 777}, instance=second)
    clock.advance(0.01)
    assert reg.login("site-a", b"id2", {"pid": 777}, instance=second).token != held.token


def test_another_agent_gets_in_once_the_first_logs_out():
    reg, _ = make_registry()
    first = reg.login("site-a", b"id1", instance="agent-1")
    with pytest.raises(Conflict):
        reg.login("site-a", b"id2", instance="agent-2")
    reg.logout(first.token)
    assert reg.login("site-a", b"id2", instance="agent-2").identity == b"id2"


def test_a_refusal_names_an_unknown_pid():
    reg, _ = make_registry()
    reg.login("site-a", b"id1")
    with pytest.raises(Conflict, match=r"\(pid unknown, last seen 0.0s ago\)"):
        reg.login("site-a", b"id2")


def test_the_same_agent_logging_in_again_resumes_its_session_unchanged():
    events = ChangesSeen()
    reg, clock = make_registry(timeout=10.0, events=events)
    rec = reg.login("site-a", b"id1", {"pid": 1, "resources": {"num_gpus": 1}}, instance="agent-1")
    reg.login("site-b", b"idb")
    rev, token, login_time, listed = reg.revision, rec.token, rec.login_time, reg.clients()
    clock.advance(9.0)  # it thought the parent lost and logs in again, before its session expired
    again = reg.login("site-a", b"id2", {"pid": 1, "resources": {"num_gpus": 1}}, instance="agent-1")
    assert again is rec and again.token == token and again.login_time == login_time
    assert again.identity == b"id2" and again.last_seen == clock.now
    assert reg.revision == rev and reg.changes_since(rev) == [] and [r for _, r, _ in events.seen] == [1, 2]  # no push
    assert reg.authenticate(token) is rec
    assert reg.clients() == list(reversed(listed))  # the same entries; site-a is now the last heard
    assert reg.names() == ["site-b", "site-a"]
    clock.advance(9.0)  # the resumed session counts from the re-login: site-b expires, site-a does not
    assert reg.expire() == ["site-b"]


def test_any_text_is_an_instance_id():
    reg, _ = make_registry()
    rec = reg.login("site-a", b"id1", instance="é")  # a peer's text, not only our hex ids
    assert reg.login("site-a", b"id1", instance="é") is rec
    with pytest.raises(Conflict):
        reg.login("site-a", b"id1", instance="ü")


def test_the_same_agent_with_other_props_keeps_its_token_in_one_added_change():
    reg, _ = make_registry()
    rec = reg.login("site-a", b"id1", {"resources": {"num_gpus": 1}}, instance="agent-1")
    rev = reg.revision
    again = reg.login("site-a", b"id1", {"resources": {"num_gpus": 2}}, instance="agent-1")
    assert again is rec and again.token == rec.token
    assert reg.revision == rev + 1
    assert reg.changes_since(rev) == [{"op": ADDED, "client": rec.to_client().to_dict(with_token=True)}]
    assert reg.changes_since(rev)[0]["client"]["props"] == {"resources": {"num_gpus": 2}}


def test_heartbeat_with_unknown_token_is_unauthorized():
    reg, _ = make_registry()
    reg.login("site-a", b"id")
    with pytest.raises(Unauthorized):
        reg.heartbeat("not-a-token")
    with pytest.raises(Unauthorized):
        reg.heartbeat("")


def test_logout_then_token_is_dead():
    reg, _ = make_registry()
    rec = reg.login("site-a", b"id")
    rev = reg.revision
    assert reg.logout(rec.token) is rec
    assert "site-a" not in reg
    assert reg.revision == rev + 1
    assert reg.changes_since(rev) == [{"op": REMOVED, "name": "site-a"}]
    with pytest.raises(Unauthorized):
        reg.heartbeat(rec.token)


def test_heartbeat_updates_identity_and_last_seen():
    reg, clock = make_registry()
    rec = reg.login("site-a", b"id1")
    rev = reg.revision
    clock.advance(3)
    reg.heartbeat(rec.token, b"id2")
    assert rec.last_seen == clock.now
    assert rec.identity == b"id2"
    reg.heartbeat(rec.token)
    assert rec.identity == b"id2"
    assert reg.revision == rev  # a heartbeat is not a change of membership


# --- expiry ---------------------------------------------------------------------------------------

def test_expire_drops_exactly_the_silent_sites_and_bumps_revision():
    reg, clock = make_registry(timeout=10.0)
    recs = {}
    for name in ("a", "b", "c", "d"):
        recs[name] = reg.login(name, name.encode())
        clock.advance(1)
    # now = 1004; a@1000 b@1001 c@1002 d@1003. b heartbeats, so it becomes the most recent.
    clock.advance(5)  # 1009
    reg.heartbeat(recs["b"].token)
    rev = reg.revision
    assert reg.expire() == []  # nobody silent > 10 s yet
    assert reg.revision == rev

    clock.advance(3.5)  # 1012.5: a (12.5 s) and c (10.5 s) are silent; d (9.5 s) and b (3.5 s) are not
    gone = reg.expire()
    assert gone == ["a", "c"]  # in last-heard order
    assert sorted(n for n in ("a", "b", "c", "d") if n in reg) == ["b", "d"]
    assert reg.revision == rev + 1  # one expiry sweep is one revision
    assert reg.changes_since(rev) == [{"op": REMOVED, "name": "a"}, {"op": REMOVED, "name": "c"}]
    for n in ("a", "c"):
        with pytest.raises(Unauthorized):
            reg.authenticate(recs[n].token)
    assert reg.expire() == []
    assert reg.revision == rev + 1


def test_expire_at_exact_timeout_keeps_the_site():
    reg, clock = make_registry(timeout=10.0)
    reg.login("a", b"a")
    clock.advance(10.0)
    assert reg.expire() == []
    clock.advance(0.001)
    assert reg.expire() == ["a"]


class _CountingRecord(SiteRecord):
    reads = 0

    def __getattribute__(self, name: str):
        if name == "last_seen":
            type(self).reads += 1
        return super().__getattribute__(name)


def test_expire_costs_o_expired_not_o_sites():
    reg, clock = make_registry(timeout=10.0)
    for i in range(3):
        reg.login(f"old-{i}", b"x")
    clock.advance(20)
    for i in range(500):
        reg.login(f"new-{i}", b"x")
    for rec in reg._sites.values():  # count how many records expire() looks at
        rec.__class__ = _CountingRecord
    _CountingRecord.reads = 0
    assert reg.expire() == ["old-0", "old-1", "old-2"]
    # The three expired ones and the first live one, not all 503.
    assert _CountingRecord.reads <= 4


def test_events_get_base_revision_and_changes():
    events = ChangesSeen()
    reg, clock = make_registry(timeout=1.0, events=events)
    seen = events.seen
    a = reg.login("a", b"a")
    clock.advance(5)
    reg.expire()
    assert seen[0][0:2] == (0, 1)
    assert seen[0][2][0]["client"]["token"] == a.token
    assert seen[1] == (1, 2, [{"op": REMOVED, "name": "a"}])


# --- changes_since --------------------------------------------------------------------------------

def test_changes_since_exact_ordered_delta():
    reg, _ = make_registry()
    assert reg.changes_since(0) == []
    a = reg.login("a", b"a")  # rev 1
    b = reg.login("b", b"b")  # rev 2
    reg.logout(a.token)  # rev 3
    assert reg.revision == 3
    d = reg.changes_since(1)
    assert d == [{"op": ADDED, "client": b.to_client().to_dict(with_token=True)},
                 {"op": REMOVED, "name": "a"}]
    d0 = reg.changes_since(0)
    assert [c["op"] for c in d0] == [ADDED, ADDED, REMOVED]
    assert d0[0]["client"]["name"] == "a" and d0[1]["client"]["name"] == "b"
    assert reg.changes_since(3) == []


def test_changes_since_none_for_too_old_or_future_revision():
    reg, _ = make_registry(change_log=3)
    for i in range(5):
        reg.login(f"s{i}", b"x")  # revisions 1..5; the log keeps 3, 4, 5 (bases 2, 3, 4)
    assert reg.revision == 5
    assert reg.changes_since(5) == []
    assert [c["client"]["name"] for c in reg.changes_since(2)] == ["s2", "s3", "s4"]
    assert [c["client"]["name"] for c in reg.changes_since(4)] == ["s4"]
    assert reg.changes_since(1) is None
    assert reg.changes_since(0) is None
    assert reg.changes_since(6) is None
    assert reg.changes_since(100) is None


def test_changes_since_future_revision_on_empty_registry():
    reg, _ = make_registry()
    assert reg.changes_since(1) is None
    assert reg.changes_since(-1) is None


def test_listing_has_no_tokens():
    reg, clock = make_registry()
    a = reg.login("a", b"a", {"num_gpus": 1})
    clock.advance(2)
    reg.login("b", b"b")
    listing = reg.listing()
    assert [r["name"] for r in listing] == ["a", "b"]
    for row in listing:
        assert "token" not in row
        assert a.token not in repr(row)
        assert set(row) == {"name", "last_seen", "login_time", "props"}
    # last_seen is reported on the wall clock: a was heard 2 s before "now".
    assert listing[1]["last_seen"] - listing[0]["last_seen"] == pytest.approx(2.0)
    assert all("token" not in c for c in reg.clients(with_tokens=False))
    assert all("token" in c for c in reg.clients())


# --- property: deltas rebuild the latest client list ----------------------------------------------

NAMES = ["a", "b", "c", "d"]
_op = st.one_of(
    st.tuples(st.just("login"), st.tuples(st.sampled_from(NAMES), st.sampled_from(["agent-1", "agent-2", None]),
                                           st.integers(0, 1))),
    st.tuples(st.just("logout"), st.sampled_from(NAMES)),
    st.tuples(st.just("heartbeat"), st.sampled_from(NAMES)),
    st.tuples(st.just("tick"), st.floats(min_value=0.0, max_value=6.0, allow_nan=False)),
    st.tuples(st.just("expire"), st.none()),
    st.tuples(st.just("snapshot"), st.none()),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_op, max_size=40), change_log=st.integers(min_value=1, max_value=12))
def test_deltas_applied_to_an_old_list_reproduce_latest_clients(ops, change_log):
    reg, clock = make_registry(timeout=10.0, change_log=change_log)
    snapshots = [(reg.revision, by_name(reg.clients()))]
    for op, arg in ops:
        if op == "login":
            name, instance, version = arg  # the same agent may come back with other props
            rev = reg.revision
            try:
                reg.login(name, name.encode(), {"n": name, "v": version}, instance=instance)
            except Conflict:
                assert reg.revision == rev  # a refused login changes nothing
        elif op == "logout":
            rec = reg.get(arg)
            if rec is not None:
                reg.logout(rec.token)
        elif op == "heartbeat":
            rec = reg.get(arg)
            if rec is not None:
                reg.heartbeat(rec.token)
        elif op == "tick":
            clock.advance(arg)
        elif op == "expire":
            reg.expire()
        else:
            snapshots.append((reg.revision, by_name(reg.clients())))
    latest = by_name(reg.clients())
    for rev, clients_at_rev in snapshots:
        delta = reg.changes_since(rev)
        if rev < reg.revision - change_log:
            assert delta is None, (rev, reg.revision, change_log)
            continue
        assert delta is not None, (rev, reg.revision, change_log)
        assert apply_changes(clients_at_rev, delta) == latest
    # Every token in the registry authenticates to its own site.
    for name, c in latest.items():
        assert reg.authenticate(c["token"]).name == name
