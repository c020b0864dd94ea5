#!/usr/bin/env python3
"""flrunner's performance figures, each next to a floor measured in the same run.

Starts real parents (``python -m flrunner parent``), site agents, lightweight site peers and job
processes in a temporary folder, and prints one table: for each figure its median and p99, the
floor it is compared with (measured in this run, on this machine), the ratio of the medians, and
the issue's target with pass/MISS. Every timing taken inside a job process is taken by the job's
own workflow (``bench_job.Bench``) and written to its run dir.

Phases (each starts its own parent; a failing phase is reported and the others still run):

1. floors: interpreter start (``-c pass``, ``-c "import zmq, msgpack"``, ``-c "import
   child.main"``), a fresh interpreter's first message, a fork from a warm template and its
   first message, their memory, kill -9 to pidfd + durable commit, msgpack of 10,000 clients;
2. per launcher (cold, and warm when ``flrunner parent --launcher`` offers it): idle CPU,
   submit -> RUNNING and trivial job -> FINISHED:COMPLETED (both seen on the status feed, which
   announces a status only once it is committed to the store), child RSS/USS, kill -9 ->
   FINISHED:ABNORMAL, abort -> the job's process tree (the job and a ``sleep`` it started) gone;
3. sites: a job with 10 real site agents times ``sync_clients_from_main_process`` and durable
   status updates, alternating with the same round trips over a plain DEALER to a raw msgpack
   server (the floors, timed in the same job process), and ``send_aux_request`` to 1 and 10
   sites; then 500 lightweight peers (one process) for 100 and 500 sites; raw ROUTER fan-out
   floors with the same frames;
4. 10,000 sites (lightweight peers, 4 processes): parent RSS next to a bare ROUTER holding as many
   connections, parent CPU with their heartbeats, submit -> RUNNING, full and delta
   ``sync_clients_from_main_process`` (alternating with their raw floors);
5. 100 concurrent sleeping jobs: time to start them all, parent CPU, ``AdminClient.jobs()``
   round trips while they run and once they have ended.

Usage: python scripts/bench.py [--quick] [--json FILE] [--keep] [--profile DIR] [--only PHASES]
Every process it starts runs in its own process group with its cwd in the temporary folder and is
ended before the script exits (also on an error or Ctrl-C).
"""

from __future__ import annotations

import argparse
import gc
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
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgpack
import psutil
import zmq

import benchlib as B
from benchlib import Figure, Target
from flrunner.aux.payload import encode_shareable
from flrunner.shareable import Shareable

SMALL = {"x": 1, "s": "hello", "l": [1.5, 2.5, 3.5]}
BIG_MB = 10
NO_WARM = "n/a (no warm launcher)"
#: Launcher names in the DISPATCHED history entries -> the names used here.
LAUNCHER_NAMES = {"process": "cold", "warm": "warm"}
PHASES = ("floors", "launchers", "sites", "10k", "100jobs")
RAW_RTT = ("raw round trip from the job process: a plain pyzmq DEALER over ipc, msgpack, same messages, "
           "in blocks alternating with the engine's calls")
#: Where submit -> RUNNING goes, from the job's history times (wall clock, same machine).
STAGES = {
    "submit->SUBMITTED": "admin request, job folder read and copied (off the loop), until the insert",
    "SUBMITTED->DISPATCHED": "insert committed, scheduled, launcher.launch (fork or spawn)",
    "DISPATCHED->RUNNING": "DISPATCHED committed, the job process boots and says hello",
    "RUNNING->feed": "RUNNING committed and pushed to the status feed",
}


@dataclass
class Reps:
    """How many samples each measurement takes."""

    interp: int
    mem: int
    submit: int
    kill: int
    abort: int
    idle_s: float
    rtt: int
    status: int
    aux: dict  # sites -> (small iterations, 10 MB iterations)
    sync_full: int
    sync_delta: int
    submit_10k: int
    admin: int


QUICK = Reps(interp=5, mem=2, submit=8, kill=3, abort=3, idle_s=2.0, rtt=300, status=60,
             aux={1: (100, 3), 10: (50, 2), 100: (20, 1), 500: (10, 0)}, sync_full=3, sync_delta=50,
             submit_10k=3, admin=100)
FULL = Reps(interp=20, mem=5, submit=30, kill=15, abort=10, idle_s=10.0, rtt=3000, status=400,
            aux={1: (1000, 20), 10: (300, 10), 100: (100, 4), 500: (40, 2)}, sync_full=20, sync_delta=300,
            submit_10k=10, admin=500)


class Bench:
    """One run: the temporary folder, the processes, the floors and the figures."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.reps = QUICK if args.quick else FULL
        self.procs = B.Processes(root)
        self.figures: dict[str, Figure] = {}
        self.floors: dict[str, Figure] = {}
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.breakdown: dict[str, dict[str, list[float]]] = {}
        self.t0 = time.monotonic()
        self.launchers, _ = B.launcher_support()
        self.profile_dir = Path(args.profile).resolve() if args.profile else None
        self._n = 0

    # --- bookkeeping ----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def add(self, name: str, unit: str, values: list[float], baseline: str | None = None, note: str = "",
            target: Target | None = None, na: str | None = None, baseline_value: float | None = None) -> None:
        """A figure; ``baseline`` names a floor (its median is the baseline)."""
        fig = Figure(name, unit, list(values), note=note, target=target, na=na)
        if baseline is not None and baseline in self.floors and self.floors[baseline].median is not None:
            fig.baseline = self.floors[baseline].median
            fig.baseline_is = self.floors[baseline].note
        elif baseline_value is not None:
            fig.baseline = baseline_value
        if na is None and not values:
            fig.na = "no samples"
        self.figures[name] = fig

    def na(self, name: str, unit: str, why: str, target: Target | None = None, note: str = "") -> None:
        self.figures[name] = Figure(name, unit, [], note=note, target=target, na=why)

    def floor(self, name: str, unit: str, values: list[float], what: str) -> None:
        self.floors[name] = Figure(name, unit, list(values), note=what)

    def parent(self, name: str, options: list[str] | None = None) -> B.ParentProc:
        self._n += 1
        profile = self.profile_dir / f"{name}.prof" if self.profile_dir else None
        return B.ParentProc(self.procs, self.root / f"ws-{self._n}-{name}", name, options or [], profile)

    def stop(self, parent: B.ParentProc, timeout: float = 60.0) -> None:
        """Stop a parent; note (and kill) what it started that outlived it."""
        for what in parent.stop(timeout):
            self.warnings.append(f"parent '{parent.name}' stopped, but {what} was still running 2 s later (killed)")
            self.log(f"WARNING {self.warnings[-1]}")

    def launcher_options(self, launcher: str) -> list[str]:
        """``--launcher NAME`` if the parent offers it (without the option there is only cold)."""
        return ["--launcher", launcher] if launcher in self.launchers else []

    def job(self, name: str, workflow: str, args: dict, sites: list[str] | tuple = ()) -> Path:
        self._n += 1
        return B.make_job(self.root, f"{name}-{self._n}", workflow, args, list(sites))

    def run_job(self, parent: B.ParentProc, job: Path, timeout: float) -> dict:
        """Submit, wait for FINISHED:COMPLETED, return the job's bench.json."""
        # Polled, not followed on the status feed: a subscriber would be sent every progress update
        # the job makes, inside the round trips it times.
        job_id = parent.admin.submit(job)
        ev = B.wait_until(lambda: (lambda j: j if j["status"].startswith("FINISHED:") else None)(
            parent.admin.status(job_id)), timeout, f"job {job_id} to end", 0.25)
        if ev["status"] != "FINISHED:COMPLETED":
            raise RuntimeError(f"the bench job ended {ev['status']}: {parent.admin.status(job_id).get('error')}")
        return json.loads((parent.run_dir(job_id) / "bench.json").read_text())

    def phase(self, name: str, fn: Callable[[], None], figures: list[tuple[str, str]]) -> None:
        """Run a phase; if it fails, its figures that are missing become n/a with the error."""
        if self.args.only and name not in self.args.only:
            return
        self.log(f"phase {name}")
        try:
            fn()
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            self.errors.append(f"phase {name}: {msg}")
            self.log(f"phase {name} FAILED:\n{traceback.format_exc()}")
            for fig, unit in figures:
                if fig not in self.figures:
                    self.na(fig, unit, f"error: {msg}")

    # --- 1. floors ---------------------------------------------------------------------------------------
    def floors_phase(self) -> None:
        r, root = self.reps, self.root
        self.floor("interp_bare", "ms", B.floor_interpreter("pass", r.interp), "sys.executable -c pass")
        self.floor("interp_zmq", "ms", B.floor_interpreter("import zmq, msgpack", r.interp),
                   "sys.executable -c 'import zmq, msgpack'")
        self.floor("cold_first_msg", "ms", B.floor_cold_first_message(root, r.interp),
                   "fresh sys.executable, import zmq+msgpack, DEALER -> first message at a ROUTER")
        rss, uss = B.floor_cold_memory(root, r.mem)
        self.floor("cold_rss", "MB", rss, "RSS of a fresh interpreter with zmq, msgpack and a DEALER")
        self.floor("cold_uss", "MB", uss, "USS of a fresh interpreter with zmq, msgpack and a DEALER")
        times, rss, uss = B.floor_warm(self.procs, root, r.interp * 2, r.mem)
        self.floor("warm_first_msg", "ms", times, "fork from a warm template (gc.freeze) -> first message")
        self.floor("warm_rss", "MB", rss, "RSS of a child forked from a warm template, with a DEALER")
        self.floor("warm_uss", "MB", uss, "USS of a child forked from a warm template, with a DEALER")
        self.floor("kill_detect", "ms", B.floor_kill_detect(root, r.kill * 2),
                   "kill -9 -> pidfd readable -> one SQLite WAL commit, synchronous=FULL")
        self.floor("interp_child", "ms", B.floor_interpreter("import child.main", r.interp),
                   "sys.executable -c 'import child.main' (the imports of a cold job process)")
        clients = B.fake_clients(10_000)
        codec = []
        gc.collect()
        gc.disable()
        try:
            for _ in range(max(5, r.sync_full)):
                t0 = time.perf_counter()
                msgpack.unpackb(msgpack.packb(clients))
                codec.append((time.perf_counter() - t0) * 1000)
        finally:
            gc.enable()
        self.floor("codec_10k", "ms", codec, "msgpack encode + decode of 10,000 client dicts (gc off)")

    # --- 2. launchers ----------------------------------------------------------------------------------------
    def launcher_phase(self, launcher: str) -> None:
        r = self.reps
        sfx = "" if launcher == "cold" else "_warm"
        first, mem = f"{launcher}_first_msg", launcher
        parent = self.parent(f"launcher-{launcher}", self.launcher_options(launcher))
        try:
            trivial = self.job(f"trivial-{launcher}", "Sleep", {"seconds": 0})
            sleeper = self.job(f"sleeper-{launcher}", "Sleep", {"seconds": 600})
            tree = self.job(f"tree-{launcher}", "Sleep", {"seconds": 600, "grandchild": True})
            to_running, to_done, rss, uss, to_abnormal, to_gone = [], [], [], [], [], []
            with parent.feed() as feed:
                stages: dict[str, list[float]] = {k: [] for k in STAGES}
                for i in range(r.submit + 1):  # the first run is a warm-up
                    wall0, t0 = time.time(), time.perf_counter()
                    job_id = parent.admin.submit(trivial)
                    ev = B.wait_status(feed, job_id, "RUNNING")
                    t1, wall1 = time.perf_counter(), time.time()
                    end = B.wait_status(feed, job_id, "FINISHED:")
                    t2 = time.perf_counter()
                    if end["status"] != "FINISHED:COMPLETED":
                        raise RuntimeError(f"trivial job ended {end['status']}")
                    _exit_recorded(feed, job_id, end)
                    time.sleep(0.1)  # each submit goes to a quiescent parent (see _exit_recorded)
                    if i:
                        to_running.append((t1 - t0) * 1000)
                        to_done.append((t2 - t0) * 1000)
                        history = parent.admin.status(job_id)["history"]
                        at = {h["status"]: h["time"] for h in history}
                        used = {h["reason"].split("launched by the ")[-1].split(" launcher")[0]
                                for h in history if h["status"] == "DISPATCHED"}
                        marks = [wall0, at["SUBMITTED"], at["DISPATCHED"], at["RUNNING"], wall1]
                        for k, a, b in zip(STAGES, marks, marks[1:]):
                            stages[k].append((b - a) * 1000)
                self.breakdown[launcher] = stages
                used_names = {LAUNCHER_NAMES.get(u, u) for u in used}
                self._idle_cpu(parent, launcher, sfx)
                for i in range(r.kill):
                    job_id = parent.admin.submit(sleeper)
                    ev = B.wait_status(feed, job_id, "RUNNING")
                    B.wait_until(lambda: (parent.run_dir(job_id) / "started.json").exists(), 30, "the sleeper")
                    time.sleep(0.3)
                    m = B.memory(ev["pid"])
                    rss.append(m[0])
                    uss.append(m[1])
                    t0 = time.perf_counter()
                    os.kill(ev["pid"], signal.SIGKILL)
                    end = B.wait_status(feed, job_id, "FINISHED:")
                    to_abnormal.append((time.perf_counter() - t0) * 1000)
                    if end["status"] != "FINISHED:ABNORMAL":
                        raise RuntimeError(f"killed job ended {end['status']}")
                for i in range(r.abort):
                    job_id = parent.admin.submit(tree)
                    ev = B.wait_status(feed, job_id, "RUNNING")
                    started = B.wait_until(lambda: _read_json(parent.run_dir(job_id) / "started.json"), 30,
                                           "the sleeper and its grandchild")
                    pids = [ev["pid"], started["grandchild"]]
                    t0 = time.perf_counter()
                    parent.admin.abort(job_id, "bench")
                    B.wait_until(lambda: all(B.gone(p) for p in pids), 30, "the job's process tree to go", 0.0005)
                    to_gone.append((time.perf_counter() - t0) * 1000)
                    end = B.wait_status(feed, job_id, "FINISHED:")
                    if end["status"] != "FINISHED:ABORTED":
                        raise RuntimeError(f"aborted job ended {end['status']}")
        finally:
            self.stop(parent)
        note = f"{launcher} launcher" if used_names == {launcher} else \
            f"{launcher} launcher asked for, the parent used: {', '.join(sorted(used_names))}"
        self.add(f"submit_to_running_{launcher}", "ms", to_running, first,
                 f"{note}; quiescent parent; feed event (committed)",
                 Target("median", 15 if launcher == "warm" else 80))
        self.add(f"trivial_job_{launcher}", "ms", to_done, first, f"{note}; submit -> FINISHED:COMPLETED on the feed",
                 Target("median", 100) if launcher == "warm" else None)
        self.add(f"kill_to_abnormal{sfx}", "ms", to_abnormal, "kill_detect", f"{note}; kill -9 -> feed event",
                 Target("median", 20))
        self.add(f"abort_to_gone{sfx}", "ms", to_gone, None, f"{note}; admin abort -> job + its `sleep` gone")
        self.add(f"child_rss_{launcher}", "MB", rss, f"{mem}_rss", f"{note}; sleeping job process")
        self.add(f"child_uss_{launcher}", "MB", uss, f"{mem}_uss", f"{note}; sleeping job process",
                 Target("median", 4 if launcher == "warm" else 10))

    def _idle_cpu(self, parent: B.ParentProc, launcher: str, sfx: str) -> None:
        """Parent CPU with nothing happening (after the trivial jobs, so a warm template exists)."""
        idle = self.procs.spawn([str(B.HERE / "benchlib.py"), "idle", f"ipc://{self.root}/idle-{launcher}.sock"],
                                f"idle-{launcher}")
        try:
            time.sleep(0.5)
            helpers = parent.helpers()
            cpu = B.cpu_percent({"parent": [parent.pid, *helpers], "floor": [idle.pid]}, self.reps.idle_s)
        finally:
            self.procs.end([idle], grace=2)
        what = "parent" + (f" + {len(helpers)} helper (template)" if helpers else "")
        self.floor(f"idle_cpu_{launcher}", "%", [cpu["floor"][0]],
                   "a pyzmq ROUTER polled with a 1 s timeout, same window")
        self.add(f"parent_idle_cpu{sfx}", "%", [cpu["parent"][0]], f"idle_cpu_{launcher}",
                 f"{what}, {self.reps.idle_s:g} s, schedstat (cpu_times: {cpu['parent'][1]:.2f}%)",
                 Target("median", 0.1))

    # --- 3. sites -------------------------------------------------------------------------------------------------
    def sites_phase(self) -> None:
        r = self.reps
        parent = self.parent("sites", ["--site-timeout", "60"])
        try:
            names = [f"s{i:02d}" for i in range(1, 11)]
            agents = [self.procs.spawn(["-m", "flrunner", "site", "--name", n, "--server", parent.sites,
                                        "--log-level", "WARNING"], f"site-{n}") for n in names]
            servers: list[B.RttServer] = []
            try:
                B.wait_until(lambda: set(names) <= {c["name"] for c in parent.admin.clients()}, 120,
                             "10 site agents to log in", 0.1)
                servers += [B.RttServer(self.procs, self.root, "small"), B.RttServer(self.procs, self.root, "status")]
                aux = [_aux_case("aux_1", names[:1], r.aux[1]), _aux_case("aux_10", names, r.aux[10])]
                job = self.job("bench-10", "Bench", {"expect_sites": 10, "rtt": r.rtt, "status": r.status,
                                                     "aux": aux, "raw": {"small": servers[0].endpoint,
                                                                         "status": servers[1].endpoint}}, names)
                self.log("  job with 10 site agents: round trips, status updates, aux to 1 and 10 sites")
                got = self.run_job(parent, job, 900)
            finally:
                for srv in servers:
                    srv.close()
                self.procs.end(agents)
            self.floor("rtt_small", "ms", got["rtt_sync_clients_raw"], RAW_RTT)
            self.floor("rtt_status", "ms", got["status_update_durable_raw"],
                       "the same from the job process to a raw server that commits to SQLite (WAL, synchronous=FULL) "
                       "before it answers")
            if got["sites_seen"] != 10:
                raise RuntimeError(f"the job saw {got['sites_seen']} sites, not 10")
            self.add("rtt_sync_clients", "ms", got["rtt_sync_clients"], "rtt_small",
                     "10 sites (real agents); measured in the job process", Target("ratio", 1.5))
            self.add("status_update_durable", "ms", got["status_update_durable"], "rtt_status",
                     "update_job_run_status with new progress each time", Target("ratio", 1.5))
            self._aux_figures(got, "real site agents (1 process each)")

            self.log("  500 lightweight peers: aux to 100 and 500 sites")
            peers = self.procs.spawn([str(B.HERE / "benchlib.py"), "peers", parent.sites, "p", "0", "500", "logout",
                                      "50"],
                                     "peers-500", stdout=subprocess.PIPE)
            try:
                B.read_line(peers, 120, "500 peers to log in")
                pnames = [f"p{i:05d}" for i in range(500)]
                aux = [_aux_case("aux_100", pnames[:100], r.aux[100]), _aux_case("aux_500", pnames, r.aux[500])]
                got = self.run_job(parent, self.job("bench-500", "Bench", {"aux": aux}, pnames), 900)
            finally:
                self.procs.end([peers])
            self._aux_figures(got, "lightweight peers (1 process)")
        finally:
            self.stop(parent)
        self.log("  raw fan-out floors")
        small = encode_shareable(Shareable(SMALL))
        big = encode_shareable(Shareable({"blob": os.urandom(BIG_MB * B.MB)}))
        for count in (1, 10, 100, 500):
            small_iters, big_iters = r.aux[count]
            payloads = {"small": (small, small_iters), **({"big": (big, big_iters)} if big_iters else {})}
            # like the sites they stand for: one process per peer for the real site agents (1, 10),
            # one process for all of them for the lightweight peers (100, 500)
            processes = count if count <= 10 else 1
            raw = B.floor_fanout(self.procs, count, payloads, processes)
            kind = f"{count} DEALER peer(s) in {processes} process(es), tcp"
            self.floor(f"fanout_{count}", "ms", raw["small"], f"raw ROUTER -> {kind} -> small replies, same frames")
            if big_iters:
                self.floor(f"fanout_{count}_10mb", "ms", raw["big"],
                           f"raw ROUTER -> {kind}, the same 10 MB frame to each -> small replies")
        if not r.aux[500][1]:
            self.na("aux_500_10mb", "ms", "skipped by --quick (5 GB per round)", Target("ratio", 2.0))
        for count in (1, 10, 100, 500):
            for sfx in ("", "_10mb"):
                fig = self.figures.get(f"aux_{count}{sfx}")
                floor = self.floors.get(f"fanout_{count}{sfx}")
                if fig is not None and fig.na is None and floor is not None:
                    fig.baseline, fig.baseline_is = floor.median, floor.note

    def _aux_figures(self, got: dict, kind: str) -> None:
        for label in ("aux_1", "aux_10", "aux_100", "aux_500"):
            for sfx in ("", "_10mb"):
                if label + sfx in got:
                    target = Target("ratio", 2.0) if label == "aux_500" else None
                    payload = f"{BIG_MB} MB payload" if sfx else "small payload"
                    self.add(label + sfx, "ms", got[label + sfx], None, f"{kind}; {payload}", target)

    # --- 4. 10,000 sites -----------------------------------------------------------------------------------------
    def sites_10k_phase(self) -> None:
        r = self.reps
        before, after = B.floor_router_rss(self.procs, 10_000)
        self.floor("router_rss_10k", "MB", [after], f"RSS of a bare pyzmq ROUTER holding 10,000 tcp connections "
                                                    f"({before:.1f} MB before they connected)")
        parent = self.parent("10k", self.launcher_options("cold"))
        helpers: list[subprocess.Popen] = []
        try:
            time.sleep(0.5)
            rss0 = B.memory(parent.pid)[0]
            self.floor("parent_rss_0", "MB", [rss0], "RSS of the same parent before any site logged in")
            t0 = time.perf_counter()
            helpers += [self.procs.spawn([str(B.HERE / "benchlib.py"), "peers", parent.sites, "k", str(i * 2500),
                                          "2500", "stay"], f"peers-10k-{i}", stdout=subprocess.PIPE) for i in range(4)]
            for h in helpers:
                B.read_line(h, 300, "2,500 peers to log in")
            login_ms = (time.perf_counter() - t0) * 1000
            ready_at = time.monotonic()
            self.log(f"  10,000 peers logged in after {login_ms / 1000:.1f} s")
            time.sleep(1.0)
            rss = []
            for _ in range(3):
                rss.append(B.memory(parent.pid)[0])
                time.sleep(0.3)
            self.add("parent_rss_10k_sites", "MB", rss, "router_rss_10k",
                     f"10,000 lightweight peers (4 processes); {rss0:.1f} MB before they logged in",
                     Target("median", 80))
            self.add("login_10k_sites", "ms", [login_ms], None,
                     "4 x 2,500 peers, 25 connects in flight per process -> all have tokens")
            trivial = self.job("trivial-10k", "Sleep", {"seconds": 0})
            times = []
            with parent.feed() as feed:
                for _ in range(r.submit_10k):
                    t0 = time.perf_counter()
                    job_id = parent.admin.submit(trivial)
                    B.wait_status(feed, job_id, "RUNNING")
                    times.append((time.perf_counter() - t0) * 1000)
                    end = B.wait_status(feed, job_id, "FINISHED:")
                    _exit_recorded(feed, job_id, end)
                    time.sleep(0.1)
            base = self.figures.get("submit_to_running_cold")
            self.add("submit_to_running_10k", "ms", times, None, "cold launcher, 10,000 sites logged in",
                     baseline_value=base.median if base else None)
            if base and base.median:
                self.figures["submit_to_running_10k"].baseline_is = "submit_to_running_cold (no sites) of this run"
            servers = [B.RttServer(self.procs, self.root, "clients", 10_000),
                       B.RttServer(self.procs, self.root, "small-10k")]
            try:
                job = self.job("bench-10k", "Bench", {"expect_sites": 10_000, "sync_full": r.sync_full,
                                                      "sync_delta": r.sync_delta, "raw": {
                                                          "clients": servers[0].endpoint,
                                                          "small": servers[1].endpoint}})
                got = self.run_job(parent, job, 900)
            finally:
                for srv in servers:
                    srv.close()
            self.floor("rtt_10k", "ms", got["sync_10k_full_raw"],
                       "the same from the job process to a raw server answering with 10,000 client dicts (packed "
                       "per request, unpacked by the job)")
            self.floor("rtt_small_10k", "ms", got["sync_10k_delta_raw"], RAW_RTT + " (during the 10k phase)")
            self.add("sync_10k_full", "ms", got["sync_10k_full"], "rtt_10k", "10,000 lightweight peers; in the job")
            self.add("sync_10k_delta", "ms", got["sync_10k_delta"], "rtt_small_10k",
                     "10,000 peers; one change since the cached revision")
            # Every peer heartbeats once per interval (default --site-timeout 30 s / 4) at a random
            # phase: from the last login on, the parent gets a steady ~1,333 heartbeats a second.
            time.sleep(max(0.0, ready_at + 1.0 - time.monotonic()))
            cpu = B.cpu_percent({"parent": [parent.pid]}, r.idle_s)
            self.add("parent_cpu_10k_sites", "%", [cpu["parent"][0]], None,
                     f"10,000 peers heartbeating every 7.5 s (default --site-timeout 30), {r.idle_s:g} s window")
        finally:
            self.procs.end(helpers, grace=5)
            self.stop(parent)

    # --- 5. 100 concurrent jobs -------------------------------------------------------------------------------------
    def jobs_100_phase(self) -> None:
        r = self.reps
        launcher = "warm" if "warm" in self.launchers else "cold"
        options = ["--max-jobs", "128", *self.launcher_options(launcher)]
        parent = self.parent("100jobs", options)
        try:
            self.floor(f"start_100_{launcher}", "ms", [B.floor_start_many(self.procs, self.root, launcher, 100)],
                       f"100 {'forks from a warm template' if launcher == 'warm' else 'fresh interpreters'} "
                       "started at once -> all first messages in")
            sleeper = self.job("sleeper-100", "Sleep", {"seconds": 600})
            with parent.feed() as feed:
                t0 = time.perf_counter()
                ids = [parent.admin.submit(sleeper) for _ in range(100)]
                _wait_on_feed(feed, ids, _running, "RUNNING")
                start_ms = (time.perf_counter() - t0) * 1000
                self.add("start_100_jobs", "ms", [start_ms], f"start_100_{launcher}",
                         f"{launcher} launcher; first submit -> 100th RUNNING")
                time.sleep(1.0)
                cpu = B.cpu_percent({"parent": [parent.pid]}, r.idle_s)
                self.add("parent_cpu_100_jobs", "%", [cpu["parent"][0]], None,
                         f"100 sleeping jobs (heartbeats), {r.idle_s:g} s window")
                feed.next(0)  # renews the subscription (it lapses after 30 s without)
                busy = _admin_times(parent, r.admin)
                feed.next(0)
                t0 = time.perf_counter()
                for job_id in ids:
                    parent.admin.abort(job_id, "bench done")
                _wait_on_feed(feed, ids, lambda ev: ev["status"].startswith("FINISHED:"), "ended after their abort")
                abort_ms = (time.perf_counter() - t0) * 1000
            time.sleep(0.5)
            idle = _admin_times(parent, r.admin)
            self.floor("admin_idle", "ms", idle, "AdminClient.jobs() on the same parent once the 100 jobs ended")
            self.add("admin_p99_100_jobs", "ms", busy, "admin_idle", "AdminClient.jobs() while 100 jobs run",
                     Target("p99", 50))
            self.add("abort_100_jobs", "ms", [abort_ms], None, "100 admin aborts -> all FINISHED on the feed")
        finally:
            self.stop(parent, 120)

    # --- the whole run ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        self.log(f"workspace {self.root}; launchers offered by `flrunner parent`: "
                 f"{', '.join(sorted(self.launchers)) or 'none (no --launcher option: cold only)'}")
        self.phase("floors", self.floors_phase, [])
        self.phase("launchers", lambda: self.launcher_phase("cold"),
                   [(n, u) for n, u in (("submit_to_running_cold", "ms"), ("trivial_job_cold", "ms"),
                                        ("kill_to_abnormal", "ms"), ("abort_to_gone", "ms"), ("child_rss_cold", "MB"),
                                        ("child_uss_cold", "MB"), ("parent_idle_cpu", "%"))])
        warm = [("submit_to_running_warm", "ms", 15), ("trivial_job_warm", "ms", 100),
                ("kill_to_abnormal_warm", "ms", 20),
                ("abort_to_gone_warm", "ms", None), ("child_rss_warm", "MB", None), ("child_uss_warm", "MB", 4),
                ("parent_idle_cpu_warm", "%", 0.1)]
        if "warm" in self.launchers:
            self.phase("launchers", lambda: self.launcher_phase("warm"), [(n, u) for n, u, _ in warm])
        elif not self.args.only or "launchers" in self.args.only:
            for name, unit, limit in warm:
                self.na(name, unit, NO_WARM, Target("median", limit) if limit is not None else None)
        self.phase("sites", self.sites_phase,
                   [(f"{n}", "ms") for n in ("rtt_sync_clients", "status_update_durable", "aux_1", "aux_1_10mb",
                                             "aux_10", "aux_10_10mb", "aux_100", "aux_100_10mb", "aux_500",
                                             "aux_500_10mb")])
        self.phase("10k", self.sites_10k_phase, [("parent_rss_10k_sites", "MB"), ("sync_10k_full", "ms"),
                                                 ("sync_10k_delta", "ms")])
        self.phase("100jobs", self.jobs_100_phase, [("start_100_jobs", "ms"), ("admin_p99_100_jobs", "ms")])

    # --- output ----------------------------------------------------------------------------------------------------
    def print_table(self) -> None:
        order = ["submit_to_running_warm", "submit_to_running_cold", "trivial_job_warm", "trivial_job_cold",
                 "kill_to_abnormal", "kill_to_abnormal_warm", "abort_to_gone", "abort_to_gone_warm",
                 "rtt_sync_clients", "status_update_durable", "aux_1", "aux_10", "aux_100", "aux_500",
                 "aux_1_10mb", "aux_10_10mb", "aux_100_10mb", "aux_500_10mb", "sync_10k_full", "sync_10k_delta",
                 "child_rss_cold", "child_uss_cold", "child_rss_warm", "child_uss_warm", "parent_rss_10k_sites",
                 "login_10k_sites", "parent_cpu_10k_sites", "submit_to_running_10k", "start_100_jobs",
                 "admin_p99_100_jobs", "abort_100_jobs", "parent_cpu_100_jobs", "parent_idle_cpu",
                 "parent_idle_cpu_warm"]
        names = [n for n in order if n in self.figures] + [n for n in self.figures if n not in order]
        head = f"{'figure':<24}{'median':>9}{'p99':>9} {'unit':<4}{'baseline':>9}{'ratio':>8}  {'target':<14}{'':<5}" \
               f"{'n':>5}  notes (baseline = the floor of the same run)"
        print(head)
        print("-" * len(head))
        for name in names:
            f = self.figures[name]
            target = f.target.describe(f.unit) if f.target else ""
            if f.na is not None:
                print(f"{name:<24}  {f.na}  ({f.unit}; target {target or '-'}: {f.verdict() or '-'})  {f.note}")
                continue
            ratio = f"{f.ratio:7.2f}x" if f.ratio is not None else f"{'-':>8}"
            notes = f.note + (f"; baseline: {f.baseline_is}" if f.baseline_is else "")
            print(f"{name:<24}{B.fmt(f.median, 9)}{B.fmt(f.p99, 9)} {f.unit:<4}{B.fmt(f.baseline, 9)}{ratio}  "
                  f"{target:<14}{f.verdict():<5}{len(f.values):>5}  {notes}")
        print()
        print(f"{'floor (same run)':<24}{'median':>9}{'p99':>9} {'unit':<4}{'n':>6}  what")
        for name, f in self.floors.items():
            print(f"{name:<24}{B.fmt(f.median, 9)}{B.fmt(f.p99, 9)} {f.unit:<4}{len(f.values):>6}  {f.note}")
        if self.breakdown:
            print()
            print(f"{'submit -> RUNNING, by stage':<24}" + "".join(f"{k:>10}" for k in self.breakdown)
                  + "  (median ms)")
            for stage, what in STAGES.items():
                meds = [statistics.median(v[stage]) if v[stage] else None for v in self.breakdown.values()]
                print(f"{stage:<24}" + "".join(B.fmt(m, 10) for m in meds) + f"  {what}")
        missed = [n for n in names if self.figures[n].verdict() == "MISS"]
        print()
        print(f"targets missed: {', '.join(missed) if missed else 'none'}")
        for w in self.warnings:
            print(f"WARNING {w}")
        for e in self.errors:
            print(f"ERROR {e}")

    def machine(self) -> dict:
        model = ""
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        try:
            df = subprocess.run(["df", "-T", str(self.root)], capture_output=True, text=True).stdout
            fs = df.split("\n")[1].split()[1]
        except Exception:
            fs = "?"
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=B.ROOT).stdout.strip()
            dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                        cwd=B.ROOT).stdout.strip())
        except OSError:
            commit, dirty = "?", False
        return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
                "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
                "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(),
                "msgpack": ".".join(map(str, msgpack.version)),
                "workspace_fs": fs, "git": commit + ("+dirty" if dirty else ""),
                "launchers": sorted(self.launchers) or ["cold (no --launcher option)"],
                "quick": bool(self.args.quick), "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def _aux_case(label: str, sites: list[str], iters: tuple[int, int]) -> dict:
    return {"label": label, "sites": sites, "small": SMALL, "small_iters": iters[0], "big_iters": iters[1],
            "big_mb": BIG_MB, "big_warmup": 0 if len(sites) >= 500 else 1}


def _admin_times(parent: B.ParentProc, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        parent.admin.jobs()
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.002)
    return out


def _wait_on_feed(feed: Any, ids: list[str], reached: Callable[[dict], bool], what: str,
                  timeout: float = 300.0) -> None:
    """Read the status feed until ``reached`` has accepted an event of every job in ``ids``."""
    waiting = set(ids)
    deadline = time.monotonic() + timeout
    while waiting:
        ev = feed.next(max(0.0, deadline - time.monotonic()))
        if ev is None:
            raise TimeoutError(f"{len(waiting)} of {len(ids)} jobs not {what} within {timeout:g} s")
        if ev["job_id"] in waiting and reached(ev):
            waiting.discard(ev["job_id"])


def _running(ev: dict) -> bool:
    if ev["status"].startswith("FINISHED:"):
        raise RuntimeError(f"a job ended {ev['status']} before running: {ev.get('error')}")
    return ev["status"] == "RUNNING"


def _exit_recorded(feed: Any, job_id: str, end: dict, timeout: float = 30.0) -> None:
    """Wait for the feed event that records the exit of a finished job's process, unless ``end``
    (the job's FINISHED event) records it already: a final status the job reported is announced
    once, with the exit code, when its process is gone.

    The parent's work for an exit goes on after that (a scan of every process for stragglers of
    the job, on the worker thread that also prepares submissions); the caller pauses briefly so
    that the next submit does not queue behind it.
    """
    if end.get("exit_code") is not None or end.get("signal") is not None:
        return
    deadline = time.monotonic() + timeout
    while True:
        ev = feed.next(max(0.0, deadline - time.monotonic()))
        if ev is None:
            raise TimeoutError(f"job {job_id}: its process exit was not recorded within {timeout:g}s")
        if ev["job_id"] == job_id and (ev.get("exit_code") is not None or ev.get("signal") is not None):
            return


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (under a minute on 2 cores)")
    ap.add_argument("--json", metavar="FILE", help="also write {machine, figures, floors} to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (workspaces, logs)")
    ap.add_argument("--profile", metavar="DIR", help="run each parent under cProfile; write DIR/<parent>.prof")
    ap.add_argument("--only", nargs="+", choices=PHASES, help="run only these phases")
    args = ap.parse_args()
    B.raise_fd_limit()
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Ctrl-C, SIGTERM and SIGHUP all end the run and its processes (SIGINT also when this was
    # started with it ignored, as background jobs of a non-interactive shell are).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    # A short folder: ipc socket paths must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="flb-")).resolve()
    bench = Bench(args, root)
    machine = bench.machine()
    code = 0
    try:
        bench.run()
    except KeyboardInterrupt:
        bench.log("interrupted; cleaning up")
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        swept = bench.procs.end_all()
        if swept:
            bench.log(f"killed {len(swept)} process(es) left under {root}: {swept[:10]}")
        if args.keep:
            bench.log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if code:
        return code
    elapsed = time.monotonic() - bench.t0
    print(f"flrunner benchmark ({'quick' if args.quick else 'full'} run, {elapsed:.0f} s): "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, pyzmq {zmq.pyzmq_version()}, "
          f"libzmq {zmq.zmq_version()}; times in ms, memory in MB, CPU in % of one core")
    bench.print_table()
    if args.json:
        doc = {"machine": machine, "figures": {n: f.to_json() for n, f in bench.figures.items()},
               "floors": {n: f.to_json() for n, f in bench.floors.items()}, "errors": bench.errors,
               "warnings": bench.warnings,
               "submit_stages_ms": {launcher: {k: round(statistics.median(v), 3) for k, v in st.items() if v}
                                    for launcher, st in bench.breakdown.items()},
               "elapsed_s": round(elapsed, 1)}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
