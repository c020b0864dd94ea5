#!/usr/bin/env python3
"""Fault-handling figures of a real parent, each a median (and p99 or max) over repetitions.

- parent kill -9 + restart -> all N running jobs re-adopted: from the moment the new parent is
  started to the last "re-adopted" entry in the jobs' histories (N = ``--jobs``, default 20); also
  the part of it until the new parent serves (publishes parent.json), and from then on (target:
  all re-adopted within 300 ms of the new parent serving);
- kill -9 of a job process -> ``FINISHED:ABNORMAL`` announced on the status feed;
- abort -> the job's whole process tree gone: the job process and three ``sleep`` grandchildren
  (one in its group, one in a session of its own, one in its own session and orphaned), from the
  admin's abort request until none of them is alive.

- a pause of the parent (SIGSTOP for 30 s and 120 s, then SIGCONT; ``--pauses``) with jobs and
  sites running, at the default liveness limits (30 s): how many jobs and sites are intact
  afterwards (still running / logged in with the same session, nothing aborted or dropped), and
  how long the parent takes to answer after SIGCONT;
- a small submission while a 100,000-file job folder is being copied: its answer time, next to
  the same submission's answer time on an idle parent in the same run.

The parent runs with ``--abort-grace 1 --term-grace 1`` and its default heartbeat settings (a job
process learns that its parent was replaced the moment its connection is made again).

Usage: python scripts/bench_faults.py [--jobs 20] [--quick] [--only PHASE ...] [--json FILE]
Phases: readopt, kill, abort, pause, submit. Every process it starts is ended before it exits.
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
from typing import Sequence

import benchlib as B
from flrunner.admin.client import AdminClient, StatusFeed

WORKFLOWS = '''
import subprocess, sys
from flrunner import Controller


class Sleep(Controller):
    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        engine.set_run_progress({"message": "sleeping"})
        engine.update_job_run_status()
        abort_signal.wait(3600)


class Beat(Controller):
    """Progress {"beat": n} every second, until aborted."""

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        n = 0
        while not abort_signal.triggered:
            n += 1
            engine.set_run_progress({"beat": n})
            engine.update_job_run_status()
            abort_signal.wait(1.0)


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

    def __init__(self, root: Path, max_jobs: int, options: Sequence[str] = ()) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ws = root / "ws"
        self.max_jobs = max_jobs
        self.options = list(options)
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
                                   ["--max-jobs", str(self.max_jobs), *self.options], abort_grace=1, log_level=None,
                                   admin_timeout=30)
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


def readoption(bench: Bench, job: Path, n: int, reps: int) -> tuple[list[float], list[float], list[float], str]:
    """(restart -> last re-adoption, restart -> serving, serving -> last re-adoption, in ms; launcher)
    over ``reps`` restarts."""
    to_all, to_serving, serving_to_all = [], [], []
    launcher = "?"
    for rep in range(reps):
        assert bench.admin is not None
        ids = [bench.admin.submit(job) for _ in range(n)]
        B.wait_until(lambda: all(bench.admin.status(i)["status"] == "RUNNING" for i in ids), 120, f"{n} jobs to run", 0.1)
        launcher = bench.admin.status(ids[0])["history"][1]["reason"]
        bench.kill9()
        started = bench.start_parent()
        serving = time.time()  # an upper bound: parent.json seen
        to_serving.append((serving - started) * 1000)

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
        serving_to_all.append(max(0.0, (max(times) - serving) * 1000))  # type: ignore[arg-type]
        print(f"  restart {rep + 1}/{reps}: {n} jobs re-adopted {to_all[-1]:.0f} ms after the new parent started",
              file=sys.stderr)
        for i in ids:
            bench.admin.abort(i, "next repetition")
        B.wait_until(lambda: all(bench.admin.status(i)["status"].startswith("FINISHED:") for i in ids), 60,
             "the jobs to end", 0.1)
    return to_all, to_serving, serving_to_all, launcher


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


def pause_parent(root: Path, seconds: float, jobs: int = 4, sites: int = 3, settle: float = 10.0) -> dict:
    """SIGSTOP the parent for ``seconds`` with ``jobs`` jobs and ``sites`` site agents, SIGCONT it,
    and after ``settle`` seconds count what is intact."""
    bench = Bench(root / f"pause-{seconds:g}", max_jobs=jobs + 2)
    try:
        bench.start_parent()
        assert bench.admin is not None and bench.parent is not None
        for i in range(sites):
            bench.procs.spawn(["-m", "flrunner", "site", "--name", f"site-{i}", "--server", bench.parent.sites],
                              f"site-{i}")
        B.wait_until(lambda: len(bench.admin.clients()) == sites, 60, f"{sites} sites to log in", 0.1)
        sessions = {c["name"]: c["login_time"] for c in bench.admin.clients()}
        beat = make_job(bench.root, "beat", "Beat")
        ids = [bench.admin.submit(beat) for _ in range(jobs)]
        B.wait_until(lambda: all((bench.admin.status(i).get("progress") or {}).get("beat", 0) >= 2 for i in ids), 60,
                     "the jobs to beat", 0.1)
        os.kill(bench.parent.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)  # the pause under test
        finally:
            os.kill(bench.parent.pid, signal.SIGCONT)
        t0 = time.perf_counter()
        bench.admin.ping()
        first_answer = (time.perf_counter() - t0) * 1000
        beats = {i: bench.admin.status(i)["progress"]["beat"] for i in ids}
        time.sleep(settle)  # what the first checks after the pause would have done, done
        intact_jobs = 0
        for i in ids:
            job = bench.admin.status(i)
            if job["status"] == "RUNNING" and job["progress"]["beat"] > beats[i] and \
                    not any("abort" in h["reason"] or "hung" in h["reason"] for h in job["history"]):
                intact_jobs += 1
        now = {c["name"]: c["login_time"] for c in bench.admin.clients()}
        intact_sites = sum(1 for name, t in sessions.items() if now.get(name) == t)
        return {"pause_s": seconds, "jobs": jobs, "jobs_intact": intact_jobs, "sites": sites,
                "sites_intact": intact_sites, "first_answer_ms": round(first_answer, 1)}
    finally:
        bench.stop()


def submit_during_copy(root: Path, files: int, reps: int) -> tuple[list[float], list[float]]:
    """(answer times of a small submit on an idle parent, the same while a ``files``-file folder is
    being copied), in ms."""
    import threading

    bench = Bench(root / "submit", max_jobs=4, options=["--max-job-files", str(files + 1000)])
    try:
        bench.start_parent()
        assert bench.admin is not None
        small = make_job(root / "submit", "small", "Sleep")
        big = make_job(root / "submit", "big", "Sleep")
        data = big / "app_server" / "custom" / "data"
        data.mkdir()
        for i in range(files):
            (data / f"{i}.txt").write_bytes(b"x")

        def timed_submits() -> list[float]:
            out = []
            for _ in range(reps):
                t0 = time.perf_counter()
                job_id = bench.admin.submit(small)
                out.append((time.perf_counter() - t0) * 1000)
                bench.admin.abort(job_id, "bench")
            return out

        idle = timed_submits()
        done: dict = {}
        thread = threading.Thread(target=lambda: done.update(job=AdminClient(bench.info["admin"], timeout=600)
                                                             .submit(big)), daemon=True)
        thread.start()
        known = {j["job_id"] for j in bench.admin.jobs()}
        B.wait_until(lambda: any(d.name not in known for d in (bench.ws / "jobs").iterdir()), 120,
                     "the parent to be copying the large folder", 0.05)
        busy = timed_submits()
        if not thread.is_alive():
            print("  (the large folder was copied before the small submissions were done: copy overlap "
                  "incomplete)", file=sys.stderr)
        thread.join(600)
        return idle, busy
    finally:
        bench.stop()


PHASES = ("readopt", "kill", "abort", "pause", "submit")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20, help="jobs running when the parent is killed (default 20)")
    ap.add_argument("--restarts", type=int, default=5, help="parent kill -9 + restart repetitions")
    ap.add_argument("--runs", type=int, default=20, help="repetitions of the per-job figures")
    ap.add_argument("--pauses", default="30,120", help="parent pauses to try, in seconds (default 30,120)")
    ap.add_argument("--files", type=int, default=100_000, help="files of the large folder being copied")
    ap.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES), help="run these phases only")
    ap.add_argument("--quick", action="store_true", help="2 restarts, 5 runs, one 30 s pause, a 20,000-file folder")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.quick:
        args.restarts, args.runs, args.pauses, args.files = 2, 5, "30", 20_000

    root = Path(tempfile.mkdtemp(prefix="flrunner-bench-faults-"))
    figures: dict[str, dict] = {}
    pauses: list[dict] = []
    launcher = "?"

    def fig(name: str, values: list[float], what: str, target_ms: float | None = None) -> None:
        figures[name] = {"median_ms": round(statistics.median(values), 1),
                         "p99_ms": round(B.pct(values, 0.99), 1), "max_ms": round(max(values), 1), "n": len(values),
                         "what": what}
        if target_ms is not None:
            figures[name]["target_ms"] = target_ms
            figures[name]["verdict"] = "pass" if max(values) <= target_ms else "MISS"

    try:
        if {"readopt", "kill", "abort"} & set(args.only):
            bench = Bench(root, max_jobs=args.jobs + 4)
            try:
                bench.start_parent()
                sleeper = make_job(root, "sleeper", "Sleep")
                spawner = make_job(root, "spawner", "Spawn")
                if "readopt" in args.only:
                    print(f"restart with {args.jobs} jobs running, {args.restarts} times ...", file=sys.stderr)
                    readopt, serving, after, launcher = readoption(bench, sleeper, args.jobs, args.restarts)
                    fig(f"restart_to_{args.jobs}_readopted", readopt,
                        f"parent kill -9, restart -> all {args.jobs} running jobs re-adopted")
                    fig("restart_to_serving", serving, "of which: new parent started -> serving (parent.json)")
                    fig("serving_to_readopted", after, f"of which: serving -> all {args.jobs} re-adopted", 300.0)
                if "kill" in args.only:
                    print(f"kill -9 of a job process, {args.runs} times ...", file=sys.stderr)
                    fig("kill9_to_abnormal", kill_to_abnormal(bench, sleeper, args.runs),
                        "kill -9 of a job process -> FINISHED:ABNORMAL announced")
                if "abort" in args.only:
                    print(f"abort of a job with 3 grandchildren, {args.runs} times ...", file=sys.stderr)
                    tree, aborted = abort_to_tree_gone(bench, spawner, args.runs)
                    fig("abort_to_tree_gone", tree, "abort request -> job process and 3 grandchildren (2 setsid) gone")
                    fig("abort_to_aborted", aborted, "abort request -> FINISHED:ABORTED announced")
            finally:
                bench.stop()
        if "pause" in args.only:
            for seconds in (float(p) for p in args.pauses.split(",")):
                print(f"parent paused (SIGSTOP) for {seconds:g}s with 4 jobs and 3 sites ...", file=sys.stderr)
                pauses.append(pause_parent(root, seconds))
        if "submit" in args.only:
            print(f"small submissions while a {args.files}-file folder is copied ...", file=sys.stderr)
            idle, busy = submit_during_copy(root, args.files, max(5, args.runs // 2))
            fig("submit_answer_idle", idle, "a small submit's answer, idle parent (baseline)")
            fig("submit_answer_copying", busy, f"the same while a {args.files:,}-file folder is being copied")
            figures["submit_answer_copying"]["ratio"] = round(statistics.median(busy) / statistics.median(idle), 2)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"flrunner fault figures ({os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"jobs {launcher.split(' as pid')[0]})")
    print(f"{'figure':<26}{'median':>10}{'p99':>10}{'max':>10}{'n':>5}  what")
    for name, f in figures.items():
        extra = f"  [target <= {f['target_ms']:g} ms: {f['verdict']}]" if "target_ms" in f else ""
        extra += f"  [x{f['ratio']} the idle baseline]" if "ratio" in f else ""
        print(f"{name:<26}{f['median_ms']:>8.1f}ms{f['p99_ms']:>8.1f}ms{f['max_ms']:>8.1f}ms{f['n']:>5}  {f['what']}{extra}")
    for p in pauses:
        print(f"parent paused {p['pause_s']:g}s: jobs intact {p['jobs_intact']}/{p['jobs']}, sites intact "
              f"{p['sites_intact']}/{p['sites']}, first answer after SIGCONT {p['first_answer_ms']:.0f} ms")
    if figures:
        print("(p99 of fewer than 100 values is about the max)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                           "platform": platform.platform()},
                                               "figures": figures, "pauses": pauses}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
