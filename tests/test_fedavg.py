"""The FedAvg sample job (``flrunner/examples/fedavg``) and ``flrunner demo``, which runs it.

Pure tests load the example's ``custom/`` modules and run the workflow in this process, on a
`ServerEngine` without a parent whose "sites" are the example's executor called in-process.
The end-to-end tests run the job with a real parent and three real site processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from child.engine import ServerEngine
from flrunner.examples import example_job
from flrunner.fl_context import FLContextManager
from flrunner.shareable import ReturnCode, Shareable, make_reply
from flrunner.snapshot import RunSnapshot
from flrunner.workspace import Workspace

from .support import ROOT, job_copy, processes_under, wait_for

JOB = example_job("fedavg")
SITES = ["site-1", "site-2", "site-3"]
#: How close the learned model must be to the weights the data are drawn from (noise: 0.02).
TOLERANCE = 0.02


def _load(name: str) -> ModuleType:
    """Import one of the example's ``custom/`` modules under a private name (sys.path untouched)."""
    spec = importlib.util.spec_from_file_location(f"_fedavg_example_{name}", JOB / "app" / "custom" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fedavg = _load("fedavg_workflow")
trainer = _load("linear_trainer")


def _config(name: str) -> dict:
    return json.loads((JOB / "app" / "config" / name).read_text())


SERVER_ARGS = _config("config_fed_server.json")["workflows"][0]["args"]
TRAINER_ARGS = _config("config_fed_client.json")["executors"][0]["executor"]["args"]
TRUE_WEIGHTS = TRAINER_ARGS["true_weights"]


def assert_close_to_truth(weights: list) -> None:
    assert len(weights) == len(TRUE_WEIGHTS)
    errors = [abs(w - t) for w, t in zip(weights, TRUE_WEIGHTS)]
    assert max(errors) < TOLERANCE, f"learned {weights}, true {TRUE_WEIGHTS}"


# --- the weighted average ----------------------------------------------------------------------------------
def test_weighted_average_known_answer():
    # (1*[1, 2, -4] + 3*[3, 6, 0]) / 4
    assert fedavg.weighted_average([([1.0, 2.0, -4.0], 1), ([3.0, 6.0, 0.0], 3)]) == [2.5, 5.0, -1.0]
    assert fedavg.weighted_average([([0.5, -0.5], 7)]) == [0.5, -0.5]


def test_weighted_average_does_not_depend_on_order():
    contributions = [([0.1, 1e16, -3.3], 3), ([0.2, 1.0, 7.7], 5), ([0.3, -1e16, 1.1], 11), ([1 / 3, 2.0, 0.0], 2)]
    first = fedavg.weighted_average(contributions)
    assert fedavg.weighted_average(list(reversed(contributions))) == first
    assert fedavg.weighted_average(contributions[1:] + contributions[:1]) == first


@pytest.mark.parametrize("contributions, message", [
    ([], "nothing to average"),
    ([([1.0, 2.0], 1), ([1.0], 1)], "differ in length"),
    ([([1.0], 0)], "positive"),
    ([([1.0], -2)], "positive"),
])
def test_weighted_average_refuses_bad_input(contributions, message):
    with pytest.raises(ValueError, match=message):
        fedavg.weighted_average(contributions)


# --- the site's data and training ----------------------------------------------------------------------
def test_site_data_depends_only_on_the_site_name():
    a = trainer.make_site_data("site-1", TRUE_WEIGHTS)
    assert a == trainer.make_site_data("site-1", TRUE_WEIGHTS)
    assert a != trainer.make_site_data("site-2", TRUE_WEIGHTS)
    # crc32, not hash(): the same in every process (this value must never change)
    assert trainer.site_seed("site-1") == 786266254


def test_trainer_lowers_the_local_loss():
    t = trainer.LinearTrainer(**TRAINER_ARGS)
    ctx = FLContextManager(None, "site-2", "job-1").new_context()
    reply = t.execute("train", Shareable({"weights": [0.0] * len(TRUE_WEIGHTS), "round": 1}), ctx, _NeverAborted())
    assert reply.get_return_code() == ReturnCode.OK
    assert reply["loss"] < reply["loss_before"] / 10
    assert reply["num_samples"] == len(t.data_for("site-2"))
    bad = t.execute("train", Shareable({"weights": [1.0]}), ctx, _NeverAborted())
    assert bad.get_return_code() == ReturnCode.BAD_TASK_DATA


class _NeverAborted:
    triggered = False

    def wait(self, timeout=None):
        return False


# --- the workflow, in this process ----------------------------------------------------------------------
class Killed(BaseException):
    """Stands for the job process dying (nothing after it runs, as with kill -9)."""


class InProcessEngine(ServerEngine):
    """A `ServerEngine` without a parent whose sites are `LinearTrainer`s called in this process.

    Requests and replies make a wire round trip (so they must be encodable, as for real).
    ``tamper(site, round, reply)`` may replace a site's reply; ``on_request(round)`` runs
    before the sites train (to abort or "kill" the job in a given round).
    """

    def __init__(self, workspace: Workspace, sites=SITES, tamper=None, on_request=None) -> None:
        super().__init__("job-1", workspace, link=None)
        os.makedirs(workspace.get_run_dir("job-1"), exist_ok=True)
        self.sites = list(sites)
        self.trainer = trainer.LinearTrainer(**TRAINER_ARGS)
        self.tamper = tamper
        self.on_request = on_request
        self.requests: list[int] = []
        self.reported: list[dict] = []

    def send_aux_request(self, targets, topic, request, timeout, fl_ctx, optional=False, secure=False):
        assert not targets and topic == "train"
        k = request["round"]
        self.requests.append(k)
        if self.on_request:
            self.on_request(k)
        replies = {}
        for site in reversed(self.sites):  # a different order from the sorted one
            ctx = FLContextManager(None, site, self.job_id).new_context()
            sent = Shareable.from_wire(request.to_wire())
            reply = self.trainer.execute(topic, sent, ctx, self.abort_signal)
            if self.tamper:
                reply = self.tamper(site, k, reply)
            if reply is not None:
                replies[site] = Shareable.from_wire(reply.to_wire())
        return replies

    def update_job_run_status(self):
        self.reported.append(dict(self.progress))
        return super().update_job_run_status()


def run_in_process(ws: Path, restore: bool = False, **engine_args) -> InProcessEngine:
    """Run the example's workflow as the job process would (optionally from the last snapshot)."""
    engine = InProcessEngine(Workspace(ws), **engine_args)
    state = fedavg.ModelState()
    workflow = fedavg.FedAvg(**SERVER_ARGS)
    engine.add_component("model_state", state)
    engine.add_component("fedavg", workflow)
    fl_ctx = engine.new_context()
    if restore:
        engine.restore_components(RunSnapshot.load(engine.workspace.get_snapshot_path("job-1")), fl_ctx)
    workflow.start_controller(fl_ctx)
    try:
        workflow.control_flow(engine.abort_signal, fl_ctx)
    finally:
        workflow.stop_controller(fl_ctx)
    return engine


def final_model(ws: Path, job_id: str = "job-1") -> dict:
    return json.loads((ws / "jobs" / job_id / "final_model.json").read_text())


def test_workflow_converges_reports_rounds_and_persists(tmp_path):
    n = SERVER_ARGS["num_rounds"]
    engine = run_in_process(tmp_path / "ws")
    assert engine.requests == list(range(1, n + 1))
    assert [p["round"] for p in engine.reported] == list(range(1, n + 1))
    assert engine.reported[-1]["message"].startswith(f"round {n}/{n}: loss ")
    model = final_model(tmp_path / "ws")
    assert model["rounds"] == n and model["num_rounds"] == n
    assert_close_to_truth(model["weights"])
    losses = [h["loss"] for h in model["history"]]
    assert losses[0] > 10 * losses[-1]
    assert all(h["sites"] == SITES and not h["failed"] for h in model["history"])
    snap = RunSnapshot.load(engine.workspace.get_snapshot_path("job-1"))
    assert snap.completed
    assert snap.get_component_snapshot("model_state")["round"] == n
    assert snap.get_component_snapshot("model_state")["weights"] == model["weights"]


def test_workflow_resumes_where_a_killed_run_stopped(tmp_path):
    """Killed in round 7 of 10, restarted from the snapshot: resumes at round 7, ends with the same model."""
    n = SERVER_ARGS["num_rounds"]
    assert n >= 8, "the example's num_rounds is too small for this test"
    reference = run_in_process(tmp_path / "ref")

    def die_in_round_7(k: int) -> None:
        if k == 7:
            raise Killed()

    with pytest.raises(Killed):
        run_in_process(tmp_path / "ws", on_request=die_in_round_7)
    assert not (tmp_path / "ws" / "jobs" / "job-1" / "final_model.json").exists()
    snap = RunSnapshot.load(Workspace(tmp_path / "ws").get_snapshot_path("job-1"))
    assert snap.get_component_snapshot("model_state")["round"] == 6 and not snap.completed

    resumed = run_in_process(tmp_path / "ws", restore=True)
    assert resumed.requests == list(range(7, n + 1))
    assert final_model(tmp_path / "ws") == final_model(tmp_path / "ref")  # bit for bit, history included
    assert [p["round"] for p in resumed.reported] == [p["round"] for p in reference.reported][6:]


def test_workflow_ignores_failed_replies(tmp_path):
    def tamper(site, k, reply):
        if site == "site-2" and k == 2:
            return make_reply(ReturnCode.EXECUTION_EXCEPTION, {"reason": "ZeroDivisionError: boom"})
        if site == "site-3" and k == 3:
            return Shareable({"weights": ["x"], "num_samples": 5, "loss": 1.0})
        return reply

    run_in_process(tmp_path / "ws", tamper=tamper)
    history = final_model(tmp_path / "ws")["history"]
    assert history[1]["sites"] == ["site-1", "site-3"]
    assert history[1]["failed"] == {"site-2": "EXECUTION_EXCEPTION (ZeroDivisionError: boom)"}
    assert history[2]["sites"] == ["site-1", "site-2"] and "site-3" in history[2]["failed"]
    assert_close_to_truth(final_model(tmp_path / "ws")["weights"])


def test_workflow_fails_clearly_below_min_clients(tmp_path):
    def tamper(site, k, reply):
        if k == 4 and site != "site-1":
            return make_reply(ReturnCode.TIMEOUT, {"reason": f"site '{site}' did not answer within 30s"})
        return reply

    with pytest.raises(fedavg.FedAvgError) as info:
        run_in_process(tmp_path / "ws", tamper=tamper)
    msg = str(info.value)
    assert "round 4/" in msg and "1 good reply from 3 site(s)" in msg and "min_clients is 2" in msg
    assert "site-2: TIMEOUT (site 'site-2' did not answer within 30s)" in msg
    snap = RunSnapshot.load(Workspace(tmp_path / "ws").get_snapshot_path("job-1"))
    assert snap.get_component_snapshot("model_state")["round"] == 3

    with pytest.raises(fedavg.FedAvgError, match="no site of the job answered"):
        run_in_process(tmp_path / "ws2", sites=[])


def test_workflow_stops_on_abort_without_counting_the_round(tmp_path):
    holder: dict = {}

    def abort_in_round_3(k: int) -> None:
        if k == 3:
            holder["engine"].abort_signal.trigger("aborted by a test")

    class Capturing(InProcessEngine):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            holder["engine"] = self

    engine = Capturing(Workspace(tmp_path / "ws"), on_request=abort_in_round_3)
    state, workflow = fedavg.ModelState(), fedavg.FedAvg(**SERVER_ARGS)
    engine.add_component("model_state", state)
    fl_ctx = engine.new_context()
    workflow.start_controller(fl_ctx)
    workflow.control_flow(engine.abort_signal, fl_ctx)
    assert engine.requests == [1, 2, 3]
    assert state.round == 2 and [p["round"] for p in engine.reported] == [1, 2]
    assert not (tmp_path / "ws" / "jobs" / "job-1" / "final_model.json").exists()


# --- end to end, real processes -----------------------------------------------------------------------------
def test_fedavg_across_three_real_sites_is_correct_and_deterministic(parent, start_site, tmp):
    for name in SITES:
        start_site(parent, name)
    n = SERVER_ARGS["num_rounds"]
    models = []
    for run in (1, 2):
        job_id = parent.admin.submit(job_copy(tmp, f"fedavg{run}"))
        job = parent.wait_final(job_id, timeout=30)
        assert job["status"] == "FINISHED:COMPLETED", job
        assert job["progress"]["round"] == n and job["progress"]["num_rounds"] == n
        assert job["progress"]["message"].startswith(f"round {n}/{n}: loss ")
        model = final_model(tmp / "ws", job_id)
        assert model["rounds"] == n
        assert_close_to_truth(model["weights"])
        assert all(h["sites"] == SITES for h in model["history"])
        losses = [h["loss"] for h in model["history"]]
        assert losses[0] > 10 * losses[-1]
        models.append(model)
    assert models[0] == models[1]  # the same model, bit for bit, and the same history
    # ... and the one the workflow computes in-process from the same replies
    run_in_process(tmp / "inproc")
    assert final_model(tmp / "inproc") == models[0]


def test_fedavg_abort_stops_the_rounds(parent, start_site, tmp):
    for name in SITES:
        start_site(parent, name)
    job_id = parent.admin.submit(job_copy(tmp, "slow", {"num_rounds": 100}, {"delay": 0.2}))
    parent.wait_status(job_id, lambda j: (j.get("progress") or {}).get("round", 0) >= 2, timeout=30)
    parent.admin.abort(job_id, reason="enough")
    job = parent.wait_final(job_id, timeout=20)
    assert job["status"] == "FINISHED:ABORTED", job
    assert job["progress"]["round"] < 100
    run_dir = tmp / "ws" / "jobs" / job_id
    assert not (run_dir / "final_model.json").exists()
    state = RunSnapshot.load(str(run_dir / "snapshot.msgpack")).get_component_snapshot("model_state")
    assert state["round"] >= job["progress"]["round"] and not RunSnapshot.load(
        str(run_dir / "snapshot.msgpack")).completed


def test_fedavg_fails_clearly_with_fewer_sites_than_min_clients(parent, start_site, tmp):
    for name in SITES:
        start_site(parent, name)
    job_id = parent.admin.submit(job_copy(tmp, "greedy", {"min_clients": 4}))
    job = parent.wait_final(job_id, timeout=30)
    assert job["status"] == "FINISHED:EXECUTION_EXCEPTION", job
    reason = job["history"][-1]["reason"]
    assert "FedAvgError: round 1/" in reason and "min_clients is 4 (the job has 3 site(s))" in reason, reason
    assert not (tmp / "ws" / "jobs" / job_id / "final_model.json").exists()


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_demo_runs_fedavg_end_to_end(procs, tmp, secure):
    """``python -m flrunner demo [--secure]``: exit 0, the rounds and the model shown, nothing left behind.

    With ``--secure``: provisioned kits, CURVE sites, the job uploaded over remote admin, sealed aux."""
    demo_tmp = tmp / "demo-tmp"
    demo_tmp.mkdir()
    proc = procs.spawn(["-m", "flrunner", "demo", "--rounds", "4", *(["--secure"] if secure else [])], "demo",
                       env={"TMPDIR": str(demo_tmp), "PYTHONPATH": str(ROOT)})
    try:
        rc = proc.wait(40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the demo did not end within 40s:\n{procs.output('demo')}")
    out = procs.output("demo")
    assert rc == 0, out
    assert "final status: FINISHED:COMPLETED" in out
    assert "round 4/4: loss " in out, out  # earlier rounds show too, unless a status push was coalesced
    assert "learned" in out and "true" in out
    if secure:
        assert "(CURVE); remote admin on tcp://127.0.0.1:" in out and "uploaded by admin 'admin'" in out, out
    assert list(demo_tmp.iterdir()) == [], "the demo left its temporary folder behind"
    wait_for(lambda: not processes_under(demo_tmp), 5, "the demo's processes to be gone")
