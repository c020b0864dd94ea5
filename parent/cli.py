"""``flrunner parent``: the parent's command, plugged into the ``flrunner`` CLI through the
``flrunner.commands`` entry point (flrunner's CLI does not import the parent; see
`flrunner.plugins`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flrunner.admin.cli import (DEFAULT_WORKSPACE_ENV, byte_limit, positive_int, positive_size,  # noqa: F401
                                workspace_of)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``flrunner parent`` to the CLI's subcommands."""
    sp = sub.add_parser("parent", help="run the parent in the foreground (SIGTERM/SIGINT: graceful stop)")
    sp.add_argument("--workspace", "-w", help=f"workspace folder (default: ${DEFAULT_WORKSPACE_ENV}, else ./workspace)")
    sp.add_argument("--sites", default="tcp://127.0.0.1:8002", help="endpoint sites connect to (default %(default)s)")
    sp.add_argument("--kit", help="the parent's start-up kit (flrunner provision): CURVE on the sites socket, "
                                   "only allowlisted site keys admitted")
    sp.add_argument("--jobs", metavar="ENDPOINT", help="job processes connect on this tcp endpoint instead of the "
                                                        "workspace's ipc socket (needs --kit: CURVE)")
    sp.add_argument("--admin", metavar="ENDPOINT", help="also serve remote admin on this tcp endpoint (needs --kit: "
                                                         "CURVE, provisioned admin keys only)")
    sp.add_argument("--max-jobs", type=int, default=8, help="jobs running at once (default %(default)s)")
    sp.add_argument("--launcher", choices=("warm", "cold"), default="warm",
                    help="warm: fork job processes from a template with the runtime imported (fast); "
                         "cold: a fresh interpreter per job (default %(default)s)")
    sp.add_argument("--site-timeout", type=float, default=30.0, help="drop a site silent this long (s)")
    sp.add_argument("--abort-grace", type=float, default=5.0, help="abort request -> SIGTERM (s)")
    sp.add_argument("--term-grace", type=float, default=3.0, help="SIGTERM -> SIGKILL (s)")
    sp.add_argument("--start-timeout", type=float, default=60.0,
                    help="a job process that has not said hello this long is killed: FINISHED:ABNORMAL (s)")
    sp.add_argument("--hung-timeout", type=float, default=30.0,
                    help="a job process without a heartbeat this long is aborted and ends FINISHED:ABNORMAL (s)")
    sp.add_argument("--reconnect-grace", type=float, default=60.0,
                    help="a job process whose parent is gone waits this long for a parent to re-adopt it (s)")
    sp.add_argument("--adopt-window", type=float, default=15.0,
                    help="a restarted parent waits this long for left-over job processes to reconnect (s)")
    sp.add_argument("--schedule-attempts", type=int, default=10,
                    help="tries before a job that cannot get its sites ends FINISHED:CAN_NOT_SCHEDULE")
    sp.add_argument("--schedule-backoff", type=float, default=1.0, help="seconds before the second try; doubled after")
    for who, default in (("site", "64M,1G"), ("admin", "8M,32M"), ("job", "1G,4G")):
        sp.add_argument(f"--{who}-byte-limit", type=byte_limit, default=default, metavar="RATE,BURST",
                        help=f"bytes a second one {who} connection may send on average, and at once; beyond it "
                             f"messages are dropped (K, M, G: KiB, MiB, GiB; default %(default)s)")
    sp.add_argument("--max-job-files", type=positive_int, default=10_000, metavar="N",
                    help="the most files and folders a submitted job folder may hold (default %(default)s)")
    sp.add_argument("--max-job-bytes", type=positive_size, default="1G", metavar="SIZE",
                    help="the most bytes a submitted job folder's files may add up to (K, M, G: KiB, MiB, GiB; "
                         "default %(default)s)")
    sp.add_argument("--job-log-size", type=positive_size, default="64M", metavar="SIZE",
                    help="a job's log (its output and its processes') is rotated at this size, so no job fills the "
                         "disk (K, M, G; at least 64K; default %(default)s)")
    sp.add_argument("--job-log-backups", type=int, default=1, metavar="N",
                    help="rotated logs kept per job (log.txt.1 ... log.txt.N; default %(default)s)")
    sp.add_argument("--log-level", default="INFO")
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``flrunner parent``: run the parent in the foreground until SIGTERM/SIGINT."""
    # Imported here: every ``flrunner`` command registers this one, and most never run it.
    from parent.assembly import Parent
    from parent.config import ParentConfig
    from parent.launchers.process import ProcessLauncher
    from parent.launchers.warm import WarmLauncher

    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = ParentConfig(workspace=workspace_of(args), sites_endpoint=args.sites, max_concurrent_jobs=args.max_jobs,
                       site_timeout=args.site_timeout, abort_grace=args.abort_grace, term_grace=args.term_grace,
                       schedule_attempts=args.schedule_attempts, schedule_backoff=args.schedule_backoff,
                       hung_timeout=args.hung_timeout, start_timeout=args.start_timeout, child_heartbeat_interval=min(2.0, args.hung_timeout / 4),
                       reconnect_grace=args.reconnect_grace, adopt_window=args.adopt_window,
                       parent_loss_timeout=min(20.0, args.reconnect_grace),
                       site_byte_rate=args.site_byte_limit[0], site_byte_burst=args.site_byte_limit[1],
                       admin_byte_rate=args.admin_byte_limit[0], admin_byte_burst=args.admin_byte_limit[1],
                       job_byte_rate=args.job_byte_limit[0], job_byte_burst=args.job_byte_limit[1],
                       log_level=args.log_level, set_process_title=True, install_signal_handlers=True,
                       launcher=WarmLauncher(log_path=os.path.join(workspace_of(args), "template.log"))
                       if args.launcher == "warm" else ProcessLauncher(), kit=args.kit, admin_endpoint=args.admin,
                       jobs_endpoint=args.jobs,
                       max_job_files=args.max_job_files, max_job_bytes=args.max_job_bytes,
                       job_log_max_bytes=args.job_log_size, job_log_backups=args.job_log_backups)
    Parent(cfg).run()
    return 0
