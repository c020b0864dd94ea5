"""``flrunner demo``: a parent, a few site agents and the sample job, end to end.

The sample job is ``examples/fedavg``: federated averaging of a linear regression model that
each site trains on its own synthetic data. The demo prints each round's progress (the loss
going down) and the final model next to the weights the sites' data were drawn from.

With ``secure`` the deployment is provisioned first (``flrunner provision``): the sites connect
with their kits over CURVE, the job is uploaded through the remote admin socket with an admin's
kit, and the model updates travel as ``secure=True`` aux messages (end to end encrypted between
the job and each site).

Everything runs as real processes in a temporary workspace, and every process is stopped
(gracefully, then by process group) before the demo returns, also when it fails.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from flrunner.admin.client import AdminClient, find_parent
from flrunner.errors import FlrunnerError, ParentUnavailable
from flrunner.examples import example_job
from flrunner.util.processes import Processes, wait_for

SAMPLE_JOB = "fedavg"
FINAL_MODEL = "final_model.json"


def _prepare_job(root: Path, sites: int, rounds: int, secure: bool = False) -> Path:
    """A copy of the sample job with ``rounds`` rounds, runnable on ``sites`` sites."""
    job_dir = root / SAMPLE_JOB
    shutil.copytree(example_job(SAMPLE_JOB), job_dir)
    meta_path = job_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["min_clients"] = min(meta.get("min_clients", 1), sites)
    meta_path.write_text(json.dumps(meta, indent=2))
    cfg_path = job_dir / "app" / "config" / "config_fed_server.json"
    cfg = json.loads(cfg_path.read_text())
    args = cfg["workflows"][0]["args"]
    args["num_rounds"] = rounds
    args["min_clients"] = min(args.get("min_clients", 1), sites)
    args["secure"] = secure
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return job_dir


def _true_weights(job_dir: Path) -> list[float]:
    """The weights the sites' synthetic data are drawn from (the site executor's config)."""
    cfg = json.loads((job_dir / "app" / "config" / "config_fed_client.json").read_text())
    return list(cfg["executors"][0]["executor"]["args"]["true_weights"])


def _show_model(path: Path, true_weights: list[float], say) -> None:
    """Print the final model next to the true weights."""
    try:
        model = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        say(f"no final model: {exc}")
        return
    say(f"final model after {model['rounds']} round(s), loss {model['loss']:.6f} ({path.name} in the job's run dir):")
    say(f"  {'':6} {'learned':>10} {'true':>10}")
    names = [f"w[{j}]" for j in range(len(true_weights) - 1)] + ["bias"]
    for name, learned, true in zip(names, model["weights"], true_weights):
        say(f"  {name:6} {learned:10.5f} {true:10.5f}")


def _provision(root: Path, sites: int, say) -> Path:
    from flrunner.security import provision

    project = root / "project"
    provision(project, sites=[f"site-{i}" for i in range(1, sites + 1)], admins=["admin"])
    say(f"provisioned {project}: kits for the parent, {sites} site(s) and an admin")
    return project


def run_demo(sites: int = 3, rounds: int = 5, keep: bool = False, out=sys.stdout, secure: bool = False) -> int:
    """Run the demo; returns 0 when the sample job ends ``FINISHED:COMPLETED``."""
    root = Path(tempfile.mkdtemp(prefix="flrunner-demo-"))
    ws = root / "workspace"
    procs = Processes(root)  # each in its own process group, cwd and output in root

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    try:
        say(f"workspace: {ws}")
        project = _provision(root, sites, say) if secure else None
        secure_args = ["--kit", str(project / "parent"), "--admin", "tcp://127.0.0.1:*"] if project else []
        parent = procs.spawn(["-m", "flrunner", "parent", "--workspace", str(ws), "--sites", "tcp://127.0.0.1:*",
                              "--site-timeout", "10", *secure_args], "parent")

        def parent_up():
            try:
                return find_parent(ws)
            except ParentUnavailable:
                return None

        info = wait_for(parent_up, 30, "the parent to start", 0.05, proc=parent)
        say(f"parent pid {info['pid']}; sites connect to {info['sites']}"
            + (f" (CURVE); remote admin on {info['remote_admin']} (CURVE)" if project else ""))
        for i in range(1, sites + 1):
            who = ["--kit", str(project / f"site-{i}")] if project else ["--name", f"site-{i}"]
            procs.spawn(["-m", "flrunner", "site", *who, "--server", info["sites"],
                         "--workspace", str(root / f"site-{i}")], f"site-{i}")
        with AdminClient(info["admin"]) as admin:
            wait_for(lambda: len(admin.clients()) >= sites, 30, f"{sites} sites to log in", 0.05)
            say("sites logged in: " + ", ".join(sorted(c["name"] for c in admin.clients())))

            job_dir = _prepare_job(root, sites, rounds, secure)
            true_weights = _true_weights(job_dir)

            from flrunner.admin.embed import FLRunner, follow_job

            runner = FLRunner.connect(project / "admin", info["remote_admin"]) if project else FLRunner(info["admin"])
            try:
                with runner.events() as feed:
                    job_id = runner.submit(job_dir)
                    say(f"submitted job {job_id}" + (" (uploaded by admin 'admin')" if project else ""))
                    t0 = time.monotonic()

                    def show(job: dict) -> None:
                        progress = job.get("progress")
                        detail = progress.get("message") if isinstance(progress, dict) else progress
                        say(f"  [{time.monotonic() - t0:6.2f}s] {job['status']}" + (f"  {detail}" if detail else ""))

                    final = follow_job(runner, feed, job_id, show, timeout=300)
            finally:
                runner.stop()
        if final["status"] == "FINISHED:COMPLETED":
            _show_model(ws / "jobs" / job_id / FINAL_MODEL, true_weights, say)
        say(f"final status: {final['status']}")
        if final["status"] != "FINISHED:COMPLETED":
            say(f"job log: {ws / 'jobs' / job_id / 'log.txt'}")
            return 1
        return 0
    except (FlrunnerError, TimeoutError) as exc:
        say(f"demo failed: {exc}")
        return 1
    finally:
        procs.stop(procs.started[1:])  # sites first, so they log out cleanly
        procs.stop(procs.started[:1])
        if keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
