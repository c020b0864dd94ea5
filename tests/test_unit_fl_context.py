"""Unit tests of `flrunner.fl_context`: private/sticky props, as NVIDIA FLARE defines them."""

from __future__ import annotations

from flrunner.fl_context import FLContext, FLContextKey, FLContextManager


class Engine:
    pass


def make_manager(**kw) -> tuple[FLContextManager, Engine]:
    engine = Engine()
    return FLContextManager(engine=engine, identity_name="server", job_id="job-1", **kw), engine


def test_new_context_carries_engine_job_id_and_identity():
    mgr, engine = make_manager()
    ctx = mgr.new_context()
    assert ctx.get_engine() is engine
    assert ctx.get_job_id() == "job-1"
    assert ctx.get_identity_name() == "server"
    # the engine is private (it never travels); the job id and identity are public
    public = ctx.get_all_public_props()
    assert FLContextKey.ENGINE not in public
    assert public[FLContextKey.JOB_ID] == "job-1"
    assert public[FLContextKey.IDENTITY_NAME] == "server"


def test_bare_context_defaults():
    ctx = FLContext()
    assert ctx.get_engine() is None
    assert ctx.get_job_id() is None
    assert ctx.get_identity_name() == ""
    assert ctx.get_identity_name("anon") == "anon"
    assert ctx.get_prop("missing", 5) == 5
    assert ctx.set_prop("k", 1) is True  # no manager: still works
    assert ctx.get_prop("k") == 1


def test_default_flags_are_private_and_sticky():
    mgr, _ = make_manager()
    ctx = mgr.new_context()
    ctx.set_prop("k", 1)
    assert ctx.get_prop_detail("k") == {"value": 1, "private": True, "sticky": True}
    assert ctx.get_prop_detail("nope") is None


def test_sticky_props_appear_in_later_contexts():
    mgr, _ = make_manager()
    c1 = mgr.new_context()
    assert c1.set_prop("round", 3, private=False, sticky=True)
    assert c1.set_prop("tmp", "x", private=False, sticky=False)
    c2 = mgr.new_context()
    assert c2.get_prop("round") == 3
    assert c2.get_prop_detail("round") == {"value": 3, "private": False, "sticky": True}
    assert c2.get_prop("tmp") is None  # not sticky: stays in c1
    # updating a sticky prop updates what later contexts start with
    assert c2.set_prop("round", 4, private=False, sticky=True)
    assert mgr.new_context().get_prop("round") == 4
    # an earlier context is a snapshot: it is not changed
    assert c1.get_prop("round") == 3


def test_private_sticky_prop_stays_private_in_later_contexts():
    mgr, _ = make_manager()
    c1 = mgr.new_context()
    c1.set_prop("secret", "s3cr3t", private=True, sticky=True)
    c2 = mgr.new_context()
    assert c2.get_prop("secret") == "s3cr3t"
    assert "secret" not in c2.get_all_public_props()


def test_private_props_are_excluded_from_public_props():
    ctx = FLContext()
    ctx.set_prop("pub", 1, private=False, sticky=False)
    ctx.set_prop("priv", 2, private=True, sticky=False)
    assert ctx.get_all_public_props() == {"pub": 1}


def test_resetting_with_other_flags_is_refused_and_keeps_the_value():
    mgr, _ = make_manager()
    ctx = mgr.new_context()
    assert ctx.set_prop("k", "old", private=False, sticky=True)
    assert ctx.set_prop("k", "new", private=True, sticky=True) is False
    assert ctx.set_prop("k", "new", private=False, sticky=False) is False
    assert ctx.get_prop("k") == "old"
    assert ctx.get_prop_detail("k") == {"value": "old", "private": False, "sticky": True}
    assert mgr.new_context().get_prop("k") == "old"  # the refused value did not become sticky
    assert ctx.set_prop("k", "new", private=False, sticky=True) is True  # same flags: allowed
    assert ctx.get_prop("k") == "new"


def test_reserved_props_keep_their_flags():
    mgr, engine = make_manager()
    ctx = mgr.new_context()
    # the job id is public and not sticky; a component cannot turn it into a sticky private prop
    assert ctx.set_prop(FLContextKey.JOB_ID, "other", private=True, sticky=True) is False
    assert ctx.get_job_id() == "job-1"
    assert ctx.set_prop(FLContextKey.ENGINE, None, private=False, sticky=False) is False
    assert ctx.get_engine() is engine


def test_manager_initial_stickers():
    mgr, _ = make_manager(public_stickers={"a": 1}, private_stickers={"b": 2})
    ctx = mgr.new_context()
    assert ctx.get_prop("a") == 1 and ctx.get_prop("b") == 2
    assert ctx.get_all_public_props()["a"] == 1
    assert "b" not in ctx.get_all_public_props()
    assert ctx.get_prop_detail("a")["sticky"] is True


def test_remove_prop_and_context_manager_protocol():
    mgr, _ = make_manager()
    with mgr.new_context() as ctx:
        ctx.set_prop("x", 1, private=False, sticky=False)
        ctx.remove_prop("x")
        ctx.remove_prop("never-set")
        assert ctx.get_prop("x") is None
        assert ctx.set_prop("x", 2, private=True, sticky=False)  # free to use other flags now
