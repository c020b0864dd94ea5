"""Aux messages between a job's engine and real site processes, routed by the parent.

Each test starts a real parent, real site agents and a real job process. The job's workflow (in
``tests/job_components_aux.py``) makes its aux calls, times them, and writes what came back to a
JSON file in its run dir; the test waits for the job to end and reads that file. Site-side
behaviour (echo, slow, hanging, raising, crashing) is chosen per request by the executor
``job_components_aux.SiteTasks``. Both ways of deploying a site app are covered: to named sites
(``sites=[...]``: deploy map ``{"app_site": [names]}``) and to ``@ALL``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from .support import wait_for
from .job_components_aux import SITE_TASKS

SITE_APP = {"executors": [(SITE_TASKS, "job_components_aux.SiteTasks", {})]}
GREETER_APP = {**SITE_APP, "components": [("greeter", "job_components_aux.SiteGreeter", {})]}


# --- helpers -----------------------------------------------------------------------------------------


def start_sites(parent, start_site, *names: str) -> dict:
    """Start the sites at once (they boot in parallel); return {name: Popen} once all are logged in."""
    procs = {name: start_site(parent, name, wait=False) for name in names}
    wait_for(lambda: set(names) <= {c["name"] for c in parent.admin.clients()}, 15, f"sites {names} to log in")
    return procs


def site_names(parent) -> set[str]:
    return {c["name"] for c in parent.admin.clients()}


def calls_job(make_job, calls: list[dict], sites: list[str] | None = None, site_app: dict = SITE_APP,
              name: str = "aux-job", **wf_args) -> Path:
    return make_job([("wf", "job_components_aux.AuxCalls", {"calls": calls, **wf_args})], site_app=site_app,
                    sites=sites, name=name)


def run_job(parent, job_dir: Path, timeout: float = 20.0) -> tuple[str, dict]:
    job_id = parent.admin.submit(job_dir)
    job = parent.wait_final(job_id, timeout)
    assert job["status"] == "FINISHED:COMPLETED", json.dumps(job, indent=1)
    return job_id, job


def result(tmp: Path, job_id: str, name: str = "aux.json"):
    return json.loads((tmp / "ws" / "jobs" / job_id / name).read_text())


def site_run_dir(tmp: Path, site: str, job_id: str) -> Path:
    """A job's run dir on a site (the site agent's workspace is ``flrunner-site-<name>`` in its cwd)."""
    return tmp / f"flrunner-site-{site}" / "jobs" / job_id


def peak_rss(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


# --- round trips -------------------------------------------------------------------------------------


def test_round_trip_to_named_sites_gives_each_its_own_reply(parent, start_site, make_job, tmp):
    """The site app goes to two named sites of three: a request without targets reaches exactly
    those two, each reply carries that site's answer; explicit targets work too."""
    start_sites(parent, start_site, "site-1", "site-2", "site-3")
    job_id, _ = run_job(parent, calls_job(make_job, [
        {"topic": "echo", "payload": {"x": 1, "nested": {"l": [1, 2.5, "s", None, True]}}, "hex": {"b": "0001"}},
        {"topic": "echo", "targets": ["site-2"], "payload": {"only": "two"}},
    ], sites=["site-1", "site-3"]))
    to_all, to_two = result(tmp, job_id)
    assert sorted(to_all["replies"]) == ["site-1", "site-3"]
    b_hash = {"sha256": hashlib.sha256(b"\x00\x01").hexdigest(), "len": 2}  # how _data shows bytes
    for site, r in to_all["replies"].items():
        assert r["rc"] == "OK", r
        assert r["data"] == {"echo": {"x": 1, "nested": {"l": [1, 2.5, "s", None, True]}, "b": b_hash},
                             "site": site, "task": "echo"}
    # site-2 is logged in but the job was not deployed to it: not a site of this job.
    assert to_two["replies"]["site-2"]["rc"] == "NOT_FOUND"
    assert "not a site of this job" in to_two["replies"]["site-2"]["reason"]


def test_round_trip_to_all_sites_and_errors_of_site_handlers(parent, start_site, make_job, tmp):
    """``@ALL``: every site answers; a raising executor comes back as EXECUTION_EXCEPTION with the
    exception in header ``reason``; a task nobody serves as TOPIC_UNKNOWN; an executor that
    returns a plain dict as EXECUTION_RESULT_ERROR."""
    start_sites(parent, start_site, "site-a", "site-b")
    job_id, _ = run_job(parent, calls_job(make_job, [
        {"topic": "echo", "payload": {"n": 7}},
        {"topic": "boom"},
        {"topic": "nobody_serves_this"},
        {"topic": "not_a_shareable"},
    ]))
    echo, boom, unknown, not_shareable = result(tmp, job_id)
    assert {s: r["data"]["site"] for s, r in echo["replies"].items()} == {"site-a": "site-a", "site-b": "site-b"}
    assert all(r["rc"] == "OK" and r["data"]["echo"] == {"n": 7} for r in echo["replies"].values())
    for site, r in boom["replies"].items():
        assert r["rc"] == "EXECUTION_EXCEPTION", r
        assert r["reason"].startswith("KeyError") and f"site {site} failed on purpose" in r["reason"]
    for site, r in unknown["replies"].items():
        assert r["rc"] == "TOPIC_UNKNOWN" and "nobody_serves_this" in r["reason"], r
    for r in not_shareable["replies"].values():
        assert r["rc"] == "EXECUTION_RESULT_ERROR" and "dict" in r["reason"], r


def test_requests_to_several_sites_are_concurrent(parent, start_site, make_job, tmp):
    """Three sites that each take 1 s answer one request in about 1 s, not 3 s."""
    start_sites(parent, start_site, "site-1", "site-2", "site-3")
    job_id, _ = run_job(parent, calls_job(make_job, [
        {"topic": "echo"},  # warm-up: the first request of a job pays one-off costs
        {"topic": "sleep", "payload": {"default": 1.0}, "timeout": 10},
    ], sites=["site-1", "site-2", "site-3"]))
    _, slow = result(tmp, job_id)
    assert sorted(slow["replies"]) == ["site-1", "site-2", "site-3"]
    assert all(r["rc"] == "OK" and r["data"]["slept"] >= 0.95 for r in slow["replies"].values()), slow
    assert 0.95 <= slow["elapsed"] < 2.5, f"3 sites x 1 s took {slow['elapsed']:.2f}s"


def test_concurrent_callers_each_get_their_own_replies(parent, start_site, make_job, tmp):
    """Four workflow threads send 10 requests each, at once, to two sites that answer after
    random delays: every reply reaches the call that asked for it, from the site it names."""
    start_sites(parent, start_site, "site-1", "site-2")
    job_id, _ = run_job(parent, make_job([("wf", "job_components_aux.ConcurrentCalls", {"threads": 4, "calls": 10})],
                                         site_app=SITE_APP, sites=["site-1", "site-2"]))
    r = result(tmp, job_id, "concurrent.json")
    assert r["sites"] == ["site-1", "site-2"]
    assert r["bad_count"] == 0 and r["good"] == 4 * 10 * 2, r


# --- failures: timeout, unknown, offline, crash ------------------------------------------------------


def test_site_that_does_not_answer_in_time_gets_timeout_and_others_ok(parent, start_site, make_job, tmp):
    """site-2 takes 30 s; with ``timeout=2`` its reply is TIMEOUT, the others' are OK, and the
    call returns after about 2 s."""
    start_sites(parent, start_site, "site-1", "site-2", "site-3")
    job_id, _ = run_job(parent, calls_job(make_job, [
        {"topic": "sleep", "payload": {"delays": {"site-2": 30.0}, "default": 0.2}, "timeout": 2.0},
    ]))
    [call] = result(tmp, job_id)
    replies = call["replies"]
    assert sorted(replies) == ["site-1", "site-2", "site-3"]
    assert replies["site-2"]["rc"] == "TIMEOUT" and "site-2" in replies["site-2"]["reason"], replies
    assert replies["site-1"]["rc"] == replies["site-3"]["rc"] == "OK", replies
    assert 1.9 <= call["elapsed"] < 3.0, f"timeout 2 s, returned after {call['elapsed']:.2f}s"


def test_unknown_target_is_not_found_and_logged_out_target_is_communication_error(parent, start_site, make_job, tmp):
    """Deployed to site-1 and site-2. site-2 logs out (SIGTERM) while the job runs: a request to
    it is COMMUNICATION_ERROR at once; a name that is no site of the job is NOT_FOUND; site-1
    still answers. Each failure says why in header ``reason``."""
    sites = start_sites(parent, start_site, "site-1", "site-2")
    job_id = parent.admin.submit(calls_job(make_job, [
        {"topic": "echo", "targets": ["site-1", "site-2", "ghost"], "timeout": 10.0},
    ], sites=["site-1", "site-2"], wait_sites=["site-1", "site-2"], wait_gone=["site-2"]))
    parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("message") == "ready")
    sites["site-2"].send_signal(signal.SIGTERM)
    assert sites["site-2"].wait(10) == 0
    assert site_names(parent) == {"site-1"}  # logged out, not waiting for the site timeout
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED", job
    [call] = result(tmp, job_id)
    replies = call["replies"]
    assert replies["site-1"]["rc"] == "OK"
    assert replies["ghost"]["rc"] == "NOT_FOUND" and "ghost" in replies["ghost"]["reason"], replies
    assert replies["site-2"]["rc"] == "COMMUNICATION_ERROR", replies
    assert "site-2" in replies["site-2"]["reason"] and "not logged in" in replies["site-2"]["reason"]
    assert call["elapsed"] < 2.0, "an offline target must fail at once, not at the timeout"


def test_unknown_and_late_targets_of_an_all_sites_job(parent, start_site, make_job, tmp):
    """``@ALL``: a site that logged in after the job started its site app answers NOT_FOUND (the
    job is not running there); a name no site ever logged in with gets a failure at once. The
    parent keeps no list of sites that exist but are offline, so for ``@ALL`` it cannot tell
    "unknown" from "offline": that reply is COMMUNICATION_ERROR "not logged in"."""
    start_sites(parent, start_site, "site-1")
    job_id = parent.admin.submit(calls_job(make_job, [
        {"topic": "echo", "targets": ["site-1", "ghost", "site-late"]},
        {"topic": "echo"},  # no targets: the sites the job started on
    ], wait_sites=["site-late"]))
    parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("message") == "ready")
    start_sites(parent, start_site, "site-late")
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED", job
    named, default = result(tmp, job_id)
    replies = named["replies"]
    assert replies["site-1"]["rc"] == "OK"
    assert replies["site-late"]["rc"] == "NOT_FOUND", replies
    assert "not running on site site-late" in replies["site-late"]["reason"]
    assert replies["ghost"]["rc"] in ("NOT_FOUND", "COMMUNICATION_ERROR"), replies
    assert "ghost" in replies["ghost"]["reason"]
    assert named["elapsed"] < 2.0
    assert sorted(default["replies"]) == ["site-1"]


def test_target_that_logs_out_mid_request_fails_at_once(parent, start_site, make_job, tmp):
    """site-2 is serving a request (30 s timeout) when it logs out (SIGTERM): the waiting call
    gets COMMUNICATION_ERROR for it right away, not at the timeout; site-1's reply is OK."""
    sites = start_sites(parent, start_site, "site-1", "site-2")
    job_id = parent.admin.submit(calls_job(make_job, [
        {"topic": "hang", "payload": {"sites": ["site-2"]}, "timeout": 30.0},
    ], sites=["site-1", "site-2"]))
    hanging = site_run_dir(tmp, "site-2", job_id) / "hanging.json"
    wait_for(hanging.exists, 15, "site-2 to serve the request")
    logged_out = time.time()
    sites["site-2"].send_signal(signal.SIGTERM)
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED", job
    [call] = result(tmp, job_id)
    replies = call["replies"]
    assert replies["site-1"]["rc"] == "OK" and replies["site-1"]["data"] == {"site": "site-1", "hung": False}
    assert replies["site-2"]["rc"] == "COMMUNICATION_ERROR", replies
    assert "site-2" in replies["site-2"]["reason"] and "left" in replies["site-2"]["reason"]
    assert call["returned_at"] - logged_out < 2.0, "the departure must fail the request at once"
    assert sites["site-2"].wait(10) == 0


@pytest.mark.parametrize("site_timeout, aux_timeout, expect_rc, limit", [
    (2.0, 30.0, "COMMUNICATION_ERROR", 6.0),  # the parent drops the silent site first
    pytest.param(5.0, 1.5, "TIMEOUT", 2.5, marks=pytest.mark.slow),  # the aux timeout comes first
], ids=["site-timeout-first", "aux-timeout-first"])
def test_site_crashing_mid_request(start_parent, start_site, make_job, tmp, site_timeout, aux_timeout, expect_rc,
                                   limit):
    """site-2's process exits (os._exit) while serving a request. A crashed site is noticed by
    the parent only when it has been silent for the site timeout (checked once a second); then
    every request waiting on it fails at once with COMMUNICATION_ERROR "site 'site-2' left". So
    the workflow gets the failure at the site timeout or at the aux timeout, whichever comes
    first. site-1's reply is OK either way."""
    parent = start_parent("--abort-grace", "1", "--term-grace", "1", "--site-timeout", str(site_timeout))
    sites = start_sites(parent, start_site, "site-1", "site-2")
    job_id, _ = run_job(parent, calls_job(make_job, [
        {"topic": "crash", "payload": {"sites": ["site-2"]}, "timeout": aux_timeout},
    ], sites=["site-1", "site-2"]), timeout=20)
    assert sites["site-2"].wait(5) == 17
    [call] = result(tmp, job_id)
    replies = call["replies"]
    assert replies["site-1"]["rc"] == "OK" and replies["site-1"]["data"] == {"site": "site-1", "crashed": False}
    assert replies["site-2"]["rc"] == expect_rc, replies
    assert "site-2" in replies["site-2"]["reason"]
    if expect_rc == "COMMUNICATION_ERROR":
        assert "left" in replies["site-2"]["reason"]
    print(f"site timeout {site_timeout:g}s, aux timeout {aux_timeout:g}s: {expect_rc} after {call['elapsed']:.2f}s")
    assert call["elapsed"] < limit, f"the crash was reported after {call['elapsed']:.1f}s"
    wait_for(lambda: "site-2" not in site_names(parent), site_timeout + 3, "the parent to drop site-2")


# --- fire and forget ---------------------------------------------------------------------------------


def test_fire_and_forget_returns_at_once_and_the_sites_still_get_it(parent, start_site, make_job, tmp):
    """``timeout=0`` and ``fire_and_forget_aux_request`` return ``{}`` at once although each site
    takes 1 s; every site still receives both (it writes a file and acks to the engine)."""
    start_sites(parent, start_site, "site-1", "site-2")
    job_id, _ = run_job(parent, make_job([("wf", "job_components_aux.FireAndForget", {"delay": 1.0})],
                                         site_app=SITE_APP, sites=["site-1", "site-2"]))
    r = result(tmp, job_id, "ff.json")
    assert r["timeout0"] == {} and r["api"] == {}
    assert r["timeout0_elapsed"] < 0.5 and r["api_elapsed"] < 0.5, r
    acks = sorted((a["site"], a["tag"], a["peer"]) for a in r["acks"])
    assert acks == [("site-1", "api", "site-1"), ("site-1", "timeout0", "site-1"),
                    ("site-2", "api", "site-2"), ("site-2", "timeout0", "site-2")]
    for site in ("site-1", "site-2"):
        for tag in ("timeout0", "api"):
            got = json.loads((site_run_dir(tmp, site, job_id) / f"ff-{tag}.json").read_text())
            assert got == {"site": site, "tag": tag}


# --- large payloads ----------------------------------------------------------------------------------


def test_50mb_binary_payload_arrives_intact_and_comes_back(parent, start_site, make_job, tmp):
    """50 MB of random bytes go to the site and back; the site's hash and the returned bytes'
    hash match the original. The parent only forwards the raw frames: its peak RSS grows by
    about the payload (one 50 MB message in it at a time), not by multiples of it."""
    start_sites(parent, start_site, "site-1")
    before = peak_rss(parent.pid)
    job_id, _ = run_job(parent, make_job([("wf", "job_components_aux.BlobRoundTrip", {"size_mb": 50})],
                                         site_app=SITE_APP), timeout=40)
    grown = peak_rss(parent.pid) - before
    r = result(tmp, job_id, "blob.json")
    size = 50 * 1024 * 1024
    assert r["len"] == size
    rep = r["replies"]["site-1"]
    assert rep["rc"] == "OK", rep
    assert rep["site_sha256"] == r["sha256"] and rep["site_len"] == size
    assert rep["back_type"] == "bytes" and rep["back_sha256"] == r["sha256"] and rep["back_len"] == size
    print(f"50 MB round trip: {r['elapsed']:.2f}s; parent peak RSS grew {grown / 2**20:.0f} MB")
    # Loose: request and reply are never both in the parent (it frees a request once forwarded).
    assert grown < 1.6 * size, f"the parent's peak RSS grew by {grown / 2**20:.0f} MB for a 50 MB payload"


# --- site -> engine ----------------------------------------------------------------------------------


def error_names(outcomes: dict) -> dict:
    """{case: exception class name} from `_registration_errors`' "Class: message" strings."""
    return {case: text.split(":")[0] for case, text in outcomes.items()}


#: What registering an aux handler raises (seed: "a handler is already registered for the topic;
#: bad topic - must be a non-empty string; bad message_handle_func - must be callable").
REGISTRATION_ERRORS = {"duplicate": "ValueError", "empty": "ValueError", "not_callable": "TypeError"}


@pytest.mark.parametrize("deploy", ["named", "all"])
def test_site_component_sends_to_the_engine_and_gets_its_handlers_reply(parent, start_site, make_job, tmp, deploy):
    """A site component registers ``kick`` at START_RUN and, on its own thread, sends
    ``hello_engine`` to the job's engine, whose workflow registered a handler: it gets the
    handler's reply (keyed ``server``). Then, asked by the engine (``kick``), it reports what the
    engine answers to a topic without handler (TOPIC_UNKNOWN) and to a raising handler
    (EXECUTION_EXCEPTION with the reason), and sends one fire-and-forget (``{}`` returned, the
    engine's handler still called). Registration errors are checked on both sides."""
    names = ["site-1", "site-2"]
    start_sites(parent, start_site, *names)
    job_id, _ = run_job(parent, make_job([("wf", "job_components_aux.SiteToEngine", {"expect_sites": names})],
                                         site_app=GREETER_APP, sites=names if deploy == "named" else None))
    r = result(tmp, job_id, "s2e.json")
    for side in [r["registration"]] + [r["kick"][s]["data"]["registration"] for s in names]:
        errors = error_names(side)
        assert errors.pop("none_topic") in ("ValueError", "TypeError"), side
        assert errors == REGISTRATION_ERRORS, side
    assert "already registered" in r["registration"]["duplicate"]
    assert sorted(r["hellos"]) == names and all(r["hellos"][s] == {"from": s} for s in names)
    assert r["ff"] == [[s, s] for s in names]
    for site in names:
        kick = r["kick"][site]
        assert kick["rc"] == "OK", kick
        data = kick["data"]
        assert data["hello"]["keys"] == ["server"] and data["hello"]["rc"] == "OK"
        assert data["hello"]["data"] == {"greeting": f"hello {site}", "job_id": job_id, "topic": "hello_engine"}
        assert data["hello_tries"][-1] == "OK", data["hello_tries"]
        unknown = data["unknown_topic"]["server"]
        assert unknown["rc"] == "TOPIC_UNKNOWN" and "no_such_engine_topic" in unknown["reason"], unknown
        boom = data["engine_boom"]["server"]
        assert boom["rc"] == "EXECUTION_EXCEPTION", boom
        assert "ZeroDivisionError" in boom["reason"] and "failed on purpose" in boom["reason"]
        assert data["bad_target"].startswith("ValueError"), data["bad_target"]
        assert data["ff_returned"] == {}


# --- isolation between jobs --------------------------------------------------------------------------


def test_a_hanging_handler_of_one_job_does_not_stop_the_site_serving_another(parent, start_site, make_job, tmp):
    """Job A's handler on site-1 hangs; meanwhile job B (also on site-1) gets its replies at once."""
    start_sites(parent, start_site, "site-1")
    job_a = parent.admin.submit(calls_job(make_job, [{"topic": "hang", "timeout": 60.0}], name="hangs",
                                          sites=["site-1"]))
    hanging = site_run_dir(tmp, "site-1", job_a) / "hanging.json"
    wait_for(hanging.exists, 15, "job A's handler to start hanging on site-1")
    t0 = time.monotonic()
    job_b, _ = run_job(parent, calls_job(make_job, [{"topic": "echo", "payload": {"job": "B"}}] * 3, name="works"))
    took = time.monotonic() - t0
    for call in result(tmp, job_b):
        assert call["replies"]["site-1"]["rc"] == "OK" and call["replies"]["site-1"]["data"]["echo"] == {"job": "B"}
        assert call["elapsed"] < 2.0, call
    assert parent.admin.status(job_a)["status"] == "RUNNING"  # A is still waiting on its hung handler
    assert took < 12, f"job B took {took:.1f}s next to the hung job"
    parent.admin.abort(job_a, "test done")
    assert parent.wait_final(job_a)["status"] == "FINISHED:ABORTED"



def test_site_agent_exits_on_sigterm_while_a_handler_is_stuck(parent, start_site, make_job, tmp):
    """The site logs out and its process exits within 5 s of SIGTERM, even though a handler
    of one of its jobs is stuck (sleeping 60 s, deaf to the job's abort signal)."""
    sites = start_sites(parent, start_site, "site-1")
    job_id = parent.admin.submit(calls_job(make_job, [{"topic": "hang_hard", "payload": {"seconds": 60},
                                                        "timeout": 60.0}]))
    wait_for((site_run_dir(tmp, "site-1", job_id) / "hanging.json").exists, 15, "the handler to get stuck")
    site = sites["site-1"]
    site.send_signal(signal.SIGTERM)
    try:
        wait_for(lambda: "site-1" not in site_names(parent), 5, "site-1 to log out")
        wait_for(lambda: site.poll() is not None, 5, "the site process to exit after SIGTERM")
        assert site.returncode == 0
    finally:
        if site.poll() is None:
            os.killpg(site.pid, signal.SIGKILL)  # do not leave it to the fixture's 15 s grace
            site.wait()
        parent.wait_final(job_id)


# --- error replies ----------------------------------------------------------------------------------


def test_a_peers_error_reply_keeps_its_reason_through_the_parent(parent, start_site, make_job, tmp):
    """A site whose executor's reply cannot be encoded answers ERROR with a reason naming the
    key; so does the engine when its handler's reply cannot be encoded. Each requester gets
    that reason in header ``reason``, not just the code."""
    start_sites(parent, start_site, "site-1")
    job_id, _ = run_job(parent, make_job([
        ("wf1", "job_components_aux.AuxCalls", {"calls": [{"topic": "unencodable"}]}),
        ("wf2", "job_components_aux.SiteToEngine", {"expect_sites": ["site-1"]})], site_app=GREETER_APP))
    [call] = result(tmp, job_id)
    to_site = call["replies"]["site-1"]
    to_engine = result(tmp, job_id, "s2e.json")["kick"]["site-1"]["data"]["engine_unencodable"]["server"]
    assert to_site["rc"] == to_engine["rc"] == "ERROR"
    assert "cannot travel" in to_site["reason"] and "bad_value" in to_site["reason"], to_site
    assert "cannot travel" in to_engine["reason"] and "bad_value" in to_engine["reason"], to_engine


# --- resources and abort -----------------------------------------------------------------------------


def test_parent_does_not_hold_a_request_payload_while_the_site_works(parent, start_site, make_job, tmp):
    """Once the parent forwarded a 50 MB request to the site, its RSS returns to about where it
    was while the site still works on the request (it used to hold the payload until the site
    answered: the reply callbacks kept the request message, frames and all)."""
    start_sites(parent, start_site, "site-1")
    rss = psutil.Process(parent.pid).memory_info
    before = rss().rss
    job_id = parent.admin.submit(calls_job(make_job, [{"topic": "hang", "timeout": 60.0, "blob_mb": 50}]))
    wait_for((site_run_dir(tmp, "site-1", job_id) / "hanging.json").exists, 15, "the site to get the request")
    try:
        wait_for(lambda: rss().rss < before + 20 * 2**20, 3,
                 "the parent to release the forwarded payload (RSS within 20 MB of before)")
    finally:
        parent.admin.abort(job_id, "test done")
        parent.wait_final(job_id)


def test_abort_ends_a_job_waiting_on_an_aux_reply_gracefully(start_parent, start_site, make_job, tmp):
    """A job whose workflow waits on a site's reply (timeout 60 s) is aborted: the wait ends at
    once with a failure reply, END_RUN is fired, and the job process exits by itself within the
    abort grace (3 s) instead of being killed."""
    parent = start_parent("--abort-grace", "3", "--term-grace", "1", "--site-timeout", "5")
    start_sites(parent, start_site, "site-1")
    job_id = parent.admin.submit(make_job([("wf", "job_components_aux.AuxCalls",
                                            {"calls": [{"topic": "hang", "timeout": 60.0}]})],
                                          components=[("recorder", "EventRecorder", {})], site_app=SITE_APP))
    wait_for((site_run_dir(tmp, "site-1", job_id) / "hanging.json").exists, 15, "the site to get the request")
    parent.admin.abort(job_id, "test says stop")
    job = parent.wait_status(job_id, lambda j: j["status"].startswith("FINISHED:")
                             and (j["exit_code"] is not None or j["signal"] is not None))
    assert job["status"] == "FINISHED:ABORTED"
    assert job["signal"] is None and job["exit_code"] == 0, job["history"][-1]
    assert (tmp / "ws" / "jobs" / job_id / "events.json").exists(), "END_RUN never reached the components"
    [call] = result(tmp, job_id)
    assert call["replies"]["site-1"]["rc"] not in ("OK", "TIMEOUT"), call
    assert call["elapsed"] < 3.0, call
