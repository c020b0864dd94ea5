#!/usr/bin/env python3
"""Aux round trips through the parent, each next to a raw ZeroMQ round trip measured in the same run.

Starts a real parent in a temporary workspace and, for each case, the sites and one job whose
workflow times ``send_aux_request`` to every site of the job (job process -> parent -> sites ->
parent -> job process), with a small payload and with a 10 MB binary payload (it travels as a
raw frame); each site answers with a small Shareable. The job writes its timings to its run dir.

Cases and the kind of site each uses (the output says it again next to every figure):

- ``1 site``, ``10 sites``: real site agents (``flrunner site``), one process each, which
  receive the job's site app as a bundle and serve ``bench`` with an executor;
- ``100 sites``: lightweight peers: one process holding 100 pyzmq DEALER sockets that log in
  on the parent's sites endpoint like a site agent, heartbeat, accept ``start_job`` without
  loading an app, and answer each ``aux`` push (decoding its header with ``flrunner.transport.wire``, not
  copying the payload) with a small Shareable. 100 real agents would not fit on 2 cores.

Baseline, per case and payload: a ROUTER in this process sends the same frames
(``flrunner.aux.payload.encode_shareable`` of the same Shareable) to as many DEALER peers (one
process, like the lightweight peers) over tcp loopback and waits for every peer's small reply.
``ratio`` is the aux median over the baseline median.

Usage: python scripts/bench_aux.py [--quick] [--json FILE] [--keep]
Every process it starts (parent, job processes, sites, peers) runs in its own process group
under the temporary folder and is ended before the script exits, on failure too.
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
from dataclasses import dataclass
from pathlib import Path

import zmq

import benchlib as B
from flrunner.admin.client import AdminClient
from flrunner.aux.payload import encode_shareable
from flrunner.shareable import Shareable

SMALL = {"x": 1, "s": "hello", "l": [1.5, 2.5, 3.5]}
BIG_MB = 10

#: The job's code: copied into the job's custom folder (loaded as ``bench_aux_job``).
JOB_CODE = '''
import json
import os
import time

from flrunner import Controller, FLComponent, Shareable


class AuxBench(Controller):
    """Times send_aux_request to ``sites`` with a small and a big payload; writes bench.json."""

    def __init__(self, sites, small, small_iters, big_iters, big_mb, warmup=5, timeout=120.0):
        super().__init__()
        self.sites = sorted(sites)
        self.small = small
        self.small_iters = small_iters
        self.big_iters = big_iters
        self.big_mb = big_mb
        self.warmup = warmup
        self.timeout = timeout

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()

        def once(payload):
            t0 = time.perf_counter()
            replies = engine.send_aux_request(self.sites, "bench", payload, self.timeout, fl_ctx)
            took = time.perf_counter() - t0
            bad = {s: (r.get_return_code(), r.get_header("reason")) for s, r in replies.items()
                   if r.get_return_code() != "OK"}
            if bad or sorted(replies) != self.sites:
                raise RuntimeError(f"bad replies: {bad or sorted(replies)}")
            return took * 1000

        small = Shareable(self.small)
        big = Shareable({"blob": os.urandom(int(self.big_mb * 2**20))})
        for _ in range(self.warmup):
            once(small)
        small_ms = [once(small) for _ in range(self.small_iters) if not abort_signal.triggered]
        once(big)
        big_ms = [once(big) for _ in range(self.big_iters) if not abort_signal.triggered]
        path = os.path.join(engine.get_workspace().get_run_dir(fl_ctx.get_job_id()), "bench.json")
        with open(path, "w") as f:
            json.dump({"small": small_ms, "big": big_ms}, f)


class BenchTask(FLComponent):
    """A real site's side: answers with the site's name and the size of the blob it got."""

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        blob = shareable.get("blob")
        return Shareable({"site": fl_ctx.get_identity_name(), "len": len(blob) if blob is not None else 0})
'''


@dataclass
class Case:
    label: str
    sites: int
    lightweight: bool
    small_iters: int
    big_iters: int

    @property
    def kind(self) -> str:
        return "lightweight peers (1 process)" if self.lightweight else "site agent processes"


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("1 site", 1, False, 200, 10), Case("10 sites", 10, False, 60, 5),
                Case("100 sites", 100, True, 30, 3)]
    return [Case("1 site", 1, False, 2000, 100), Case("10 sites", 10, False, 500, 40),
            Case("100 sites", 100, True, 200, 20)]


# --- one case through the runtime ------------------------------------------------------------------


def make_job(root: Path, case: Case, names: list[str]) -> Path:
    job = root / f"job-{case.sites}"
    app = job / "app"
    (app / "config").mkdir(parents=True)
    (app / "custom").mkdir()
    (app / "custom" / "bench_aux_job.py").write_text(JOB_CODE)
    wf_args = {"sites": names, "small": SMALL, "small_iters": case.small_iters, "big_iters": case.big_iters,
               "big_mb": BIG_MB}
    (app / "config" / "config_fed_server.json").write_text(json.dumps(
        {"format_version": 2, "workflows": [{"id": "bench", "path": "bench_aux_job.AuxBench", "args": wf_args}]}))
    (app / "config" / "config_fed_client.json").write_text(json.dumps(
        {"format_version": 2, "executors": [{"tasks": ["bench"], "executor": {"path": "bench_aux_job.BenchTask"}}]}))
    (job / "meta.json").write_text(json.dumps({"name": f"bench-aux-{case.sites}", "min_clients": len(names),
                                               "deploy_map": {"app": ["server", *names]}}))
    return job


def run_case(procs: B.Processes, admin: AdminClient, sites_endpoint: str, root: Path, case: Case) -> dict:
    prefix = f"s{case.sites}-"
    names = [f"{prefix}{i:05d}" for i in range(1, case.sites + 1)]  # the lightweight peers' names
    if case.lightweight:
        started = [procs.spawn([str(B.HERE / "benchlib.py"), "peers", sites_endpoint, prefix, "1", str(case.sites),
                                "logout"], f"peers-{case.sites}")]
    else:
        started = [procs.spawn(["-m", "flrunner", "site", "--name", n, "--server", sites_endpoint,
                                "--log-level", "WARNING"], f"site-{n}") for n in names]
    try:
        B.wait_until(lambda: set(names) <= {c["name"] for c in admin.clients()}, 60, f"{case.sites} sites to log in",
                     0.05)
        job_id = admin.submit(make_job(root, case, names))
        job = B.wait_until(lambda: (lambda j: j if j["status"].startswith("FINISHED:") else None)(admin.status(job_id)),
                         300, f"job {job_id} to end", 0.1)
        if job["status"] != "FINISHED:COMPLETED":
            raise RuntimeError(f"the bench job ended {job['status']}: {job.get('error') or job['history'][-1]}")
        timings = json.loads((root / "ws" / "jobs" / job_id / "bench.json").read_text())
    finally:
        procs.end(started)
    B.wait_until(lambda: not set(names) & {c["name"] for c in admin.clients()}, 30, f"{case.sites} sites to leave",
                 0.05)
    big = Shareable({"blob": os.urandom(BIG_MB * 2**20)})
    # The raw baseline: a ROUTER here, as many DEALER peers in one process, 3 warm-up rounds.
    raw = B.floor_fanout(procs, case.sites, {"small": (encode_shareable(Shareable(SMALL)), case.small_iters),
                                             "big": (encode_shareable(big), case.big_iters)}, warmup=3)
    rows = []
    for payload, label in (("small", "small"), ("big", f"{BIG_MB} MB")):
        aux, base = timings[payload], raw[payload]
        rows.append({"case": case.label, "sites": case.sites, "site_kind": case.kind, "payload": label,
                     "n": len(aux), "median_ms": statistics.median(aux), "p99_ms": B.pct(aux, 0.99),
                     "raw_median_ms": statistics.median(base), "raw_p99_ms": B.pct(base, 0.99),
                     "ratio": statistics.median(aux) / statistics.median(base)})
    return {"rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer round trips (about 40 s on 2 cores)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, workspace)")
    args = ap.parse_args()

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by {signal.Signals(signum).name}")  # unwinds through the cleanup below

    signal.signal(signal.SIGTERM, on_sigterm)
    root = Path(tempfile.mkdtemp(prefix="flrunner-bench-aux-"))
    procs = B.Processes(root)
    rows: list[dict] = []
    t_start = time.monotonic()
    try:
        parent = B.ParentProc(procs, root / "ws", "parent", ["--site-timeout", "60"], abort_grace=1, admin_timeout=30)
        with parent.admin as admin:
            for case in cases(args.quick):
                print(f"... {case.label} ({case.kind})", file=sys.stderr, flush=True)
                rows.extend(run_case(procs, admin, parent.sites, root, case)["rows"])
    finally:
        procs.end_all()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    print(f"aux round trip: job process -> parent -> every site -> parent -> job process (send_aux_request); "
          f"raw: ROUTER -> every DEALER peer -> ROUTER, same frames, same run. {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}.")
    header = f"{'case':<10}{'site kind':<31}{'payload':<9}{'n':>5}{'median ms':>11}{'p99 ms':>9}" \
             f"{'raw median':>12}{'raw p99':>9}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['case']:<10}{r['site_kind']:<31}{r['payload']:<9}{r['n']:>5}{r['median_ms']:>11.2f}"
              f"{r['p99_ms']:>9.2f}{r['raw_median_ms']:>12.2f}{r['raw_p99_ms']:>9.2f}{r['ratio']:>7.1f}x")
    print(f"({'quick' if args.quick else 'full'} run, {time.monotonic() - t_start:.0f} s; each site answers "
          f"with a small Shareable, the {BIG_MB} MB payload goes one way)")
    if args.json:
        doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform(), "pyzmq": zmq.pyzmq_version(),
                           "libzmq": zmq.zmq_version()},
               "quick": args.quick, "big_mb": BIG_MB, "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
