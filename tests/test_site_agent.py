"""The site agent against a real parent: login, heartbeat, logout, expiry, coming back."""

from __future__ import annotations

import json
import os
import re
import signal
import socket

import pytest

from .support import wait_for


def names(parent) -> list[str]:
    return sorted(c["name"] for c in parent.admin.clients())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_login_declares_resources_and_sigterm_logs_out(parent, start_site):
    site = start_site(parent, "hospital-a")
    [entry] = parent.admin.clients()
    assert entry["name"] == "hospital-a"
    resources = entry["props"]["resources"]
    assert resources["num_cpus"] >= 1 and resources["mem_gb"] > 0
    site.send_signal(signal.SIGTERM)
    assert site.wait(10) == 0
    # Logged out at once, not dropped later by the timeout.
    assert names(parent) == []


def test_silent_site_is_dropped_then_logs_in_again(start_parent, start_site):
    parent = start_parent("--site-timeout", "1")
    site = start_site(parent, "sleepy-site")
    site.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: names(parent) == [], 10, "the silent site to be dropped")
    finally:
        site.send_signal(signal.SIGCONT)
    wait_for(lambda: names(parent) == ["sleepy-site"], 10, "the site to log in again")


@pytest.mark.slow
def test_site_logs_in_again_after_a_parent_restart(start_parent, start_site, procs):
    port = free_port()
    parent = start_parent("--sites", f"tcp://127.0.0.1:{port}")
    start_site(parent, "loyal-site")
    parent.kill9()
    again = start_parent("--sites", f"tcp://127.0.0.1:{port}", name="parent2")
    wait_for(lambda: names(again) == ["loyal-site"], 20, "the site to log in to the new parent")


def entry(parent, name: str) -> dict | None:
    return {c["name"]: c for c in parent.admin.clients()}.get(name)


def test_a_second_agent_with_a_logged_in_name_is_refused_until_the_first_logs_out(parent, start_site, procs):
    first = start_site(parent, "twin-site")
    held = entry(parent, "twin-site")
    assert held["props"]["pid"] == first.pid
    second = procs.spawn(["-m", "flrunner", "site", "--name", "twin-site", "--server", parent.sites_endpoint],
                         "site-twin-site-2")
    refusal = re.compile(r"WARNING .*site 'twin-site' is already logged in from another agent "
                         rf"\(pid {first.pid}, last seen \d+\.\ds ago\); stop that agent, or wait up to \d+s "
                         r"for its session to expire")
    # Twice: the refused agent keeps trying, and is refused again while the first one lives.
    wait_for(lambda: len(refusal.findall(procs.output("site-twin-site-2"))) >= 2, 15,
             "the second agent to be refused twice")
    assert second.poll() is None
    now = entry(parent, "twin-site")
    assert (now["login_time"], now["props"]) == (held["login_time"], held["props"])  # the first one's session
    assert "logged in to" not in procs.output("site-twin-site-2")

    first.send_signal(signal.SIGTERM)  # it logs out: the name is free
    assert first.wait(10) == 0
    taken = wait_for(lambda: (e := entry(parent, "twin-site")) is not None and e["props"]["pid"] == second.pid
                     and e, 15, "the second agent to log in once the first logged out")
    assert taken["login_time"] > held["login_time"]
    wait_for(lambda: "logged in to" in procs.output("site-twin-site-2"), 5, "the second agent to log its login")


@pytest.mark.slow
def test_a_site_that_lost_a_paused_parent_resumes_its_session(start_parent, start_site, make_job, procs, tmp):
    """The parent is stopped (SIGSTOP) for longer than the site's parent-loss timeout (site
    timeout 2 s: heartbeats every 0.5 s, loss after 2 s), then continued. The site's logins,
    queued meanwhile, come from the same agent instance: the parent keeps its registration as it
    was (same token and login time, no new session, no change pushed to the job)."""
    parent = start_parent("--site-timeout", "2", "--hung-timeout", "60", "--abort-grace", "1", "--term-grace", "1")
    start_site(parent, "steady-site")
    stop = tmp / "stop-watching"
    job_id = parent.admin.submit(make_job([("wf", "job_components_sched.WatchClientEntries",
                                            {"stop_file": str(stop)})]))
    clients_file = tmp / "ws" / "jobs" / job_id / "clients.json"
    wait_for(clients_file.exists, 20, "the job to record its client list")
    before = entry(parent, "steady-site")
    parent_log = tmp / "ws" / "parent.log"
    offset = len(parent_log.read_text())
    site_log = lambda: procs.output("site-steady-site")  # noqa: E731
    lost = "the parent no longer knows this site"
    os.kill(parent.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: lost in site_log(), 10, "the site to lose the parent")
        # Three logins go unanswered (they queue at the parent): the pause lasts about 4 s in all.
        wait_for(lambda: site_log().split(lost)[-1].count("failed (no reply to 'login'") >= 3, 10,
                 "the site to try to log in again")
    finally:
        os.kill(parent.pid, signal.SIGCONT)
    wait_for(lambda: "logged in to" in site_log().split(lost)[-1], 15, "the site to log in again")
    after = entry(parent, "steady-site")
    stop.touch()
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED", job
    history = json.loads(clients_file.read_text())
    since = parent_log.read_text()[offset:]
    new_sessions = since.count("site steady-site logged in (registry revision")
    resumed = "site steady-site logged in again from the same agent: its session goes on"
    assert "dropped: steady-site" not in since, since  # the parent does not blame the site for its own pause
    assert new_sessions == 0, since
    assert resumed in since
    assert after["login_time"] == before["login_time"] and after["props"] == before["props"]
    assert len(history) == 1, history  # same token, same login time: nothing was pushed to the job
    assert history[0][0][0] == "steady-site"
