#!/usr/bin/env python3
"""Fault-handling figures of a real parent, each a median (and p99 or max) over repetitions.

- parent kill -9 + restart -> all N running jobs re-adopted: from the moment the new parent is
  started to the last "re-adopted" entry in the jobs' histories (N = ``--jobs``, default 20); also
  the part of it until the new parent serves (publishes parent.json);
- kill -9 of a job process -> ``FINISHED:ABNORMAL`` announced on the status feed;
- abort -> the job's whole process tree gone: the job process and three ``sleep`` grandchildren
  (one in its group, one in a session of its own, one in its own session and orphaned), from the
  admin's abort request until none of them is alive.

The parent runs with ``--abort-grace 1 --term-grace 1`` and its default heartbeat settings (a job
process heartbeats every 2s, and learns that its parent was replaced from the refused heartbeat,
so re-adoption takes up to a heartbeat interval).

Usage: python scripts/bench_faults.py [--jobs 20] [--quick] [--json FILE]
Every process it starts is ended before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchlib as B
from flrunner.admin import AdminClient, StatusFeed

WORKFLOWS = '''
import subprocess, sys
from flrunner import Controller


class Sleep(Controller):
    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        engine.set_run_progress({"message": "sleeping"})
        engine.update_job_run_status()
        abort_signal.wait(3600)


class Spawn(Controller):
    """Three sleep grandchildren: in the job's group, in a session of their own, and orphaned too."""

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        plain = subprocess.Popen(["sleep", "600"])
        session = subprocess.Popen(["sleep", "600"], start_new_session=True)
        out = subprocess.run([sys.executable, "-c", "import subprocess; print(subprocess.Popen(['sleep', '600'], "
                              "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"],
                             capture_output=True, text=True, check=True)
        engine.set_run_progress({"message": "spawned", "pids": [plain.pid, session.pid, int(out.stdout)]})
        engine.update_job_run_status()
        abort_signal.wait(3600)
'''


def make_job(root: Path, name: str, workflow: str) -> Path:
    job = root / name
    (job / "app_server" / "config").mkdir(parents=True)
    (job / "app_server" / "custom").mkdir()
    (job / "app_server" / "custom" / "bench_faults_wf.py").write_text(WORKFLOWS)
    (job / "app_server" / "config" / "config_fed_server.json").write_text(json.dumps(
        {"format_version": 2, "workflows": [{"id": "wf", "path": f"bench_faults_wf.{workflow}", "args": {}}]}))
    (job / "meta.json").write_text(json.dumps({"name": name, "deploy_map": {"app_server": ["server"]}}))
    return job


def wait_event(feed: StatusFeed, job_id: str, pred, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = feed.next(deadline - time.monotonic())
        if ev is not None and ev["job_id"] == job_id and pred(ev):
            return ev
    raise TimeoutError(f"job {job_id}: no matching status in {timeout}s")


class Bench:
    """A temporary workspace and the parent processes started on it, one after another."""

    def __init__(self, root: Path, max_jobs: int) -> None:
        self.root = root
        self.ws = root / "ws"
        self.max_jobs = max_jobs
        self.procs = B.Processes(root)
        self.parent: B.ParentProc | None = None

    @property
    def admin(self) -> AdminClient | None:
        return self.parent.admin if self.parent is not None else None

    @property
    def info(self) -> dict:
        return self.parent.info if self.parent is not None else {}

    def start_parent(self) -> float:
        """Start a parent; the epoch time it was started at (it serves when this returns)."""
        started = time.time()
        previous = self.parent
        self.parent = B.ParentProc(self.procs, self.ws, f"parent{len(self.procs.procs)}",
                                   ["--max-jobs", str(self.max_jobs)], abort_grace=1, log_level=None, admin_timeout=30)
        if previous is not None:
            previous.admin.close()
        return started

    def kill9(self) -> None:
        assert self.parent is not None
        self.parent.proc.kill()
        self.parent.proc.wait()

    def stop(self) -> None:
        if self.admin is not None:
            self.admin.close()
        # Job processes left by a killed parent and grandchildren are swept by their cwd in our folder.
        self.procs.end_all(grace=30, sweeps=25)


def readoption(bench: Bench, job: Path, n: int, reps: int) -> tuple[list[float], list[float], str]:
    """(restart -> last re-adoption in ms, restart -> serving in ms, launcher) over ``reps`` restarts."""
    to_all, to_serving = [], []
    launcher = "?"
    for rep in range(reps):
        assert bench.admin is not None
        ids = [bench.admin.submit(job) for _ in range(n)]
        B.wait_until(lambda: all(bench.admin.status(i)["status"] == "RUNNING" for i in ids), 120, f"{n} jobs to run", 0.1)
        launcher = bench.admin.status(ids[0])["history"][1]["reason"]
        bench.kill9()
        started = bench.start_parent()
        to_serving.append((time.time() - started) * 1000)  # an upper bound: parent.json seen

        def adopted_at() -> list[float] | None:
            times = []
            for i in ids:
                hist = bench.admin.status(i)["history"]
                t = [h["time"] for h in hist if h["reason"].startswith("re-adopted")]
                if not t:
                    return None
                times.append(t[0])
            return times

        times = B.wait_until(adopted_at, 60, f"all {n} jobs to be re-adopted", 0.1)
        to_all.append((max(times) - started) * 1000)  # type: ignore[arg-type]
        print(f"  restart {rep + 1}/{reps}: {n} jobs re-adopted {to_all[-1]:.0f} ms after the new parent started",
              file=sys.stderr)
        for i in ids:
            bench.admin.abort(i, "next repetition")
        B.wait_until(lambda: all(bench.admin.status(i)["status"].startswith("FINISHED:") for i in ids), 60,
             "the jobs to end", 0.1)
    return to_all, to_serving, launcher


def kill_to_abnormal(bench: Bench, job: Path, reps: int) -> list[float]:
    out = []
    assert bench.admin is not None
    with StatusFeed(bench.info["admin"]) as feed:
        for _ in range(reps):
            job_id = bench.admin.submit(job)
            wait_event(feed, job_id, lambda e: (e.get("progress") or {}).get("message") == "sleeping")
            pid = bench.admin.status(job_id)["pid"]
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            wait_event(feed, job_id, lambda e: e["status"] == "FINISHED:ABNORMAL")
            out.append((time.perf_counter() - t0) * 1000)
    return out


def abort_to_tree_gone(bench: Bench, job: Path, reps: int) -> tuple[list[float], list[float]]:
    """(abort -> process tree gone, abort -> FINISHED:ABORTED announced), in ms."""
    tree, status = [], []
    assert bench.admin is not None
    with StatusFeed(bench.info["admin"]) as feed:
        for _ in range(reps):
            job_id = bench.admin.submit(job)
            ev = wait_event(feed, job_id, lambda e: (e.get("progress") or {}).get("message") == "spawned")
            pids = [bench.admin.status(job_id)["pid"], *ev["progress"]["pids"]]
            t0 = time.perf_counter()
            bench.admin.abort(job_id, "bench")
            tree_ms = status_ms = None
            # Both ends at once: the feed is looked at between looks at the processes (1 ms apart).
            while tree_ms is None or status_ms is None:
                if time.perf_counter() - t0 > 30:
                    raise TimeoutError(f"job {job_id}: tree gone {tree_ms}, final status {status_ms} "
                                       "30s after the abort")
                if status_ms is None:
                    ev = feed.next(0.001)
                    if ev is not None and ev["job_id"] == job_id and ev["status"].startswith("FINISHED:"):
                        status_ms = (time.perf_counter() - t0) * 1000
                else:
                    time.sleep(0.001)
                if tree_ms is None and all(B.gone(p) for p in pids):
                    tree_ms = (time.perf_counter() - t0) * 1000
            tree.append(tree_ms)
            status.append(status_ms)
    return tree, status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20, help="jobs running when the parent is killed (default 20)")
    ap.add_argument("--restarts", type=int, default=5, help="parent kill -9 + restart repetitions")
    ap.add_argument("--runs", type=int, default=20, help="repetitions of the per-job figures")
    ap.add_argument("--quick", action="store_true", help="2 restarts and 5 runs")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.quick:
        args.restarts, args.runs = 2, 5

    root = Path(tempfile.mkdtemp(prefix="flrunner-bench-faults-"))
    bench = Bench(root, max_jobs=args.jobs + 4)
    figures: dict[str, dict] = {}
    try:
        bench.start_parent()
        sleeper = make_job(root, "sleeper", "Sleep")
        spawner = make_job(root, "spawner", "Spawn")
        print(f"restart with {args.jobs} jobs running, {args.restarts} times ...", file=sys.stderr)
        readopt, serving, launcher = readoption(bench, sleeper, args.jobs, args.restarts)
        print(f"kill -9 of a job process, {args.runs} times ...", file=sys.stderr)
        kills = kill_to_abnormal(bench, sleeper, args.runs)
        print(f"abort of a job with 3 grandchildren, {args.runs} times ...", file=sys.stderr)
        tree, aborted = abort_to_tree_gone(bench, spawner, args.runs)

        def fig(name: str, values: list[float], what: str) -> None:
            figures[name] = {"median_ms": round(statistics.median(values), 1),
                             "p99_ms": round(B.pct(values, 0.99), 1), "max_ms": round(max(values), 1), "n": len(values), "what": what}

        fig(f"restart_to_{args.jobs}_readopted", readopt,
            f"parent kill -9, restart -> all {args.jobs} running jobs re-adopted")
        fig("restart_to_serving", serving, "of which: new parent started -> serving (parent.json)")
        fig("kill9_to_abnormal", kills, "kill -9 of a job process -> FINISHED:ABNORMAL announced")
        fig("abort_to_tree_gone", tree, "abort request -> job process and 3 grandchildren (2 setsid) gone")
        fig("abort_to_aborted", aborted, "abort request -> FINISHED:ABORTED announced")
    finally:
        bench.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(f"flrunner fault figures ({os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"jobs {launcher.split(' as pid')[0]})")
    print(f"{'figure':<26}{'median':>10}{'p99':>10}{'max':>10}{'n':>5}  what")
    for name, f in figures.items():
        print(f"{name:<26}{f['median_ms']:>8.1f}ms{f['p99_ms']:>8.1f}ms{f['max_ms']:>8.1f}ms{f['n']:>5}  {f['what']}")
    print("(p99 of fewer than 100 values is about the max; re-adoption waits for each job's next "
          "heartbeat, every 2s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                           "platform": platform.platform()},
                                               "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
