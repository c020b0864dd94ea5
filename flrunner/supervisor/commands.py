"""The supervisor's command line: ``start``, ``stop``, ``status`` and ``run``.

::

    flrunner-supervisor start  --workspace W [--foreground] [-- PARENT OPTIONS]
    flrunner-supervisor stop   --workspace W [--timeout S]
    flrunner-supervisor status --workspace W [--json]
    flrunner-supervisor run    --workspace W JOB_DIR... [--timeout S] [-- PARENT OPTIONS]

``start`` runs a `Watchdog` in this process (``--foreground``), or in a daemon started as
``<this python> -m flrunner.supervisor start --foreground --daemonized ...`` and returns once its
parent serves. ``stop`` SIGTERMs the watchdog and waits for it and its parent to exit.
``status`` reports on both. ``run`` submits job folders to the workspace's parent (starting a
supervisor first if none serves) and follows them until they end.

Exit status: 0 success; 1 failure (a job did not complete, the parent could not be started or
stopped, ...); 2 usage error or bad input (an invalid job folder); 3 ``status``: the parent does
not serve.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Sequence

import psutil

from flrunner.admin.client import AdminClient, find_parent
from flrunner.admin.embed import FLRunner, follow_jobs
from flrunner.errors import BadRequest, FlrunnerError, ParentUnavailable
from flrunner.job import load_job_folder
from flrunner.status import is_final
from flrunner.supervisor.errors import EXIT_FAILED, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE, SupervisorError
from flrunner.supervisor.watchdog import PROG, WORKSPACE_ENV, Files, RestartPolicy, Watchdog, live_watchdog, read_state

COMPLETED = "FINISHED:COMPLETED"
#: The module a daemonized watchdog runs, so it does not depend on where the script lives.
DAEMON_MODULE = "flrunner.supervisor"

log = logging.getLogger(__name__)


def serving_parent(files: Files, watchdog_pid: int | None = None, timeout: float = 2.0) -> dict | None:
    """The parent's info if it answers a ping (and, with ``watchdog_pid``, was started by that watchdog)."""
    try:
        info = find_parent(files.workspace)
        if watchdog_pid is not None and psutil.Process(info["pid"]).ppid() != watchdog_pid:
            return None
        with AdminClient(info["admin"], timeout=timeout) as admin:
            return info if admin.ping().get("ready") else None
    except (FlrunnerError, psutil.Error):
        return None


# --- start ----------------------------------------------------------------------------------------------
def setup_logging(files: Files, to_stderr: bool) -> None:
    """Send the supervisor's log to ``files.log`` (and to stderr if ``to_stderr``), with timestamps."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s supervisor[%(process)d]: %(message)s")
    handlers: list[logging.Handler] = [logging.FileHandler(files.log)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    package_log = logging.getLogger(__package__)  # the watchdog's and the commands' loggers
    for handler in handlers:
        handler.setFormatter(fmt)
        package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)


def watchdog_options(args: argparse.Namespace) -> list[str]:
    """The watchdog's options, to hand to a daemonized watchdog."""
    return ["--max-crashes", str(args.max_crashes), "--crash-window", str(args.crash_window),
            "--backoff-initial", str(args.backoff_initial), "--backoff-max", str(args.backoff_max),
            "--stop-timeout", str(args.stop_timeout)]


def start_daemon(files: Files, args: argparse.Namespace, parent_args: Sequence[str]) -> tuple[int, dict]:
    """Start a daemonized watchdog; return (its pid, the parent's info) once the parent serves.

    Raises:
        SupervisorError: the watchdog exited, or the parent did not serve within ``args.start_timeout``.
    """
    files.workspace.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", DAEMON_MODULE, "start", "--workspace", str(files.workspace), "--foreground",
           "--daemonized", *watchdog_options(args), "--", *parent_args]
    offset = files.log.stat().st_size if files.log.exists() else 0
    with open(files.log, "ab") as out:  # tracebacks, if any, land in the log too
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + args.start_timeout
    while True:
        code = proc.poll()
        if code is not None:
            raise SupervisorError(f"the supervisor exited with code {code}: {log_errors(files, offset)} "
                                  f"(log: {files.log})")
        info = serving_parent(files, proc.pid)
        if info is not None:
            return proc.pid, info
        if time.monotonic() > deadline:
            proc.terminate()
            proc.wait(args.stop_timeout + 10)
            raise SupervisorError(f"the parent did not serve within {args.start_timeout:g}s (supervisor stopped); "
                                  f"see {files.log} and {files.parent_out}")
        time.sleep(0.05)


def log_errors(files: Files, offset: int) -> str:
    """The ERROR lines (or else the last line) the log got since ``offset``."""
    with open(files.log, "rb") as f:
        f.seek(offset)
        lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln.split(": ", 1)[-1] for ln in lines if " ERROR " in ln or "Error" in ln]
    return " / ".join(errors) or (lines[-1] if lines else "no message")


def cmd_start(args: argparse.Namespace, parent_args: list[str]) -> int:
    """Run the watchdog here (``--foreground``) or as a daemon, once per workspace."""
    files = Files.of(args.workspace)
    other = live_watchdog(files)
    if other is not None:
        raise SupervisorError(f"a supervisor (pid {other}) already runs for {files.workspace}")
    if not args.foreground:
        pid, info = start_daemon(files, args, parent_args)
        print(f"parent {info['pid']} serving {files.workspace} (supervisor {pid}; log {files.log})")
        return EXIT_OK
    files.workspace.mkdir(parents=True, exist_ok=True)
    setup_logging(files, to_stderr=not args.daemonized)
    policy = RestartPolicy(args.backoff_initial, args.backoff_max, args.max_crashes, args.crash_window)
    try:
        return Watchdog(files, parent_args, policy, args.stop_timeout).run()
    except SupervisorError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except Exception:
        log.exception("the supervisor failed")
        return EXIT_FAILED


# --- stop -----------------------------------------------------------------------------------------------
def cmd_stop(args: argparse.Namespace, parent_args: list[str]) -> int:
    """SIGTERM the watchdog and wait until it and its parent have exited."""
    files = Files.of(args.workspace)
    pid = live_watchdog(files)
    if pid is None:
        raise SupervisorError(f"no supervisor is running for {files.workspace}")
    procs = [psutil.Process(pid)]
    parent_pid = read_state(files).get("parent_pid")
    try:
        if parent_pid:
            procs.append(psutil.Process(parent_pid))
    except psutil.Error:
        pass
    os.kill(pid, signal.SIGTERM)
    alive = wait_gone(procs, args.timeout)
    if alive:
        pids = ", ".join(str(p.pid) for p in alive)
        raise SupervisorError(f"still running after {args.timeout:g}s: pid(s) {pids}")
    print(f"stopped the supervisor {pid}" + (f" and the parent {parent_pid}" if parent_pid else ""))
    return EXIT_OK


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; those still alive after ``timeout``.

    A zombie counts as gone: an orphan is reaped by init whenever init gets to it.
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- status ---------------------------------------------------------------------------------------------
def collect_status(files: Files) -> dict:
    """The watchdog's and the parent's state, as ``status --json`` prints it."""
    now = time.time()
    pid = live_watchdog(files)
    state = read_state(files) if pid is not None else {}
    supervisor = None if pid is None else {
        "pid": pid, "restarts": state.get("restarts", 0),
        "uptime_s": round(now - state["started"], 1) if state.get("started") else None}
    parent = None
    try:
        info = find_parent(files.workspace)
        started = info.get("started")  # when it began serving
        parent = {"pid": info["pid"], "uptime_s": round(now - started, 1) if started else None,
                  "admin": info.get("admin"), "sites": info.get("sites"), "answers": False}
        with AdminClient(info["admin"], timeout=2.0) as admin:
            parent["answers"] = bool(admin.ping().get("ready"))
    except (FlrunnerError, psutil.Error):
        pass
    return {"workspace": str(files.workspace), "supervisor": supervisor, "parent": parent,
            "serving": bool(parent and parent["answers"])}


def cmd_status(args: argparse.Namespace, parent_args: list[str]) -> int:
    """Print the watchdog's and the parent's state; exit 0 if the parent serves, 3 if not."""
    doc = collect_status(Files.of(args.workspace))
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        sup, par = doc["supervisor"], doc["parent"]
        print(f"workspace:  {doc['workspace']}")
        print("supervisor: " + ("not running" if sup is None else
                                f"pid {sup['pid']}, up {sup['uptime_s']}s, {sup['restarts']} restart(s)"))
        print("parent:     " + ("not running" if par is None else
                                f"pid {par['pid']}, up {par['uptime_s']}s, admin socket "
                                + ("answers" if par["answers"] else "does NOT answer")))
    return EXIT_OK if doc["serving"] else EXIT_NOT_RUNNING


# --- run ------------------------------------------------------------------------------------------------------
def ensure_parent(files: Files, args: argparse.Namespace, parent_args: list[str]) -> None:
    """Make sure a parent serves the workspace: use the running one, or start a supervisor."""
    if serving_parent(files) is not None:
        if parent_args:
            print(f"{PROG}: a parent already serves {files.workspace}; ignoring: {' '.join(parent_args)}",
                  file=sys.stderr)
        return
    if live_watchdog(files) is not None:  # starting, or backing off after a crash
        deadline = time.monotonic() + args.start_timeout
        while serving_parent(files) is None:
            if live_watchdog(files) is None or time.monotonic() > deadline:
                raise SupervisorError(f"the supervisor of {files.workspace} has no serving parent; see {files.log}")
            time.sleep(0.05)
        return
    pid, info = start_daemon(files, args, parent_args)
    print(f"{PROG}: started a supervisor ({pid}) and a parent ({info['pid']}) on {files.workspace}; "
          f"stop them with: {PROG} stop --workspace {files.workspace}", file=sys.stderr)


def _progress(job: dict) -> str:
    p = job.get("progress")
    if isinstance(p, dict):
        return str(p.get("message") or json.dumps(p, sort_keys=True))
    return "" if p is None else str(p)


def report_update(job: dict) -> None:
    """Print a job's new state on stderr."""
    print(f"  {job['job_id'][:8]} {job.get('name', '')}: {job['status']} {_progress(job)}".rstrip(),
          file=sys.stderr, flush=True)


def _still_waiting(exc: ParentUnavailable) -> None:
    print(f"{PROG}: {exc}; still waiting", file=sys.stderr)


def submit_all(runner: FLRunner, job_dirs: Sequence[str]) -> list[str]:
    """Submit every job; if the parent refuses one, abort those already submitted and exit 2."""
    job_ids: list[str] = []
    for job_dir in job_dirs:
        try:
            job_ids.append(runner.submit(job_dir))
        except BadRequest as exc:
            for job_id in job_ids:
                runner.abort(job_id, f"{PROG} run: another job of the batch was refused")
            raise SupervisorError(_naming(job_dir, exc), EXIT_USAGE) from None
    return job_ids


def _naming(job_dir: str, exc: Exception) -> str:
    """The error message, prefixed with the job folder unless it already starts with it."""
    return str(exc) if str(exc).startswith(job_dir) else f"{job_dir}: {exc}"


def summary_line(job: dict, job_dir: str) -> str:
    """One job's final line on stdout: id, status, name, folder, and why it failed if it did."""
    line = f"{job['job_id']}  {job['status']}  {job.get('name', '')}  {job_dir}"
    if job.get("exit_code") not in (None, 0) or job.get("signal"):
        line += f"  exit_code={job.get('exit_code')} signal={job.get('signal')}"
    error = [ln for ln in (job.get("error") or "").splitlines() if ln.strip()]
    return line + (f"  error: {error[-1].strip()}" if error else "")


def cmd_run(args: argparse.Namespace, parent_args: list[str]) -> int:
    """Submit the job folders and follow them; exit 0 if all complete."""
    files = Files.of(args.workspace)
    for job_dir in args.job_dirs:  # the parent's own check, before anything is submitted
        try:
            load_job_folder(job_dir)
        except BadRequest as exc:
            raise SupervisorError(_naming(job_dir, exc), EXIT_USAGE) from None
    ensure_parent(files, args, parent_args)
    runner = FLRunner.attach(files.workspace)
    reported: dict[str, dict] = {}  # each job's last reported state, to count those not ended on a timeout

    def on_update(job: dict) -> None:
        reported[job["job_id"]] = job
        report_update(job)

    try:
        with runner.events() as feed:  # subscribe before submitting, so no change is missed
            job_ids = submit_all(runner, args.job_dirs)
            try:
                finals = follow_jobs(runner, feed, job_ids, on_update, args.timeout, on_unavailable=_still_waiting)
            except TimeoutError:
                for job_id, job_dir in zip(job_ids, args.job_dirs):
                    print(summary_line(runner.status(job_id), job_dir))
                pending = sum(not is_final(j["status"]) for j in reported.values())
                raise SupervisorError(f"{pending} job(s) had not ended after {args.timeout:g}s "
                                      f"(they keep running; `flrunner abort JOB_ID` ends one)") from None
    finally:
        runner.stop()
    for job_id, job_dir in zip(job_ids, args.job_dirs):
        print(summary_line(finals[job_id], job_dir))
    return EXIT_OK if all(j["status"] == COMPLETED for j in finals.values()) else EXIT_FAILED


# --- command line ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``flrunner-supervisor`` argument parser (parent options, after ``--``, are split off first)."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Run a flrunner parent under a watchdog, and run jobs on it.",
        epilog="Parent options go after `--`, e.g. `start -w W -- --sites tcp://0.0.0.0:8002 --max-jobs 4`.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", "-w",
                        help=f"the parent's workspace (default: ${WORKSPACE_ENV}, else ./workspace)")
    watchdog = argparse.ArgumentParser(add_help=False)
    for flag, kind, default, text in (
            ("--max-crashes", int, 5, "give up at this many crashes"),
            ("--crash-window", float, 60.0, "within this many seconds"),
            ("--backoff-initial", float, 0.5, "first restart delay (s), doubling at each crash"),
            ("--backoff-max", float, 30.0, "longest restart delay (s)"),
            ("--stop-timeout", float, 60.0, "on stop, SIGKILL the parent and its jobs after this (s)"),
            ("--start-timeout", float, 30.0, "wait this long for the parent to serve (s)")):
        watchdog.add_argument(flag, type=kind, default=default, help=f"{text} (default %(default)s)")

    sp = sub.add_parser("start", parents=[common, watchdog], help="start the parent under a watchdog")
    sp.add_argument("--foreground", action="store_true",
                    help="run the watchdog in this process (a terminal, systemd, supervisord)")
    sp.add_argument("--daemonized", action="store_true", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_start)

    sp = sub.add_parser("stop", parents=[common], help="stop the watchdog and the parent (running jobs are aborted)")
    sp.add_argument("--timeout", type=float, default=90.0, help="wait this long for both to exit (default %(default)s)")
    sp.set_defaults(func=cmd_stop)

    sp = sub.add_parser("status", parents=[common],
                        help="the watchdog and the parent; exit 0 if the parent serves, 3 if not")
    sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("run", parents=[common, watchdog],
                        help="submit jobs (starting the supervisor if needed) and follow them; exit 0 if all complete")
    sp.add_argument("job_dirs", nargs="+", metavar="JOB_DIR")
    sp.add_argument("--timeout", type=float, default=None, help="give up waiting for the jobs after this many seconds")
    sp.set_defaults(func=cmd_run)
    return p


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split the command line at the first ``--``: (our arguments, the parent's options)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``flrunner-supervisor`` command; its exit status."""
    ours, parent_args = split_passthrough(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(ours)
    if parent_args and args.command not in ("start", "run"):
        parser.error(f"{args.command} takes no parent options (after --)")
    if any(a in ("--workspace", "-w") or a.startswith("--workspace=") for a in parent_args):
        parser.error("give --workspace before --, not among the parent options")
    try:
        return args.func(args, parent_args)
    except SupervisorError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except FlrunnerError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
