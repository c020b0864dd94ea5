"""CURVE-authenticated sites with provisioned kits (real parent and site processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest
import zmq


from .support import raw_login, site_names, start_kit_site, wait_for


@pytest.fixture
def secure_parent(start_parent, project):
    return start_parent("--kit", str(project / "parent"))


def test_provisioned_sites_log_in_and_serve_a_job(secure_parent, project, procs, make_job, tmp):
    start_kit_site(procs, secure_parent, project, "site-1")
    start_kit_site(procs, secure_parent, project, "site-2")
    wait_for(lambda: site_names(secure_parent) == ["site-1", "site-2"], 15, "both sites to log in over CURVE")
    job_id = secure_parent.admin.submit(make_job([("wf", "AuxRoundTrip", {"payload": {"x": 1}})],
                                                 site_app={"executors": [(["echo"], "EchoExecutor", {})]}))
    assert secure_parent.wait_final(job_id)["status"] == "FINISHED:COMPLETED"
    replies = json.loads((tmp / "ws" / "jobs" / job_id / "aux.json").read_text())
    assert {s: r["rc"] for s, r in replies.items()} == {"site-1": "OK", "site-2": "OK"}


def test_unknown_keys_no_keys_and_other_names_are_refused(secure_parent, project):
    from flrunner.security.kit import load_kit

    parent_kit = load_kit(project / "parent")
    site1 = load_kit(project / "site-1")
    stranger = zmq.curve_keypair()
    endpoint = secure_parent.sites_endpoint
    assert raw_login(endpoint, "site-1", None, None) is None  # no CURVE: the handshake never completes
    assert raw_login(endpoint, "site-1", stranger, parent_kit.public_key) is None  # not on the allowlist
    reply = raw_login(endpoint, "site-2", (site1.public_key, site1.secret_key), parent_kit.public_key)
    assert reply is not None and reply.rc == "UNAUTHORIZED" and "cannot log in as 'site-2'" in reply.body["reason"]
    reply = raw_login(endpoint, "site-1", (site1.public_key, site1.secret_key), parent_kit.public_key)
    assert reply is not None and reply.rc == "OK"


def site_connections(site, endpoint: str) -> set[int]:
    """The local ports of a site process's established tcp connections to ``endpoint``."""
    port = int(endpoint.rsplit(":", 1)[1])
    return {c.laddr.port for c in psutil.Process(site.pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == port}


@pytest.mark.slow
def test_a_revoked_site_is_dropped_disconnected_and_refused(secure_parent, project, procs):
    site = start_kit_site(procs, secure_parent, project, "site-1")
    other = start_kit_site(procs, secure_parent, project, "site-2")
    wait_for(lambda: site_names(secure_parent) == ["site-1", "site-2"], 15, "the sites to log in")
    endpoint = secure_parent.sites_endpoint
    [revoked_conn], [other_conn] = site_connections(site, endpoint), site_connections(other, endpoint)
    subprocess.run([sys.executable, "-m", "flrunner", "revoke", "--out", str(project), "site-1"], check=True,
                   capture_output=True)
    wait_for(lambda: site_names(secure_parent) == ["site-2"], 10, "the revoked site to be dropped")
    wait_for(lambda: revoked_conn not in site_connections(site, endpoint), 10, "the revoked site's connection to close")
    assert "site site-1: access revoked; dropped from the registry and its connection closed" in \
        (secure_parent.workspace / "parent.log").read_text()
    from flrunner.security.kit import load_kit

    site1 = load_kit(project / "site-1")
    assert raw_login(endpoint, "site-1", (site1.public_key, site1.secret_key),
                     load_kit(project / "parent").public_key) is None
    time.sleep(1.0)  # the revoked site keeps reconnecting; it is never let in, and the other site is untouched
    assert site_names(secure_parent) == ["site-2"]
    assert site_connections(other, endpoint) == {other_conn}
    assert site.poll() is None
