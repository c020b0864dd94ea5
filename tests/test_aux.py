"""Aux messages between a job's engine and real site processes, routed by the parent."""

from __future__ import annotations

import json


def test_aux_round_trip_to_every_site(parent, start_site, make_job, tmp):
    for name in ("site-1", "site-2", "site-3"):
        start_site(parent, name)
    job_id = parent.admin.submit(make_job([("wf", "AuxRoundTrip", {"payload": {"x": 42}})],
                                          site_app={"executors": [(["echo"], "EchoExecutor", {})]}))
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED", job
    replies = json.loads((tmp / "ws" / "jobs" / job_id / "aux.json").read_text())
    assert sorted(replies) == ["site-1", "site-2", "site-3"]
    for site, r in replies.items():
        assert r["rc"] == "OK"
        assert r["data"] == {"echo": {"x": 42}, "site": site, "task": "echo"}
