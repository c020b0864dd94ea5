"""Every ServerEngine method, called from inside a real job process by third-party job code."""

from __future__ import annotations

import json
import signal

from flrunner.events import EventType


def test_every_engine_method_works_inside_a_job(parent, start_site, make_job, tmp):
    start_site(parent, "site-a")
    start_site(parent, "site-b")
    job_id = parent.admin.submit(make_job(
        [("probe", "EngineProbe", {"expect_sites": 2})],
        components=[("recorder", "EventRecorder", {}), ("widget", "ProbeWidget", {})]))
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED", job
    run_dir = tmp / "ws" / "jobs" / job_id
    r = json.loads((run_dir / "probe.json").read_text())
    assert r["new_context"] == [job_id, "server", True]
    assert r["sticky_in_new_context"] == 42
    assert r["get_workspace"] == str(run_dir)
    assert r["get_component"] == "EventRecorder" and r["get_component_missing"] is None
    assert r["get_widget"] == "ProbeWidget" and r["get_widget_missing"] is None
    assert r["fire_event"] == "custom_event"
    assert r["sync_clients_from_main_process"] == ["site-a", "site-b"]
    assert r["get_clients"] == ["site-a", "site-b"]
    assert r["get_client_name_from_token"] in ("site-a", "site-b")
    assert r["get_client_name_from_token_unknown"] is None
    assert r["update_job_run_status"] == "RUNNING"
    assert r["persist_components"] == {"value": 7} and r["restore_components"] == 7
    assert r["register_twice"].startswith("ValueError") and "already registered" in r["register_twice"]
    assert r["register_empty_topic"].startswith("ValueError")
    assert r["register_not_callable"].startswith("TypeError")
    # The sites run no app of this (server-only) job: they answer that the job is not running there.
    assert r["send_aux_request"] == {"site-a": "NOT_FOUND", "site-b": "NOT_FOUND"}
    assert r["fire_and_forget_aux_request"] == {}
    assert r["check_client_resources"] == {"site-a": [True, True], "site-b": [False, False]}
    assert r["cancel_client_resources"] == "done"
    assert r["start_client_job"]["site-a"][0] is False
    assert "no app is deployed to site 'site-a'" in r["start_client_job"]["site-a"][1]
    # The progress the workflow set reached the parent's store.
    assert job["progress"] == {"message": "probing", "step": 1}
    events = json.loads((run_dir / "events.json").read_text())
    assert events == [EventType.ABOUT_TO_START_RUN, EventType.START_RUN, "custom_event",
                      EventType.ABOUT_TO_END_RUN, EventType.END_RUN]
    assert (run_dir / "snapshot.msgpack").exists()


def test_site_changes_are_pushed_to_a_running_job(parent, start_site, make_job):
    first = start_site(parent, "site-1")
    job_id = parent.admin.submit(make_job([("wf", "WatchClients", {"until": ["site-2"]})]))
    parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("sites") == ["site-1"])
    start_site(parent, "site-2")
    parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("sites") == ["site-1", "site-2"])
    first.send_signal(signal.SIGTERM)  # logs out
    first.wait(10)
    job = parent.wait_final(job_id)
    assert job["status"] == "FINISHED:COMPLETED", job.get("error")
