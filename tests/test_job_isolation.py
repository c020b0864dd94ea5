"""A job's code cannot act for another job, even holding its own valid secret (real processes)."""

from __future__ import annotations

import json

from .support import wait_for


def test_a_job_cannot_say_hello_as_another_job_or_reach_its_sites(parent, start_site, make_job, tmp):
    start_site(parent, "site-1")
    start_site(parent, "site-2")
    echo = {"executors": [(["echo"], "EchoExecutor", {})]}
    victim = parent.admin.submit(make_job([("wf", "Sleeper", {"seconds": 60})], site_app=echo, sites=["site-2"]))
    parent.wait_status(victim, lambda j: j["status"] == "RUNNING")
    impostor = parent.admin.submit(make_job(
        [("wf", "job_components_impostor.Impostor", {"other_job_id": victim, "other_site": "site-2"})],
        site_app=echo, sites=["site-1"]))
    assert parent.wait_final(impostor)["status"] == "FINISHED:COMPLETED"

    seen = json.loads((tmp / "ws" / "jobs" / impostor / "impostor.json").read_text())
    assert seen["fresh_connection"].startswith("UNAUTHORIZED"), seen
    assert seen["own_connection"].startswith("Unauthorized"), seen
    assert sorted(seen["own_link_still_works"]) == ["site-1", "site-2"], seen  # its own job is unaffected
    assert seen["aux_to_other_site"]["rc"] != "OK" and "not a site of this job" in seen["aux_to_other_site"]["reason"]

    victim_job = parent.admin.status(victim)
    assert victim_job["status"] == "RUNNING", victim_job
    assert [h["status"] for h in victim_job["history"]] == ["SUBMITTED", "DISPATCHED", "RUNNING"]
    parent.admin.abort(victim)
    wait_for(lambda: parent.admin.status(victim)["status"] == "FINISHED:ABORTED", 15, "the victim to end as aborted")
