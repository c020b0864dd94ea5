"""The site agent against a real parent: login, heartbeat, logout, expiry, coming back."""

from __future__ import annotations

import signal
import socket

from .conftest import wait_for


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


def test_site_logs_in_again_after_a_parent_restart(start_parent, start_site, procs):
    port = free_port()
    parent = start_parent("--sites", f"tcp://127.0.0.1:{port}")
    start_site(parent, "loyal-site")
    parent.kill9()
    again = start_parent("--sites", f"tcp://127.0.0.1:{port}", name="parent2")
    wait_for(lambda: names(again) == ["loyal-site"], 20, "the site to log in to the new parent")
