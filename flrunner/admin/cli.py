"""The ``flrunner`` command line: a thin layer over `AdminClient`, `Parent` and `SiteAgent`.

Every listing command takes ``--json`` and then prints one JSON document on stdout. Errors go to
stderr with exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time
from functools import partial
from typing import Any, Sequence

from flrunner import plugins
from flrunner.errors import FlrunnerError, NotFound, ParentUnavailable
from flrunner.protocol import Op
from flrunner.protocol.admin_ops import COMMANDS, Command
from flrunner.status import is_final

DEFAULT_WORKSPACE_ENV = "FLRUNNER_WORKSPACE"


def workspace_of(args: argparse.Namespace) -> str:
    return os.path.abspath(args.workspace or os.environ.get(DEFAULT_WORKSPACE_ENV) or "workspace")


def _admin(args: argparse.Namespace):
    """The local workspace's parent, or a remote one with ``--kit`` (an admin's start-up kit)."""
    from flrunner.admin.client import AdminClient

    if args.kit:
        return AdminClient.with_kit(args.kit, args.parent, timeout=args.timeout)
    if args.parent:
        raise FlrunnerError("--parent names a remote parent's admin endpoint: give the admin's kit with --kit too")
    return AdminClient.for_workspace(workspace_of(args), timeout=args.timeout)


def _runner(args: argparse.Namespace):
    from flrunner.admin.embed import FLRunner

    if args.kit:
        return FLRunner.connect(args.kit, args.parent, timeout=args.timeout)
    return FLRunner.attach(workspace_of(args), timeout=args.timeout)


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _progress(p: Any) -> str:
    if p is None:
        return ""
    if isinstance(p, dict):
        return str(p.get("message") or json.dumps(p, sort_keys=True))
    return str(p)


_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def size(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (KiB, MiB, GiB): ``64M``. Raises ValueError."""
    text = text.strip().upper()
    if text[-1:] in _SIZE_UNITS:
        return int(float(text[:-1]) * _SIZE_UNITS[text[-1]])
    return int(text)


def positive_size(text: str) -> int:
    """A positive size for argparse: bytes with an optional K, M or G suffix."""
    try:
        n = size(text)
        if n > 0:
            return n
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a positive size in bytes with an optional K, M or G suffix "
                                     f"(e.g. 512M), got '{text}'")


def positive_int(text: str) -> int:
    try:
        n = int(text)
        if n > 0:
            return n
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")


def byte_limit(text: str) -> tuple[int, int]:
    """``RATE,BURST``: bytes a second and bytes at once, e.g. ``64M,1G``."""
    try:
        rate, burst = (size(part) for part in text.split(","))
        if rate > 0 and burst > 0:
            return rate, burst
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected RATE,BURST: two sizes in bytes, each with an optional K, M or G "
                                     f"suffix (e.g. 64M,1G), got '{text}'")


# --- commands ---------------------------------------------------------------------------------------
def cmd_site(args: argparse.Namespace) -> int:
    import logging

    from flrunner.site.agent import default_resources, run_site

    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    resources = default_resources()
    if args.gpus is not None:
        resources["num_gpus"] = args.gpus
    return run_site(args.name, args.server, resources, args.site_workspace, args.kit)


def cmd_submit(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        if not args.wait:
            job_id = admin.submit(args.job_dir)
            _print_json({"job_id": job_id}) if args.json else print(job_id)
            return 0
    from flrunner.admin.embed import follow_job

    runner = _runner(args)
    try:
        with runner.events() as feed:
            job_id = runner.submit(args.job_dir)
            if not args.json:
                print(job_id, flush=True)
            try:
                final = follow_job(runner, feed, job_id, None if args.json else _print_update, args.wait_timeout)
            except TimeoutError as exc:
                raise FlrunnerError(str(exc)) from None
        if args.json:
            _print_json({"job_id": job_id, **{k: final[k] for k in ("status", "exit_code", "signal", "error")}})
        else:
            print(final["status"])
        return 0 if final["status"] == "FINISHED:COMPLETED" else 1
    finally:
        runner.stop()


def _print_update(job: dict) -> None:
    line = f"{job['status']} {_progress(job.get('progress'))}".strip()
    print(f"  {job['job_id'][:8]}  {line}", file=sys.stderr, flush=True)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        jobs = admin.jobs()
    if args.json:
        _print_json(jobs)
        return 0
    _table([[j["job_id"], j["name"], j["status"], _ago(j["submit_time"]), j["pid"], _progress(j.get("progress"))]
            for j in jobs], ["JOB ID", "NAME", "STATUS", "SUBMITTED", "PID", "PROGRESS"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        job = admin.status(args.job_id)
    if args.json:
        _print_json(job)
        return 0
    for key in ("job_id", "name", "status", "pid", "exit_code", "signal"):
        print(f"{key + ':':<11}{'-' if job.get(key) is None else job[key]}")
    if job.get("store_error"):
        print(f"{'stored:':<11}not yet: {job['store_error']} (the parent retries until the store takes it)")
    if job.get("progress") is not None:
        print(f"{'progress:':<11}{_progress(job['progress'])}")
    if job.get("error"):
        print("error:\n  " + job["error"].rstrip().replace("\n", "\n  "))
    print("history:")
    for h in job["history"]:
        print(f"  {_ago(h['time'])}  {h['status']:<30} {h['reason']}")
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        job = admin.abort(args.job_id, args.reason)
    if args.json:
        _print_json(job)
    else:
        print(f"{job['job_id']}: {job['status']}" + ("" if is_final(job["status"]) else " (abort requested)"))
    return 0


def cmd_clients(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        clients = admin.clients()
    if args.json:
        _print_json(clients)
        return 0
    _table([[c["name"], _ago(c["login_time"]), _ago(c["last_seen"]), json.dumps(c["props"].get("resources", {}))]
            for c in clients], ["NAME", "LOGGED IN", "LAST SEEN", "RESOURCES"])
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        ps = admin.ps()
    if args.json:
        _print_json(ps)
        return 0

    def mb(b: int | None) -> str:
        return "-" if b is None else f"{b / 2**20:.1f}M"

    def pct(c: float | None) -> str:
        return "-" if c is None else f"{c:.1f}"

    def up(s: float | None) -> str:
        return "-" if s is None else f"{s:.0f}s"

    p = ps["parent"]
    rows = [[p["pid"], "parent", "-", pct(p["cpu_percent"]), mb(p["rss_bytes"]), up(p["uptime_s"])]]
    rows += [[j["pid"], j["job_id"], j["status"], pct(j["cpu_percent"]), mb(j["rss_bytes"]), up(j["uptime_s"])]
             for j in ps["jobs"]]
    _table(rows, ["PID", "JOB", "STATUS", "CPU%", "RSS", "UPTIME"])
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from flrunner.workspace import Workspace

    if args.kit:
        raise FlrunnerError("logs are read from the parent's workspace; over remote admin they are not available yet")
    ws = Workspace(workspace_of(args))
    job_id, final = args.job_id, True
    try:
        with _admin(args) as admin:
            job = admin.status(args.job_id)
        job_id, final = job["job_id"], is_final(job["status"])
    except ParentUnavailable:
        if args.follow:
            raise
    path = ws.get_app_log_file_path(job_id)
    if not os.path.exists(path):
        raise NotFound(f"no log for job '{args.job_id}' in {ws.get_root_dir()} ({path})")
    # Rotated parts first, oldest first (log.txt.N ... log.txt.1), then the current log.
    rotated = sorted((p for p in glob.glob(glob.escape(path) + ".*") if p.rsplit(".", 1)[-1].isdigit()),
                     key=lambda p: -int(p.rsplit(".", 1)[-1]))
    for older in rotated:
        with open(older, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
    f = open(path, "rb")
    try:
        while True:
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if not args.follow or final:
                return 0
            try:
                if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:  # rotated: read on in the new file
                    f.close()
                    f = open(path, "rb")
                    continue
            except FileNotFoundError:
                pass
            time.sleep(0.2)
            with _admin(args) as admin:
                final = is_final(admin.status(job_id)["status"])
    finally:
        f.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from flrunner.admin.demo import run_demo

    return run_demo(sites=args.sites, rounds=args.rounds, keep=args.keep, secure=args.secure)


def cmd_provision(args: argparse.Namespace) -> int:
    from flrunner.security import provision

    reports = provision(args.out, sites=args.site, admins=args.admin, endpoint=args.endpoint,
                        admin_endpoint=args.admin_endpoint)
    if args.json:
        _print_json({"out": os.path.abspath(args.out), "participants": [r.to_json() for r in reports]})
        return 0
    _table([[r.status.value, r.name, r.role.value, r.endpoint, str(r.kit)] for r in reports],
           ["STATUS", "NAME", "ROLE", "ENDPOINT", "KIT"])
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from flrunner.security import Status, revoke

    report = revoke(args.out, args.name, reason=args.reason)
    if args.json:
        _print_json({"out": os.path.abspath(args.out), "reason": args.reason, **report.to_json()})
        return 0
    allowlist = os.path.join(os.path.abspath(args.out), "parent", "allowlist.json")
    if report.status is Status.ALREADY_REVOKED:
        print(f"{report.role.value} '{report.name}' was already revoked; nothing changed")
    else:
        print(f"revoked {report.role.value} '{report.name}': removed from {allowlist}, recorded in revoked.json; "
              f"its kit is kept at {report.kit}")
    return 0


def cmd_admin_op(op: Op, command: Command, args: argparse.Namespace) -> int:
    """An admin op that is a command (`flrunner.protocol.admin_ops.COMMANDS`) with no code of its
    own here: its answer (or the field it names) printed as JSON or as ``key: value`` lines."""
    fields = {name: getattr(args, name) for name in op.fields}
    with _admin(args) as admin:
        body = admin.call(op, **fields)
    result = body[command.result] if command.result else body
    if args.json:
        _print_json(result)
    elif isinstance(result, dict):
        for key, value in sorted(result.items()):
            print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    elif isinstance(result, list) and all(isinstance(r, dict) for r in result) and result:
        header = sorted({k for r in result for k in r})
        _table([[r.get(k) for k in header] for r in result], [k.upper() for k in header])
    else:
        print(result)
    return 0


def _add_fields(sp: argparse.ArgumentParser, op: Op, command: Command) -> None:
    """The op's fields as arguments: positional ones as the command says, the others as options."""
    for name, spec in op.fields.items():
        kind = next((t for t in spec.types if t in (int, float, str)), str)
        if name in command.positional:
            sp.add_argument(name, type=kind)
        else:
            sp.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, required=spec.required)


# --- parser ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flrunner", description="Server-side job runtime for federated learning.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Commands of the packages above flrunner (``flrunner parent``), through their entry points.
    for ep in plugins.group(plugins.COMMANDS):
        ep.load()(sub)

    def admin_cmd(name: str, help: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--workspace", "-w",
                        help=f"the parent's workspace (default: ${DEFAULT_WORKSPACE_ENV}, else ./workspace)")
        sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the parent's reply")
        sp.add_argument("--kit", help="an admin's start-up kit (flrunner provision --admin): talk to a remote parent "
                                      "over CURVE instead of the local workspace's")
        sp.add_argument("--parent", metavar="ENDPOINT", help="the remote parent's admin endpoint (default: the kit's)")
        if json_flag:
            sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        return sp


    sp = sub.add_parser("site", help="run a site agent in the foreground")
    sp.add_argument("--name", help="the site's name (from the kit with --kit)")
    sp.add_argument("--server", help="the parent's sites endpoint, e.g. tcp://127.0.0.1:8002 (default: the kit's)")
    sp.add_argument("--kit", help="the site's start-up kit (flrunner provision): CURVE keys, name, endpoint")
    sp.add_argument("--gpus", type=int, help="number of GPUs to declare")
    sp.add_argument("--workspace", "-w", dest="site_workspace",
                    help="where job apps are unpacked (default ./flrunner-site-NAME)")
    sp.add_argument("--log-level", default="INFO")
    sp.set_defaults(func=cmd_site)

    sp = admin_cmd("submit", "submit a job folder; prints the job id")
    sp.add_argument("job_dir")
    sp.add_argument("--wait", action="store_true", help="return when the job ends; exit 0 only for FINISHED:COMPLETED")
    sp.add_argument("--wait-timeout", type=float, default=None, help="give up waiting after this many seconds")
    sp.set_defaults(func=cmd_submit)
    admin_cmd("jobs", "list jobs").set_defaults(func=cmd_jobs)
    sp = admin_cmd("status", "one job with its status history")
    sp.add_argument("job_id")
    sp.set_defaults(func=cmd_status)
    sp = admin_cmd("abort", "abort a job")
    sp.add_argument("job_id")
    sp.add_argument("--reason", default=None)
    sp.set_defaults(func=cmd_abort)
    admin_cmd("clients", "the site registry").set_defaults(func=cmd_clients)
    admin_cmd("ps", "the parent and every job process: pid, job, status, cpu, rss, uptime").set_defaults(func=cmd_ps)
    # Every other admin op that is a command: its fields as arguments, its answer printed.
    for op, command in COMMANDS.items():
        if not command.custom:
            sp = admin_cmd(op.name, op.doc)
            _add_fields(sp, op, command)
            sp.set_defaults(func=partial(cmd_admin_op, op, command))
    sp = admin_cmd("logs", "print a job's log", json_flag=False)
    sp.add_argument("job_id")
    sp.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    sp.set_defaults(func=cmd_logs)

    sp = sub.add_parser("demo", help="a parent, a few sites and a sample job, end to end, in a temporary workspace")
    sp.add_argument("--sites", type=int, default=3)
    sp.add_argument("--rounds", type=int, default=5)
    sp.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    sp.add_argument("--secure", action="store_true", help="a provisioned deployment: CURVE sites, remote admin with "
                                                          "an admin kit, end-to-end encrypted model updates")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("provision", help="create CURVE keys and start-up kits for a parent, its sites and admins",
                        description="Create (or extend) an FL project in DIR: DIR/parent/ (the parent's keys and "
                                    "allowlist) and one kit DIR/NAME/ per site and admin. Existing kits are never "
                                    "changed; re-requesting an existing participant unchanged is a no-op.")
    sp.add_argument("--out", required=True, metavar="DIR", help="the project directory (created 0700)")
    sp.add_argument("--site", action="append", default=[], metavar="NAME", help="a site to provision (repeatable)")
    sp.add_argument("--admin", action="append", default=[], metavar="NAME", help="an admin to provision (repeatable)")
    sp.add_argument("--endpoint", default=None,
                    help="the parent's sites endpoint written into new site kits (default: the project's, "
                         "else tcp://127.0.0.1:8002)")
    sp.add_argument("--admin-endpoint", default=None,
                    help="the parent's admin endpoint written into new admin kits (default: the project's, "
                         "else --endpoint)")
    sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    sp.set_defaults(func=cmd_provision)

    sp = sub.add_parser("revoke", help="remove a site or admin from the parent's allowlist (its kit is kept)")
    sp.add_argument("--out", required=True, metavar="DIR", help="the project directory")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--reason", default=None, help="recorded in DIR/parent/revoked.json")
    sp.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    sp.set_defaults(func=cmd_revoke)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FlrunnerError as exc:
        print(f"flrunner {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
