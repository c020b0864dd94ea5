#!/usr/bin/env python3
"""Core runtime figures, each next to a baseline measured in the same run.

Starts a real parent (the cold launcher) in a temporary workspace and measures:

- submit -> RUNNING (durable in the store), seen by an admin client on the status feed;
  baseline: a bare ``sys.executable`` that imports pyzmq and msgpack and exits;
- trivial job, submit -> FINISHED:COMPLETED;
- kill -9 of a job process -> FINISHED:ABNORMAL announced;
- job process RSS and USS while running; baseline: a bare interpreter that imported pyzmq and msgpack.

Usage: python scripts/bench_core.py [--runs N] [--json FILE]
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from flrunner.admin import AdminClient, StatusFeed, find_parent
from flrunner.errors import ParentUnavailable

WORKFLOW = '''
from flrunner import Controller


class Sleep(Controller):
    def __init__(self, seconds=0.0):
        super().__init__()
        self.seconds = seconds

    def control_flow(self, abort_signal, fl_ctx):
        if self.seconds:
            abort_signal.wait(self.seconds)
'''


def make_job(root: Path, name: str, seconds: float) -> Path:
    job = root / name
    (job / "app_server" / "config").mkdir(parents=True)
    (job / "app_server" / "custom").mkdir()
    (job / "app_server" / "custom" / "bench_wf.py").write_text(WORKFLOW)
    (job / "app_server" / "config" / "config_fed_server.json").write_text(json.dumps(
        {"format_version": 2, "workflows": [{"id": "wf", "path": "bench_wf.Sleep", "args": {"seconds": seconds}}]}))
    (job / "meta.json").write_text(json.dumps({"name": name, "deploy_map": {"app_server": ["server"]}}))
    return job


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def wait_event(feed: StatusFeed, job_id: str, pred, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = feed.next(deadline - time.monotonic())
        if ev is not None and ev["job_id"] == job_id and pred(ev):
            return ev
    raise TimeoutError(f"job {job_id}: no matching status in {timeout}s")


def baseline_start(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import zmq, msgpack"], check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def baseline_memory() -> tuple[float, float]:
    p = subprocess.Popen([sys.executable, "-c", "import zmq, msgpack, sys; sys.stdout.write('x'); sys.stdout.flush(); "
                          "import time; time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        p.stdout.read(1)
        mi = psutil.Process(p.pid).memory_full_info()
        return mi.rss / 2**20, mi.uss / 2**20
    finally:
        p.kill()
        p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--launcher", choices=("warm", "cold"), default="cold")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="flrunner-bench-"))
    ws = root / "ws"
    parent = subprocess.Popen([sys.executable, "-m", "flrunner", "parent", "--workspace", str(ws), "--sites",
                               "tcp://127.0.0.1:*", "--abort-grace", "1", "--term-grace", "1", "--launcher", args.launcher],
                              stdout=open(root / "parent.out", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    figures: dict[str, dict] = {}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                info = find_parent(ws)
                break
            except ParentUnavailable:
                if time.monotonic() > deadline or parent.poll() is not None:
                    raise SystemExit("the parent did not start; see " + str(root / "parent.out"))
                time.sleep(0.02)
        admin = AdminClient(info["admin"])
        feed = StatusFeed(info["admin"])
        trivial = make_job(root, "trivial", 0.0)
        sleeper = make_job(root, "sleeper", 60.0)

        to_running, to_done, to_abnormal, rss, uss = [], [], [], [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            job_id = admin.submit(trivial)
            wait_event(feed, job_id, lambda e: e["status"] == "RUNNING")
            to_running.append((time.perf_counter() - t0) * 1000)
            wait_event(feed, job_id, lambda e: e["status"].startswith("FINISHED:"))
            to_done.append((time.perf_counter() - t0) * 1000)
        for _ in range(max(3, args.runs // 3)):
            job_id = admin.submit(sleeper)
            ev = wait_event(feed, job_id, lambda e: e["status"] == "RUNNING")
            pid = admin.status(job_id)["pid"]
            time.sleep(0.2)  # let the job settle before reading its memory
            mi = psutil.Process(pid).memory_full_info()
            rss.append(mi.rss / 2**20)
            uss.append(mi.uss / 2**20)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            wait_event(feed, job_id, lambda e: e["status"] == "FINISHED:ABNORMAL")
            to_abnormal.append((time.perf_counter() - t0) * 1000)
        base_start = baseline_start(args.runs)
        base_rss, base_uss = baseline_memory()
        feed.close()
        admin.close()

        def fig(name: str, values: list[float], unit: str, baseline: float, what: str) -> None:
            med = statistics.median(values)
            figures[name] = {"median": round(med, 2), "p99": round(pct(values, 0.99), 2), "unit": unit,
                             "baseline": round(baseline, 2), "ratio": round(med / baseline, 2) if baseline else None,
                             "baseline_is": what}

        bs = statistics.median(base_start)
        kind = args.launcher
        fig(f"submit_to_running_{kind}", to_running, "ms", bs, "python -c 'import zmq, msgpack'")
        fig(f"trivial_job_{kind}", to_done, "ms", bs, "python -c 'import zmq, msgpack'")
        fig("kill_to_abnormal", to_abnormal, "ms", 0.0, "none (the NVFlare 2.9 reference: 4600 ms)")
        fig(f"child_rss_{kind}", rss, "MB", base_rss, "RSS of python that imported zmq, msgpack")
        fig(f"child_uss_{kind}", uss, "MB", base_uss, "USS of python that imported zmq, msgpack")
    finally:
        parent.send_signal(signal.SIGTERM)
        try:
            parent.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        parent.wait()
        shutil.rmtree(root, ignore_errors=True)

    print(f"{'figure':<24}{'median':>10}{'p99':>10}  {'unit':<5}{'baseline':>10}{'ratio':>8}  baseline is")
    for name, f in figures.items():
        ratio = "-" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        print(f"{name:<24}{f['median']:>10.2f}{f['p99']:>10.2f}  {f['unit']:<5}{f['baseline']:>10.2f}{ratio:>8}  {f['baseline_is']}")
    if args.json:
        doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
               "figures": figures}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
