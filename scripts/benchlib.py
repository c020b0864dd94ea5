#!/usr/bin/env python3
"""Helpers of ``scripts/bench.py``: the processes it starts, the floors it measures, the figures.

This module is also the entry point of the helper processes the benchmark starts
(``python scripts/benchlib.py MODE ...``), each in its own process group:

- ``peers``: lightweight site peers, many pyzmq DEALER sockets in one process that log in on a
  parent's sites endpoint like a site agent, heartbeat, accept ``start_job`` without loading an
  app and answer each ``aux`` push with a small Shareable (headers built with `flrunner.transport.wire`,
  payloads with `flrunner.aux.payload`);
- ``echo``: DEALER peers that answer whatever a ROUTER sends them with its first frame (the raw
  fan-out floor);
- ``rtt-server``: a ROUTER that answers msgpack requests with msgpack replies, optionally after
  a durable SQLite commit or with a 10,000-site list (the far end of the raw round-trip floors,
  which the benchmark's job times from inside the job process);
- ``router-hold``: a bare ROUTER that holds thousands of connections (libzmq's own memory);
- ``template``: a warm process (runtime imported, ``gc.freeze()``d, no ZeroMQ context) that forks
  a child per request; the child opens a fresh context and sends its pid (the fork floor);
- ``idle``: a ROUTER polled with a 1 s timeout and nothing else (the idle-CPU floor).
"""

from __future__ import annotations

import gc
import heapq
import json
import os
import random
import resource
import select
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import msgpack
import psutil
import zmq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # an uninstalled checkout
    sys.path.insert(0, str(ROOT))

from flrunner.admin.client import AdminClient, StatusFeed, find_parent  # noqa: E402
from flrunner.errors import ParentUnavailable  # noqa: E402
from flrunner.aux.payload import encode_shareable  # noqa: E402
from flrunner.shareable import Shareable  # noqa: E402
from flrunner.transport.wire import Message, decode, encode, next_id  # noqa: E402
from flrunner.util import processes as harness  # noqa: E402
from flrunner.util.processes import processes_under  # noqa: E402,F401  (the scripts use B.processes_under)

MB = 2 ** 20


# --- statistics and figures ----------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


@dataclass
class Target:
    """A target of the issue: ``what`` (median, p99 or ratio) at most ``limit``."""

    what: str
    limit: float

    def describe(self, unit: str) -> str:
        if self.what == "ratio":
            return f"<= {self.limit:g}x"
        return f"{'p99 ' if self.what == 'p99' else ''}<= {self.limit:g} {unit}".replace(" %", "%")


@dataclass
class Figure:
    """One row of the table.

    Attributes:
        values: the samples (one value for a single measurement).
        baseline: the floor measured in the same run (same unit), or None.
        baseline_is: what the baseline is.
        note: how the figure was measured (site kind, launcher, ...).
        na: why there is no value (the row prints this instead).
    """

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    baseline: float | None = None
    baseline_is: str = ""
    note: str = ""
    target: Target | None = None
    na: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values and self.na is None else None

    @property
    def p99(self) -> float | None:
        return pct(self.values, 0.99) if self.values and self.na is None else None

    @property
    def ratio(self) -> float | None:
        med = self.median
        if med is None or not self.baseline:
            return None
        return med / self.baseline

    def verdict(self) -> str:
        if self.target is None:
            return ""
        got = {"median": self.median, "p99": self.p99, "ratio": self.ratio}[self.target.what]
        if got is None:
            return "n/a"
        return "pass" if got <= self.target.limit else "MISS"

    def to_json(self) -> dict:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        doc: dict[str, Any] = {"median": r(self.median), "p99": r(self.p99), "unit": self.unit,
                               "baseline": r(self.baseline), "ratio": r(self.ratio), "n": len(self.values),
                               "baseline_is": self.baseline_is, "note": self.note}
        if self.target is not None:
            doc["target"] = self.target.describe(self.unit)
            doc["verdict"] = self.verdict()
        if self.na is not None:
            doc["na"] = self.na
        return doc


def fmt(v: float | None, width: int) -> str:
    if v is None:
        return f"{'-':>{width}}"
    if abs(v) >= 1000:
        return f"{v:>{width}.0f}"
    if abs(v) >= 10:
        return f"{v:>{width}.1f}"
    return f"{v:>{width}.3f}" if abs(v) < 1 else f"{v:>{width}.2f}"


# --- processes -------------------------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard limit (10,000 sites need ~10,000 sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Processes(harness.Processes):
    """Every process the benchmark starts: own process group, cwd under ``root``, output in ``root``.

    `end_all` ends them (SIGTERM to each group, then SIGKILL), then kills whatever still runs with
    its cwd under ``root`` (job processes of a parent that could not stop them).
    """

    @property
    def procs(self) -> list[subprocess.Popen]:
        """The processes started so far, in order (`started`)."""
        return self.started

    def output(self, name: str, tail: int | None = 3000) -> str:
        """The last ``tail`` characters a helper wrote ("" if none): for error messages."""
        try:
            return super().output(name, tail)
        except OSError:
            return ""

    def end(self, procs: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
        """SIGTERM each group, wait up to ``grace`` for all, then SIGKILL what is left."""
        harness.stop(procs, grace)

    def end_all(self, grace: float = 10.0, sweeps: int = 3) -> list[str]:
        """End everything; return what had to be killed by the cwd sweep ("pid cmdline").

        Args:
            grace: how long the process groups get to exit after SIGTERM.
            sweeps: how many times (0.2 s apart) the cwd sweep looks for processes left.
        """
        self.end(list(reversed(self.started)), grace)
        return harness.kill_processes_under(self.root, sweeps, 0.2)


#: ``wait_until(predicate, timeout, what, interval=0.02)``: poll until truthy, else TimeoutError.
wait_until = harness.wait_for


def read_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    """One line from a helper's stdout pipe, within ``timeout``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError(f"{what}: the helper exited (code {proc.poll()})")
    return line


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (``schedstat``: ns resolution, unlike the
    10 ms ticks of ``cpu_times``, which cannot resolve 0.1 % over a few seconds)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def cpu_percent(groups: dict[str, Sequence[int]], seconds: float) -> dict[str, tuple[float, float]]:
    """CPU use of each group of pids over the same ``seconds``: {name: (percent of one core by
    schedstat, the same by psutil ``cpu_times``)}."""
    procs = {name: [psutil.Process(p) for p in pids] for name, pids in groups.items()}

    def sample() -> dict[str, tuple[int, float]]:
        return {name: (sum(cpu_ns(p.pid) for p in ps), sum(sum(p.cpu_times()[:2]) for p in ps))
                for name, ps in procs.items()}

    t0, before = time.monotonic(), sample()
    time.sleep(seconds)
    after, wall = sample(), time.monotonic() - t0
    return {name: ((after[name][0] - before[name][0]) / 1e9 / wall * 100,
                   (after[name][1] - before[name][1]) / wall * 100) for name in groups}


def memory(pid: int) -> tuple[float, float]:
    """(RSS, USS) of a process in MB."""
    mi = psutil.Process(pid).memory_full_info()
    return mi.rss / MB, mi.uss / MB


# --- a parent ---------------------------------------------------------------------------------------------


def launcher_support() -> tuple[set[str], str]:
    """The launchers ``flrunner parent`` accepts ({} if it has no ``--launcher``), and the help text."""
    out = subprocess.run([sys.executable, "-m", "flrunner", "parent", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    text = out.stdout + out.stderr
    if "--launcher" not in text:
        return set(), text
    flat = " ".join(text.split())
    start = flat.find("--launcher")
    found = {name for name in ("warm", "cold") if name in flat[start:start + 600]}
    return found or {"cold"}, text


class ParentProc:
    """A real parent (``python -m flrunner parent``) in its own process group.

    Args:
        procs: the benchmark's process tracker.
        workspace: its workspace.
        name: for its output file.
        options: extra CLI options (``--launcher``, ``--max-jobs``, ...).
        profile: if set, the parent runs under cProfile and writes this file when it stops.
        abort_grace: its ``--abort-grace`` (seconds).
        term_grace: its ``--term-grace`` (seconds).
        log_level: its ``--log-level``; None leaves the parent's default.
        admin_timeout: the timeout of `admin`, the admin client opened once it serves.
    """

    def __init__(self, procs: Processes, workspace: Path, name: str, options: Sequence[str] = (),
                 profile: Path | None = None, *, abort_grace: float = 2.0, term_grace: float = 1.0,
                 log_level: str | None = "WARNING", admin_timeout: float = 60.0) -> None:
        self.procs = procs
        self.workspace = workspace
        self.name = name
        prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
        logging = ["--log-level", log_level] if log_level else []
        self.proc = procs.spawn([*prefix, "-m", "flrunner", "parent", "--workspace", str(workspace),
                                 "--sites", "tcp://127.0.0.1:*", *logging, "--abort-grace", f"{abort_grace:g}",
                                 "--term-grace", f"{term_grace:g}", *options], name)
        self.info = wait_until(self._info, 60, f"parent {name} to start", 0.01)
        self.admin = AdminClient(self.info["admin"], timeout=admin_timeout)

    def _info(self) -> dict | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"parent {self.name} exited with {self.proc.returncode}:\n"
                               f"{self.procs.output(self.name)}")
        try:
            info = find_parent(self.workspace)
        except ParentUnavailable:
            return None
        return info if info.get("pid") == self.proc.pid else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def sites(self) -> str:
        return self.info["sites"]

    def feed(self) -> StatusFeed:
        return StatusFeed(self.info["admin"], timeout=30)

    def helpers(self) -> list[int]:
        """Descendants that are not job processes (a warm launcher's template, ...)."""
        out = []
        for p in psutil.Process(self.pid).children(recursive=True):
            try:
                if not p.cmdline() or "flrunner-job" not in " ".join(p.cmdline()):
                    out.append(p.pid)
            except psutil.Error:
                continue
        return out

    def run_dir(self, job_id: str) -> Path:
        return self.workspace / "jobs" / job_id

    def stop(self, timeout: float = 60.0) -> list[str]:
        """Graceful stop (running jobs are aborted), then the group is SIGKILLed if it lingers.

        Returns what outlived the parent by 2 s among the processes it had started (its warm
        template, job processes), each killed then: a parent should leave none behind.
        """
        self.admin.close()
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.procs.end([self.proc], grace=timeout)
        deadline, left = time.monotonic() + 2.0, []
        for kid in kids:
            try:
                kid.wait(max(0.0, deadline - time.monotonic()))
            except psutil.TimeoutExpired:
                try:
                    left.append(f"pid {kid.pid} '{' '.join(kid.cmdline()).strip()[:60]}'")
                    kid.kill()
                except psutil.Error:
                    pass
            except psutil.Error:
                pass
        return left


def wait_status(feed: StatusFeed, job_id: str, statuses: Sequence[str] | str, timeout: float = 60.0) -> dict:
    """The first pushed change of ``job_id`` to one of ``statuses`` (a prefix ending in ':' matches any)."""
    wanted = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"job {job_id}: none of {wanted} within {timeout:g}s")
        ev = feed.next(left)
        if ev is None or ev["job_id"] != job_id:
            continue
        if any(ev["status"] == w or (w.endswith(":") and ev["status"].startswith(w)) for w in wanted):
            return ev
        if ev["status"].startswith("FINISHED:") and not any(w.startswith("FINISHED") for w in wanted):
            raise RuntimeError(f"job {job_id} ended {ev['status']} while waiting for {wanted}: {ev.get('error')}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- job folders -------------------------------------------------------------------------------------------

#: The job's code, copied into each job's custom folder as ``bench_job.py``.
JOB_CODE = r'''
"""Workflows and a site executor of the benchmark's jobs (written by scripts/benchlib.py)."""

import json
import os
import time

from flrunner import Controller, FLComponent, Shareable


def _write(fl_ctx, name, data):
    engine = fl_ctx.get_engine()
    path = os.path.join(engine.get_workspace().get_run_dir(fl_ctx.get_job_id()), name)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


class Sleep(Controller):
    """Sleeps (woken by an abort); writes started.json first. ``grandchild`` starts `sleep` in the job's group."""

    def __init__(self, seconds=0.0, grandchild=False):
        super().__init__()
        self.seconds = seconds
        self.grandchild = grandchild

    def control_flow(self, abort_signal, fl_ctx):
        if not self.seconds:
            return
        grandchild = None
        if self.grandchild:
            import subprocess
            grandchild = subprocess.Popen(["sleep", str(int(self.seconds) + 1)]).pid
        _write(fl_ctx, "started.json", {"pid": os.getpid(), "grandchild": grandchild})
        abort_signal.wait(self.seconds)


class _Raw:
    """A plain pyzmq DEALER + msgpack client of the benchmark's raw server: the floor of a round
    trip, timed from this same process, in blocks interleaved with the engine's calls."""

    def __init__(self, endpoint):
        import msgpack
        import zmq

        self.zmq, self.msgpack = zmq, msgpack
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.n = 0

    def call(self, op, body):
        self.n += 1
        self.sock.send(self.msgpack.packb({"v": 1, "op": op, "id": self.n, "b": body}, use_bin_type=True))
        if not self.sock.poll(60000):
            raise RuntimeError("the raw server did not answer")
        return self.msgpack.unpackb(self.sock.recv(), raw=False)

    def close(self):
        self.sock.close(0)
        self.ctx.term()


class Bench(Controller):
    """Times engine calls in the job process and writes the samples (ms) to bench.json.

    With ``raw`` endpoints, the same round trips over a plain DEALER to the benchmark's raw
    servers are timed too, in blocks alternating with the engine's calls (``raw_*`` samples).
    """

    def __init__(self, expect_sites=0, rtt=0, status=0, aux=(), sync_full=0, sync_delta=0, warmup=20,
                 sync_warmup=2, raw=None, block=25, timeout=300.0):
        super().__init__()
        self.expect_sites = expect_sites
        self.rtt = rtt
        self.status = status
        self.aux = list(aux)
        self.sync_full = sync_full
        self.sync_delta = sync_delta
        self.warmup = warmup
        self.sync_warmup = sync_warmup
        self.raw = dict(raw or {})
        self.block = block
        self.timeout = timeout

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        out = {}
        deadline = time.monotonic() + self.timeout
        clients = engine.sync_clients_from_main_process()
        while len(clients) < self.expect_sites:
            if time.monotonic() > deadline or abort_signal.triggered:
                raise RuntimeError(f"only {len(clients)} of {self.expect_sites} sites in the registry")
            abort_signal.wait(0.05)
            clients = engine.sync_clients_from_main_process()
        out["sites_seen"] = len(clients)

        def timed(fn, n, warmup=self.warmup):
            samples = []
            for i in range(warmup + n):
                if abort_signal.triggered:
                    break
                t0 = time.perf_counter()
                fn(i)
                if i >= warmup:
                    samples.append((time.perf_counter() - t0) * 1000)
            return samples

        def paired(name, fn, n, raw_name, raw_fn, warmup=self.warmup):
            """``fn`` and the raw floor ``raw_fn`` in alternating blocks of ``self.block`` calls."""
            if raw_name not in self.raw:
                out[name] = timed(fn, n, warmup)
                return
            raw = _Raw(self.raw[raw_name])
            try:
                # Every call gets its own index: a status update that rewrites the same value is
                # not written again by SQLite, and would not be a durable write.
                for i in range(warmup):
                    fn(i)
                    raw_fn(raw, i)
                mine, floor, i, j = [], [], warmup, warmup
                while len(mine) < n and not abort_signal.triggered:
                    k = min(self.block, n - len(mine))
                    for _ in range(k):
                        t0 = time.perf_counter()
                        fn(i)
                        mine.append((time.perf_counter() - t0) * 1000)
                        i += 1
                    for _ in range(k):
                        t0 = time.perf_counter()
                        raw_fn(raw, j)
                        floor.append((time.perf_counter() - t0) * 1000)
                        j += 1
                out[name], out[name + "_raw"] = mine, floor
            finally:
                raw.close()

        if self.rtt:
            paired("rtt_sync_clients", lambda i: engine.sync_clients_from_main_process(), self.rtt,
                   "small", lambda raw, i: raw.call("sync_clients", {"since": 7}))

        if self.status:
            def update(i):
                # progress changes each time, so the parent writes (and fsyncs) every update
                engine.set_run_progress({"step": i})
                if engine.update_job_run_status() != "RUNNING":
                    raise RuntimeError("the parent did not store the status")
            paired("status_update_durable", update, self.status, "status",
                   lambda raw, i: raw.call("run_status", {"status": "RUNNING", "progress": {"step": i}, "error": None}))

        for case in self.aux:
            sites = sorted(case["sites"])

            def once(payload):
                t0 = time.perf_counter()
                replies = engine.send_aux_request(sites, "bench", payload, 120.0, fl_ctx)
                took = (time.perf_counter() - t0) * 1000
                bad = {s: r.get_return_code() for s, r in replies.items() if r.get_return_code() != "OK"}
                if bad or len(replies) != len(sites):
                    raise RuntimeError(f"aux to {len(sites)} sites: bad replies {dict(list(bad.items())[:5])} "
                                       f"({len(replies)} replies)")
                return took

            small = Shareable(case["small"])
            for _ in range(5):
                once(small)
            out[case["label"]] = [once(small) for _ in range(case["small_iters"]) if not abort_signal.triggered]
            if case["big_iters"]:
                big = Shareable({"blob": os.urandom(int(case["big_mb"] * 2 ** 20))})
                for _ in range(case.get("big_warmup", 1)):
                    once(big)
                out[case["label"] + "_10mb"] = [once(big) for _ in range(case["big_iters"])
                                                if not abort_signal.triggered]
                del big

        if self.sync_full:
            def full(i):
                engine.reset_clients()
                got = engine.sync_clients_from_main_process()
                if len(got) < self.expect_sites:
                    raise RuntimeError(f"full sync returned {len(got)} sites")
            paired("sync_10k_full", full, self.sync_full, "clients",
                   lambda raw, i: raw.call("sync_clients", {"since": None}), self.sync_warmup)
            out["sites_seen_full"] = len(engine.get_clients_cached())

        if self.sync_delta:
            def delta(i):
                # Step the engine's cached revision back by one, so the parent answers with exactly
                # the registry's last change (a real change would already have been pushed).
                with engine._clients_lock:
                    engine._revision -= 1
                    engine._stale = False
                engine.sync_clients_from_main_process()
            paired("sync_10k_delta", delta, self.sync_delta, "small",
                   lambda raw, i: raw.call("sync_clients", {"since": 7}))
        _write(fl_ctx, "bench.json", out)


class BenchTask(FLComponent):
    """A real site's side: answers with the site's name and the size of the blob it got."""

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        blob = shareable.get("blob")
        return Shareable({"site": fl_ctx.get_identity_name(), "len": len(blob) if blob is not None else 0})
'''


def make_job(root: Path, name: str, workflow: str, args: dict, sites: Sequence[str] = ()) -> Path:
    """A job folder: the server runs ``bench_job.<workflow>(**args)``; with ``sites`` one app goes to
    the server and those sites (whose executor serves the ``bench`` topic)."""
    job = root / "jobs-src" / name
    app = job / "app"
    (app / "config").mkdir(parents=True)
    (app / "custom").mkdir()
    (app / "custom" / "bench_job.py").write_text(JOB_CODE)
    (app / "config" / "config_fed_server.json").write_text(json.dumps(
        {"format_version": 2, "workflows": [{"id": "wf", "path": f"bench_job.{workflow}", "args": args}]}))
    meta: dict[str, Any] = {"name": name, "deploy_map": {"app": ["server", *sites]}}
    if sites:
        (app / "config" / "config_fed_client.json").write_text(json.dumps(
            {"format_version": 2, "executors": [{"tasks": ["bench"], "executor": {"path": "bench_job.BenchTask"}}]}))
        meta["min_clients"] = len(sites)
    (job / "meta.json").write_text(json.dumps(meta))
    return job


# --- floors measured in this process -----------------------------------------------------------------------

COLD_CHILD = ("import os, sys, zmq, msgpack\n"
              "c = zmq.Context(); s = c.socket(zmq.DEALER); s.connect(sys.argv[1])\n"
              "s.send(msgpack.packb({'pid': os.getpid()}))\n"
              "if sys.argv[2] == 'stay': s.recv()\n"
              "s.close(1000); c.term()\n")


class Router:
    """A ROUTER bound on an ipc path in ``root``, for the floors that wait for a first message."""

    def __init__(self, root: Path, name: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"ipc://{root}/{name}.sock"
        self.sock.bind(self.endpoint)

    def recv(self, timeout: float = 30.0) -> dict:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no message from the floor's child")
        return msgpack.unpackb(self.sock.recv_multipart()[-1])

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def floor_interpreter(code: str, n: int) -> list[float]:
    """ms for ``sys.executable -c code`` to start and exit."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def floor_cold_first_message(root: Path, n: int) -> list[float]:
    """ms from spawning ``sys.executable`` (importing zmq, msgpack) to its first message at a ROUTER."""
    router = Router(root, "floor-cold")
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            p = subprocess.Popen([sys.executable, "-c", COLD_CHILD, router.endpoint, "exit"], start_new_session=True,
                                 cwd=root)
            try:
                router.recv()
                out.append((time.perf_counter() - t0) * 1000)
            finally:
                p.wait(30)
    finally:
        router.close()
    return out


def floor_cold_memory(root: Path, n: int) -> tuple[list[float], list[float]]:
    """RSS and USS (MB) of a fresh interpreter that imported zmq and msgpack and holds a DEALER."""
    router = Router(root, "floor-cold-mem")
    rss, uss = [], []
    try:
        for _ in range(n):
            p = subprocess.Popen([sys.executable, "-c", COLD_CHILD, router.endpoint, "stay"], start_new_session=True,
                                 cwd=root)
            try:
                router.recv()
                time.sleep(0.2)
                r, u = memory(p.pid)
                rss.append(r)
                uss.append(u)
            finally:
                p.kill()
                p.wait()
    finally:
        router.close()
    return rss, uss


class Template:
    """The ``template`` helper: a warm process that forks a child on request."""

    def __init__(self, procs: Processes, root: Path) -> None:
        self.router = Router(root, "floor-warm")
        self.proc = procs.spawn([str(HERE / "benchlib.py"), "template", self.router.endpoint], "template",
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = read_line(self.proc, 60, "the template to import the runtime")
        if line != "ready":
            raise RuntimeError(f"template: {line}")

    def fork(self, stay: bool = False) -> tuple[float, int]:
        """(ms from the request to the forked child's first message, the child's pid)."""
        assert self.proc.stdin is not None
        t0 = time.perf_counter()
        self.proc.stdin.write(b"m" if stay else b"s")
        self.proc.stdin.flush()
        msg = self.router.recv()
        return (time.perf_counter() - t0) * 1000, msg["pid"]

    def close(self) -> None:
        self.router.close()


def floor_warm(procs: Processes, root: Path, n: int, n_mem: int) -> tuple[list[float], list[float], list[float]]:
    """Fork from a warm template: (ms to the child's first message, child RSS MB, child USS MB)."""
    t = Template(procs, root)
    times, rss, uss = [], [], []
    try:
        for _ in range(n + 3):
            ms, _ = t.fork()
            times.append(ms)
        times = times[3:]
        for _ in range(n_mem):
            _, pid = t.fork(stay=True)
            time.sleep(0.2)
            try:
                r, u = memory(pid)
                rss.append(r)
                uss.append(u)
            finally:
                os.kill(pid, signal.SIGKILL)
    finally:
        t.close()
        procs.end([t.proc], grace=2)
    return times, rss, uss


def floor_start_many(procs: Processes, root: Path, kind: str, n: int) -> float:
    """ms until ``n`` processes started at once have each sent a first message: fresh interpreters
    importing zmq and msgpack (``cold``) or children forked from a warm template (``warm``)."""
    if kind == "warm":
        t = Template(procs, root)
        try:
            assert t.proc.stdin is not None
            t0 = time.perf_counter()
            t.proc.stdin.write(b"s" * n)
            t.proc.stdin.flush()
            for _ in range(n):
                t.router.recv(60)
            return (time.perf_counter() - t0) * 1000
        finally:
            t.close()
            procs.end([t.proc], grace=5)
    router = Router(root, "floor-many-cold")
    children: list[subprocess.Popen] = []
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            children.append(subprocess.Popen([sys.executable, "-c", COLD_CHILD, router.endpoint, "exit"],
                                             start_new_session=True, cwd=root))
        for _ in range(n):
            router.recv(60)
        return (time.perf_counter() - t0) * 1000
    finally:
        for c in children:
            try:
                c.wait(30)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        router.close()


def floor_router_rss(procs: Processes, count: int, helpers: int = 4) -> tuple[float, float]:
    """RSS (MB) of a bare pyzmq ROUTER process before and after ``count`` DEALER peers (``echo``
    helpers, tcp loopback) connected to it: libzmq's own cost of that many connections."""
    hold = procs.spawn([str(HERE / "benchlib.py"), "router-hold", str(count)], "router-hold", stdout=subprocess.PIPE)
    echoes: list[subprocess.Popen] = []
    try:
        endpoint = read_line(hold, 60, "the bare ROUTER")
        time.sleep(0.2)
        before = memory(hold.pid)[0]
        per = count // helpers
        echoes = [procs.spawn([str(HERE / "benchlib.py"), "echo", endpoint, str(per), f"h{i}-"], f"echo-hold-{i}")
                  for i in range(helpers)]
        read_line(hold, 300, f"{count} peers to connect to the bare ROUTER")
        time.sleep(0.5)
        return before, memory(hold.pid)[0]
    finally:
        procs.end([*echoes, hold], grace=2)


def floor_kill_detect(root: Path, n: int) -> list[float]:
    """ms from kill -9 of a child to its pidfd readable plus one durable SQLite commit (WAL, FULL)."""
    db = sqlite3.connect(str(root / "floor-kill.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
    db.execute("INSERT OR REPLACE INTO t VALUES (1, 'x')")
    out = []
    try:
        for i in range(n):
            p = subprocess.Popen(["sleep", "60"], start_new_session=True, cwd=root)
            fd = os.pidfd_open(p.pid)
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                time.sleep(0.01)
                t0 = time.perf_counter()
                os.kill(p.pid, signal.SIGKILL)
                poller.poll(10_000)
                with db:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("UPDATE t SET v=? WHERE k=1", (f"FINISHED:ABNORMAL {i}",))
                out.append((time.perf_counter() - t0) * 1000)
            finally:
                os.close(fd)
                p.wait()
    finally:
        db.close()
    return out


class RttServer:
    """The ``rtt-server`` helper: the far end of the raw round-trip floors (the job is the near end)."""

    def __init__(self, procs: Processes, root: Path, mode: str, sites: int = 0) -> None:
        self.endpoint = f"ipc://{root}/floor-rtt-{mode}.sock"
        self.procs = procs
        self.proc = procs.spawn([str(HERE / "benchlib.py"), "rtt-server", self.endpoint, mode, str(root),
                                 str(sites)], f"rtt-{mode}", stdout=subprocess.PIPE)
        read_line(self.proc, 60, "the rtt server")

    def close(self) -> None:
        self.procs.end([self.proc], grace=2)


def floor_fanout(procs: Processes, count: int, payloads: dict[str, tuple[list, int]],
                 processes: int = 1, warmup: int | None = None) -> dict[str, list[float]]:
    """ms for a ROUTER here to send each payload's frames to ``count`` DEALER peers (``echo``
    helpers, ``processes`` of them, tcp loopback like the sites socket) and get every peer's small
    reply, after ``warmup`` untimed rounds per payload (None: 3, fewer when a round moves
    gigabytes)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    echoes = [procs.spawn([str(HERE / "benchlib.py"), "echo", f"tcp://127.0.0.1:{port}", str(count // processes),
                           f"e{i}-"], f"echo-{count}-{i}") for i in range(processes)]
    try:
        ids = []
        deadline = time.monotonic() + 60
        while len(ids) < count:
            if not router.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                raise TimeoutError(f"only {len(ids)} of {count} echo peers connected")
            ids.append(router.recv_multipart()[0])
        out = {}
        for name, (frames, iters) in payloads.items():
            times = []
            rounds = warmup
            if rounds is None:  # 3, but a single one when a round moves gigabytes
                rounds = 3 if sum(len(f) for f in frames) * count < 100 * MB else 1 if count < 500 else 0
            for i in range(iters + rounds):
                t0 = time.perf_counter()
                for ident in ids:
                    router.send_multipart([ident, *frames], copy=False)
                for _ in ids:
                    router.recv_multipart(copy=False)
                if i >= rounds:
                    times.append((time.perf_counter() - t0) * 1000)
            out[name] = times
        for ident in ids:
            router.send_multipart([ident, b"bye"])
        for echo in echoes:
            echo.wait(10)
        return out
    finally:
        procs.end(echoes, grace=2)
        router.close()
        ctx.term()


# --- helper processes (``python benchlib.py MODE ...``) ---------------------------------------------------


def fake_clients(count: int) -> list[dict]:
    """Client dicts shaped like what the parent sends a job for lightweight peers."""
    now = time.time()
    return [{"name": f"k{i:05d}", "last_connect_time": now, "token": os.urandom(16).hex(),
             "props": {"resources": {"num_cpus": 1, "mem_gb": 1.0, "num_gpus": 0}, "pid": 4242}}
            for i in range(count)]


class SocketSet:
    """Many DEALER sockets waited on with epoll on their ZMQ_FD: O(ready sockets) per wait, where
    `zmq.Poller` walks every socket on every call (milliseconds for thousands of them).

    ZMQ_FD only says that the socket may have changed, and any send or receive can consume that
    signal: `drain` must be called on a socket after every send to it (its callers do).
    """

    def __init__(self, count: int) -> None:
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, count + 64)
        self.epoll = select.epoll()
        self.by_fd: dict[int, zmq.Socket] = {}

    def add(self, endpoint: str, routing_id: bytes | None = None) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(endpoint)
        fd = sock.getsockopt(zmq.FD)
        self.by_fd[fd] = sock
        self.epoll.register(fd, select.EPOLLIN)
        return sock

    def ready(self, timeout: float) -> list[zmq.Socket]:
        return [self.by_fd[fd] for fd, _ in self.epoll.poll(timeout)]

    @staticmethod
    def drain(sock: zmq.Socket, handle: Callable[[zmq.Socket, list], None]) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(sock, frames)

    def close(self) -> None:
        for sock in self.by_fd.values():
            sock.close(0)
        self.epoll.close()
        self.ctx.term()


def run_peers(endpoint: str, prefix: str, start: int, count: int, logout: bool, window: int = 25) -> int:
    """``count`` site peers on one thread; prints ``ready`` once all are logged in.

    Peers connect and log in ``window`` at a time: the parent's sites socket listens with libzmq's
    default backlog (100), and a storm of thousands of simultaneous connects overflows it (the
    kernel drops the SYNs and TCP retries them after 1, 3, 7, 15 s...). Heartbeats are sent in
    batches every 50 ms, each peer at the interval the parent gave at login.
    """
    raise_fd_limit()
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    socks = SocketSet(count)
    peers: dict[zmq.Socket, dict] = {}
    to_connect = deque(range(start, start + count))
    resources = {"num_cpus": 1, "mem_gb": 1.0, "num_gpus": 0}
    beats: list = []  # heap of (due, n, sock)
    state = {"interval": 5.0, "logged_in": 0, "in_flight": 0, "beats": 0, "beat_replies": 0}
    ready, next_scan = False, time.monotonic() + 1.0

    def send(sock: zmq.Socket, msg: Message) -> None:
        try:
            sock.send_multipart(encode(msg), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass

    def handle(sock: zmq.Socket, frames: list) -> None:
        peer = peers[sock]
        try:
            msg = decode(frames)
        except Exception:
            return
        if msg.is_reply:
            if msg.op == "login" and msg.rc == "OK" and peer["token"] is None:
                peer["token"] = msg.body["token"]
                state["interval"] = float(msg.body.get("heartbeat_interval", 5.0))
                # a random phase: the peers' heartbeats arrive at a steady rate, not in bursts
                heapq.heappush(beats, (time.monotonic() + state["interval"] * random.random(), next_id(), sock))
                state["logged_in"] += 1
                state["in_flight"] = max(0, state["in_flight"] - 1)
            elif msg.op == "heartbeat" and msg.rc == "OK":
                state["beat_replies"] += 1
            elif msg.op == "heartbeat" and msg.rc != "OK" and peer["token"]:
                peer["token"], peer["login_sent"] = None, 0.0  # forgotten: log in again
                state["logged_in"] -= 1
            return
        if msg.op == "aux":
            if not msg.body.get("fire_and_forget"):
                size = sum(len(f) for f in msg.frames[1:])
                send(sock, Message("aux", {}, re=msg.id, rc="OK",
                                   frames=encode_shareable(Shareable({"site": peer["name"], "len": size}))))
        elif msg.op == "start_job":
            send(sock, Message("start_job", {"started": True}, re=msg.id, rc="OK"))
        elif msg.op == "check_resources":
            send(sock, Message("check_resources", {"token": f"r-{peer['name']}", "reason": None}, re=msg.id, rc="OK"))
        elif msg.op not in ("stop_job", "cancel_resources", "job_key"):
            send(sock, Message(msg.op, {"reason": f"unknown op {msg.op}"}, re=msg.id, rc="BAD_REQUEST"))

    def login(sock: zmq.Socket, peer: dict) -> None:
        peer["login_sent"] = time.monotonic()
        send(sock, Message("login", {"name": peer["name"], "pid": os.getpid(), "resources": resources}, id=next_id()))
        socks.drain(sock, handle)

    while not stop:
        now = time.monotonic()
        while to_connect and state["in_flight"] < window:
            sock = socks.add(endpoint)
            peers[sock] = {"name": f"{prefix}{to_connect.popleft():05d}", "token": None, "login_sent": 0.0}
            state["in_flight"] += 1
            login(sock, peers[sock])
        if now >= next_scan and state["logged_in"] < len(peers):
            next_scan = now + 1.0
            for sock, peer in peers.items():
                if peer["token"] is None and now - peer["login_sent"] > 15.0:
                    login(sock, peer)
        while beats and beats[0][0] <= now:
            _, n, sock = heapq.heappop(beats)
            peer = peers[sock]
            if peer["token"]:
                send(sock, Message("heartbeat", {"token": peer["token"]}, id=next_id()))
                state["beats"] += 1
                socks.drain(sock, handle)
                heapq.heappush(beats, (now + state["interval"], n, sock))
        wait = 0.2 if not beats else min(0.2, max(0.05, beats[0][0] - now))
        if to_connect and state["in_flight"] < window:
            wait = 0
        for sock in socks.ready(wait):
            socks.drain(sock, handle)
        if not ready and state["logged_in"] == count:
            ready = True
            print("ready", flush=True)
    print(f"peers {prefix}{start}+{count}: {state['beats']} heartbeats sent, {state['beat_replies']} answered",
          file=sys.stderr, flush=True)
    if logout:
        for sock, peer in peers.items():
            if peer["token"]:
                send(sock, Message("logout", {"token": peer["token"]}, id=next_id()))
        time.sleep(0.2)
    socks.close()
    return 0


def run_router_hold(count: int) -> int:
    """A bare ROUTER (backlog 4096) that waits for ``count`` peers' hello, prints ``ready`` and holds
    the connections: the memory libzmq needs for that many connections, without flrunner."""
    raise_fd_limit()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.BACKLOG, 4096)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"tcp://127.0.0.1:{port}", flush=True)
    for _ in range(count):
        sock.recv_multipart()
    print("ready", flush=True)
    while True:
        time.sleep(60)


def run_echo(endpoint: str, count: int, prefix: str = "echo-") -> int:
    """``count`` DEALER peers on one thread; each answers a message with its first frame only."""
    raise_fd_limit()
    socks = SocketSet(count)
    done: list[int] = []

    def handle(sock: zmq.Socket, frames: list) -> None:
        if frames[0].bytes == b"bye":
            done.append(1)
        else:
            sock.send(frames[0], copy=False)

    for i in range(count):
        sock = socks.add(endpoint, f"{prefix}{i:05d}".encode())
        sock.send(b"hello")
        socks.drain(sock, handle)
    while not done:
        for sock in socks.ready(1.0):
            socks.drain(sock, handle)
    socks.close()
    return 0


def run_rtt_server(endpoint: str, mode: str, root: str, sites: int) -> int:
    """Answer each msgpack request like the parent would, with a plain ROUTER and msgpack.

    Modes: ``small`` (a sync_clients delta reply), ``status`` (an UPDATE committed durably in a
    SQLite WAL database with synchronous=FULL, like the job store, before the reply), ``clients``
    (a reply carrying ``sites`` client dicts, packed per request).
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    db = None
    if mode == "status":
        db = sqlite3.connect(os.path.join(root, "floor-status.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, progress TEXT)")
        db.execute("INSERT OR REPLACE INTO jobs VALUES ('j', NULL)")
    clients = fake_clients(sites) if mode == "clients" else []
    print("ready", flush=True)
    revision = 7
    while True:
        ident, raw = sock.recv_multipart()
        req = msgpack.unpackb(raw, raw=False)
        if mode == "status":
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE jobs SET progress=? WHERE job_id='j'", (json.dumps(req["b"]["progress"]),))
            body: dict = {"status": "RUNNING", "durable": True}
        elif mode == "clients":
            body = {"revision": revision, "clients": clients}
        else:
            body = {"revision": revision, "base": revision, "changes": []}
        sock.send_multipart([ident, msgpack.packb({"v": 1, "op": req["op"], "id": req["id"] + 1_000_000,
                                                   "re": req["id"], "rc": "OK", "b": body}, use_bin_type=True)])


def run_template(endpoint: str) -> int:
    """A warm template: the job runtime imported, objects frozen, no ZeroMQ context; one byte on
    stdin forks a child that opens a context, sends its pid, and exits (``s``) or stays (``m``)."""
    import child.engine  # noqa: F401  (what a job process imports)
    import child.runner  # noqa: F401
    import child.session  # noqa: F401
    import flrunner  # noqa: F401

    gc.collect()
    gc.freeze()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        cmd = os.read(0, 1)
        while True:  # reap children that are done
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if not cmd:
            return 0
        if os.fork() == 0:
            try:
                os.setsid()
                ctx = zmq.Context()
                s = ctx.socket(zmq.DEALER)
                s.connect(endpoint)
                s.send(msgpack.packb({"pid": os.getpid()}))
                if cmd == b"m":
                    s.recv()
                s.close(1000)
                ctx.term()
            finally:
                os._exit(0)


def run_idle(endpoint: str) -> int:
    """A ROUTER polled with a 1 s timeout, like a parent's loop with nothing to do."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        for s, _ in poller.poll(1000):
            s.recv_multipart()


def helper_main(argv: list[str]) -> int:
    mode, *rest = argv
    if mode == "peers":
        endpoint, prefix, start, count, logout, *window = rest
        return run_peers(endpoint, prefix, int(start), int(count), logout == "logout", *map(int, window))
    if mode == "echo":
        return run_echo(rest[0], int(rest[1]), *rest[2:])
    if mode == "rtt-server":
        return run_rtt_server(rest[0], rest[1], rest[2], int(rest[3]))
    if mode == "template":
        return run_template(rest[0])
    if mode == "idle":
        return run_idle(rest[0])
    if mode == "router-hold":
        return run_router_hold(int(rest[0]))
    raise SystemExit(f"unknown helper mode {mode}")


if __name__ == "__main__":
    sys.exit(helper_main(sys.argv[1:]))
