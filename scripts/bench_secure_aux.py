#!/usr/bin/env python3
"""Secure aux (``send_aux_request(..., secure=True)``) next to plain aux, and the crypto floor.

Provisions a project (``flrunner.security.provision``) with a kit for the parent and for each
site, starts a real parent with the parent's kit (CURVE on its sites socket) in a temporary
folder and, for each case, real site agents with their kits (``flrunner site --kit``). Each case
runs one job whose workflow times, in the job process, ``send_aux_request`` to every site of the
job with ``secure=False`` and ``secure=True`` alternately: each iteration makes one call of each,
and which goes first alternates, so drift and noise hit both. A small payload first, then a
10 MB binary payload (one raw frame in plain aux; in secure aux, one ciphertext frame holding
every frame). Each site answers with a small Shareable. The job writes its timings to its run dir.

Cases: ``1 site`` and ``3 sites``, real site agents (one process each).

Baseline of each secure figure: the plain aux of the same job (interleaved with it). ``ratio`` is
the secure median over the plain median.

Crypto floor: the sealing a secure round trip does, in this process, on the same payloads, with
no sockets: the job's `seal_request` (the payload encrypted once, its key sealed for each site)
and its `reply_context`, one site's `open_request`, `reply_context` and `seal_reply`, and the job's
`open_reply` of every site's reply (the sites do their part in parallel, so one site's part is on
the critical path). Its baseline is what secure adds to aux in the same run (the median of the
per-iteration differences secure - plain), and its ratio the share of that the crypto explains.
Below the table, the same medians side by side with the floor's steps: where the overhead goes.

Usage: python scripts/bench_secure_aux.py [--quick] [--json FILE] [--keep]
Every process it starts (parent, job processes, sites) runs in its own process group under the
temporary folder and is ended before the script exits, on failure or SIGTERM too.
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
from typing import Any

import zmq

import benchlib as B
from flrunner.aux.payload import encode_shareable
from flrunner.shareable import Shareable

SMALL = {"x": 1, "s": "hello", "l": [1.5, 2.5, 3.5]}
BIG_MB = 10
TOPIC = "bench"
CASES = (1, 3)
PAYLOADS = ("small", "10mb")

#: The job's workflow, written next to benchlib's ``bench_job.py`` (whose ``BenchTask`` serves
#: ``bench`` on the sites, answering with the site's name and the size of the blob it got).
JOB_CODE = '''
"""A workflow of scripts/bench_secure_aux.py: plain and secure aux, interleaved."""

import os
import time

from bench_job import _write
from flrunner import Controller, Shareable


class SecureAuxBench(Controller):
    """Times send_aux_request to ``sites`` with secure False and True; writes bench.json.

    Each iteration makes one plain and one secure call; the first of the two alternates. The
    samples (ms) are in iteration order: ``plain[k]`` and ``secure[k]`` are the same iteration.
    """

    def __init__(self, sites, small, small_iters, big_iters, big_mb, warmup=5, big_warmup=2, timeout=120.0,
                 topic="bench"):
        super().__init__()
        self.sites = sorted(sites)
        self.small = small
        self.small_iters = small_iters
        self.big_iters = big_iters
        self.big_mb = big_mb
        self.warmup = warmup
        self.big_warmup = big_warmup
        self.timeout = timeout
        self.topic = topic

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        deadline = time.monotonic() + 60
        # secure aux needs each site's public key from the job's site list
        while not set(self.sites) <= {c.name for c in engine.sync_clients_from_main_process()}:
            if time.monotonic() > deadline or abort_signal.triggered:
                raise RuntimeError(f"sites {self.sites} are not all in the job's site list")
            abort_signal.wait(0.05)

        def once(payload, size, secure):
            t0 = time.perf_counter()
            replies = engine.send_aux_request(self.sites, self.topic, payload, self.timeout, fl_ctx, secure=secure)
            took = (time.perf_counter() - t0) * 1000
            # each site says how much blob it read: a secure payload arrived whole and opened
            bad = {s: (r.get_return_code(), r.get_header("reason"), r.get("len")) for s, r in replies.items()
                   if r.get_return_code() != "OK" or r.get("site") != s or r.get("len") != size}
            if bad or sorted(replies) != self.sites:
                raise RuntimeError(f"secure={secure}: bad replies {bad or sorted(replies)}")
            return took

        def interleaved(payload, size, iters, warmup):
            got = {"plain": [], "secure": []}
            for i in range(warmup + iters):
                if abort_signal.triggered:
                    break
                for secure in ((False, True) if i % 2 == 0 else (True, False)):
                    ms = once(payload, size, secure)
                    if i >= warmup:
                        got["secure" if secure else "plain"].append(ms)
            return got

        out = {"small": interleaved(Shareable(self.small), 0, self.small_iters, self.warmup)}
        size = int(self.big_mb * 2 ** 20)
        out["10mb"] = interleaved(Shareable({"blob": os.urandom(size)}), size, self.big_iters, self.big_warmup)
        _write(fl_ctx, "bench.json", out)
'''


@dataclass(frozen=True)
class Reps:
    """Iterations: aux pairs (plain + secure) per case, and crypto floor rounds per payload."""

    small: int
    big: int
    floor_small: int
    floor_big: int


QUICK = Reps(small=600, big=30, floor_small=1000, floor_big=30)
FULL = Reps(small=3000, big=150, floor_small=5000, floor_big=150)


def bench_payloads() -> dict[str, Shareable]:
    """The payloads of the floor, like the job's: the small map, and a 10 MB random blob."""
    return {"small": Shareable(SMALL), "10mb": Shareable({"blob": os.urandom(BIG_MB * B.MB)})}


def label(payload: str) -> str:
    """A payload's name in the output."""
    return f"{BIG_MB} MB" if payload == "10mb" else "small"


# --- the crypto floor: sealed.py's functions in this process, no sockets ---------------------------------

#: The steps of a secure round trip's sealing, in order, and who does them.
STEPS = {
    "seal_request": "job: seal_request (payload encrypted once, its key sealed per site)",
    "job_context": "job: reply_context of the request (its nonce and tag)",
    "open_request": "site: open_request (one site; the sites run in parallel)",
    "site_context": "site: reply_context of the request (its nonce and tag)",
    "seal_reply": "site: seal_reply",
    "open_replies": "job: open_reply of every site's reply",
}


def crypto_floor(sites: int, shareable: Shareable, iters: int, warmup: int = 3) -> dict[str, list[float]]:
    """ms of each step of `STEPS`, and of their sum (``total``), per round trip to ``sites`` sites."""
    from flrunner.security import sealed as S

    job_secret = S.new_secret_key()
    job_public = S.public_key_of(job_secret)
    site_secrets = {f"site-{i}": S.new_secret_key() for i in range(1, sites + 1)}
    site_publics = {name: S.public_key_of(secret) for name, secret in site_secrets.items()}
    first = next(iter(site_secrets))
    frames = encode_shareable(shareable)
    size = len(shareable["blob"]) if "blob" in shareable else 0
    answers = {name: encode_shareable(Shareable({"site": name, "len": size})) for name in site_secrets}
    context = S.request_context("bench-secure-aux", TOPIC)
    out: dict[str, list[float]] = {step: [] for step in [*STEPS, "total"]}
    took: dict[str, float] = {}  # this round's ms per step

    def timed(step: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        got = fn()
        took[step] = (time.perf_counter() - t0) * 1000
        return got

    for i in range(warmup + iters):
        took.clear()
        blob, keys = timed("seal_request", lambda: S.seal_request(frames, job_secret, site_publics, context=context))
        replied_to = timed("job_context", lambda: S.reply_context(blob))
        opened = timed("open_request", lambda: S.open_request([blob], keys[first], site_secrets[first], job_public,
                                                              context=context))
        site_context = timed("site_context", lambda: S.reply_context(blob))
        replies = {first: timed("seal_reply", lambda: S.seal_reply(answers[first], site_secrets[first], job_public,
                                                                   context=site_context))}
        # The other sites seal their replies while the first one does: not on the critical path.
        replies.update({name: S.seal_reply(answers[name], secret, job_public, context=site_context)
                        for name, secret in site_secrets.items() if name != first})
        got = timed("open_replies", lambda: {name: S.open_reply(reply, job_secret, site_publics[name],
                                                                context=replied_to)
                                             for name, reply in replies.items()})
        if i == 0 and (opened != [bytes(f) for f in frames] or got != answers):
            raise RuntimeError("the crypto floor's payloads did not open to what was sealed")
        if i >= warmup:
            for step, ms in took.items():
                out[step].append(ms)
            out["total"].append(sum(took.values()))
    return out


# --- the deployment --------------------------------------------------------------------------------------


def make_job(root: Path, sites: list[str], reps: Reps) -> Path:
    """benchlib's job folder (its meta and site app), with `JOB_CODE`'s workflow on the server."""
    job = B.make_job(root, f"bench-secure-aux-{len(sites)}", "Sleep", {}, sites)
    app = job / "app"
    (app / "custom" / "bench_secure_aux_job.py").write_text(JOB_CODE)
    args = {"sites": sites, "small": SMALL, "small_iters": reps.small, "big_iters": reps.big, "big_mb": BIG_MB,
            "topic": TOPIC}
    (app / "config" / "config_fed_server.json").write_text(json.dumps(
        {"format_version": 2,
         "workflows": [{"id": "bench", "path": "bench_secure_aux_job.SecureAuxBench", "args": args}]}))
    return job


def run_case(procs: B.Processes, parent: B.ParentProc, project: Path, root: Path, count: int,
             reps: Reps) -> dict[str, dict[str, list[float]]]:
    """{payload: {"plain": [ms], "secure": [ms]}} of a job on ``count`` site agents started with kits."""
    names = [f"site-{i}" for i in range(1, count + 1)]
    admin = parent.admin
    sites = [procs.spawn(["-m", "flrunner", "site", "--kit", str(project / n), "--server", parent.sites,
                          "--log-level", "WARNING"], f"site-{n}-case{count}") for n in names]
    try:
        B.wait_until(lambda: set(names) <= {c["name"] for c in admin.clients()}, 60, f"{count} site(s) to log in",
                     0.05)
        # Polled, not followed on the status feed: a subscriber's pushes would land in the timings.
        job_id = admin.submit(make_job(root, names, reps))
        job = B.wait_until(lambda: (lambda j: j if j["status"].startswith("FINISHED:") else None)(
            admin.status(job_id)), 600, f"job {job_id} to end", 0.25)
        if job["status"] != "FINISHED:COMPLETED":
            raise RuntimeError(f"the bench job ended {job['status']}: {job.get('error')}")
        timings = json.loads((parent.run_dir(job_id) / "bench.json").read_text())
    finally:
        procs.end(sites)
    B.wait_until(lambda: not set(names) & {c["name"] for c in admin.clients()}, 30, f"{count} site(s) to leave",
                 0.05)
    return timings


# --- figures and output ----------------------------------------------------------------------------------


def figures(timings: dict[int, dict], floors: dict[int, dict]) -> dict[str, B.Figure]:
    figs: dict[str, B.Figure] = {}
    for count in timings:
        kind = f"{count} site agent{'s' if count > 1 else ''}"
        for payload in PAYLOADS:
            plain, secure = timings[count][payload]["plain"], timings[count][payload]["secure"]
            added = [s - p for s, p in zip(secure, plain)]
            figs[f"secure_aux_{count}_{payload}"] = B.Figure(
                f"secure_aux_{count}_{payload}", "ms", secure, baseline=statistics.median(plain),
                baseline_is="plain aux (same job, interleaved)", note=f"{kind}, {label(payload)}")
            figs[f"crypto_floor_{count}_{payload}"] = B.Figure(
                f"crypto_floor_{count}_{payload}", "ms", floors[count][payload]["total"],
                baseline=statistics.median(added),
                baseline_is="added by secure (median of secure - plain); ratio: the share the crypto explains",
                note=f"no sockets, {count} site key{'s' if count > 1 else ''}, {label(payload)}")
    return figs


def print_table(figs: dict[str, B.Figure]) -> None:
    head = f"{'figure':<22}{'median':>9}{'p99':>9} {'unit':<5}{'baseline':>9}{'ratio':>8}{'n':>6}  notes " \
           f"(baseline measured in the same run)"
    print(head)
    print("-" * len(head))
    for f in figs.values():
        ratio = f"{f.ratio:7.2f}x" if f.ratio is not None else f"{'-':>8}"
        print(f"{f.name:<22}{B.fmt(f.median, 9)}{B.fmt(f.p99, 9)} {f.unit:<5}{B.fmt(f.baseline, 9)}{ratio}"
              f"{len(f.values):>6}  {f.note}; baseline: {f.baseline_is}")


def print_breakdown(timings: dict[int, dict], floors: dict[int, dict]) -> None:
    """Where the secure overhead goes: plain, secure, what secure adds, and the crypto by step."""
    cols = [(count, payload) for count in timings for payload in PAYLOADS]
    med = statistics.median

    def row(name: str, values: list[float | None], what: str) -> None:
        print(f"{name:<22}" + "".join(B.fmt(v, 14) for v in values) + f"  {what}")

    heads = [f"{count} site{'s' if count > 1 else ''}/{label(payload)}" for count, payload in cols]
    print(f"{'median ms':<22}" + "".join(f"{h:>14}" for h in heads))
    row("plain aux", [med(timings[c][p]["plain"]) for c, p in cols], "send_aux_request(secure=False)")
    row("secure aux", [med(timings[c][p]["secure"]) for c, p in cols], "send_aux_request(secure=True)")
    added = [med([s - q for s, q in zip(timings[c][p]["secure"], timings[c][p]["plain"])]) for c, p in cols]
    row("added by secure", added, "median of secure - plain, per iteration")
    for step, what in STEPS.items():
        row(f"  {step}", [med(floors[c][p][step]) for c, p in cols], what)
    total = [med(floors[c][p]["total"]) for c, p in cols]
    row("  crypto floor", total, "the steps above, one round trip")
    row("not crypto", [a - t for a, t in zip(added, total)], "added by secure - crypto floor")


def machine() -> dict[str, Any]:
    import nacl

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(), "pynacl": nacl.__version__}


def write_json(path: Path, quick: bool, elapsed: float, figs: dict[str, B.Figure], timings: dict[int, dict],
               floors: dict[int, dict], warnings: list[str]) -> None:
    """The table's figures, plain aux's, what secure adds, and the crypto floor's steps (medians, ms)."""
    cols = [(count, payload) for count in timings for payload in PAYLOADS]
    plain = {f"plain_aux_{c}_{p}": B.Figure(f"plain_aux_{c}_{p}", "ms", timings[c][p]["plain"]).to_json()
             for c, p in cols}
    added = {f"added_{c}_{p}": round(statistics.median([s - q for s, q in zip(timings[c][p]["secure"],
                                                                                timings[c][p]["plain"])]), 4)
             for c, p in cols}
    steps = {f"{c}_{p}": {step: round(statistics.median(v), 4) for step, v in floors[c][p].items()} for c, p in cols}
    doc = {"machine": machine(), "quick": quick, "big_mb": BIG_MB, "elapsed_s": round(elapsed, 1),
           "figures": {name: f.to_json() for name, f in figs.items()}, "plain_aux": plain,
           "added_by_secure_ms": added, "floor_steps_ms": steps, "floor_steps_what": STEPS, "warnings": warnings}
    path.write_text(json.dumps(doc, indent=2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer round trips (under a minute on 2 cores)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures and the floor's steps to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (kits, workspaces, logs)")
    args = ap.parse_args()
    reps = QUICK if args.quick else FULL

    def stopped(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by {signal.Signals(signum).name}")  # unwinds through the cleanup below

    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGHUP, stopped)
    # A short folder: the parent's ipc socket paths must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="flb-sec-")).resolve()
    procs = B.Processes(root)
    t_start = time.monotonic()
    timings: dict[int, dict] = {}
    floors: dict[int, dict] = {}
    warnings: list[str] = []
    parent: B.ParentProc | None = None

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        # The floor first, while nothing else runs.
        payloads = bench_payloads()
        for count in CASES:
            log(f"crypto floor, {count} site key(s)")
            floors[count] = {p: crypto_floor(count, payloads[p], reps.floor_big if p == "10mb" else reps.floor_small)
                             for p in PAYLOADS}
        del payloads
        from flrunner.security import provision

        project = root / "project"
        provision(project, sites=[f"site-{i}" for i in range(1, max(CASES) + 1)])
        parent = B.ParentProc(procs, root / "ws", "parent", ["--kit", str(project / "parent"), "--site-timeout", "60"],
                              abort_grace=1, admin_timeout=30)
        for count in CASES:
            log(f"{count} site(s): plain and secure aux")
            timings[count] = run_case(procs, parent, project, root, count, reps)
        warnings += [f"the parent stopped, but {what} was still running 2 s later (killed)"
                     for what in parent.stop(60)]
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if parent is not None:
            parent.admin.close()  # closed already if the parent was stopped; a second close does nothing
        swept = procs.end_all()
        if swept:
            warnings.append(f"killed {len(swept)} process(es) left under {root}: {swept[:10]}")
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    elapsed = time.monotonic() - t_start
    figs = figures(timings, floors)
    print(f"secure aux (sealed end to end, PyNaCl) vs plain aux: job process -> parent (CURVE sites socket) -> every "
          f"site -> parent -> job process, both in the same job, interleaved. {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}.")
    print_table(figs)
    print()
    print_breakdown(timings, floors)
    print(f"({'quick' if args.quick else 'full'} run, {elapsed:.0f} s; each site answers with a small Shareable, "
          f"the {BIG_MB} MB payload goes one way)")
    for w in warnings:
        print(f"WARNING {w}")
    if args.json:
        write_json(Path(args.json), args.quick, elapsed, figs, timings, floors, warnings)
    return 1 if warnings else 0


if __name__ == "__main__":
    sys.exit(main())
