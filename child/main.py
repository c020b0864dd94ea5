"""``python -m child [--job-id ID --name NAME]``: one job process.

The arguments are informational only (they reserve room for the process title). The parent writes the bootstrap (job id, endpoint, per-job secret, settings) as one msgpack map
to this process's stdin and closes it; nothing secret is on the command line or in the
environment.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import setproctitle

from flrunner.errors import FlrunnerError, RequestTimeout
from flrunner.wire import unpack
from flrunner.workspace import Workspace

from .engine import ServerEngine
from flrunner.link import Link
from .runner import JobRunner

log = logging.getLogger("child")

EXIT_OK = 0
EXIT_BAD_BOOTSTRAP = 2
EXIT_PARENT_REFUSED = 3
EXIT_PARENT_LOST = 4

_REQUIRED = {"job_id": str, "job_name": str, "secret": str, "endpoint": str, "workspace": str}


def read_bootstrap(stream) -> dict:
    raw = stream.read(1 << 20)
    boot = unpack(raw, 1 << 20)
    if not isinstance(boot, dict):
        raise ValueError("bootstrap is not a map")
    for key, typ in _REQUIRED.items():
        if not isinstance(boot.get(key), typ):
            raise ValueError(f"bootstrap field '{key}' is missing or not {typ.__name__}")
    return boot


def main() -> int:
    """Read the bootstrap from stdin and run the job; returns the exit code."""
    try:
        boot = read_bootstrap(sys.stdin.buffer)
    except Exception as exc:
        print(f"flrunner job process: bad bootstrap on stdin: {exc}", file=sys.stderr)
        return EXIT_BAD_BOOTSTRAP
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return run_job(boot)


def run_job(boot: dict) -> int:
    """Run one job in this process, given its bootstrap (a warm launcher calls this after a fork)."""
    job_id = boot["job_id"]
    setproctitle.setproctitle(f"flrunner-job: {job_id} {boot['job_name']}")
    logging.basicConfig(stream=sys.stderr, level=boot.get("log_level", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = ServerEngine(job_id, Workspace(boot["workspace"]))
    loss_timeout = float(boot.get("parent_loss_timeout", 20.0))
    orphan_grace = float(boot.get("orphan_grace", 10.0))

    def parent_lost() -> None:
        # Ask the workflows to stop; if they do not within the grace, leave anyway, so a job whose
        # parent is gone for good never runs on unsupervised.
        engine.abort_signal.trigger("the parent is gone")
        watchdog = threading.Timer(orphan_grace, _exit_orphaned, args=(link,))
        watchdog.daemon = True
        watchdog.start()

    link = Link(boot["endpoint"], engine.on_push, float(boot.get("heartbeat_interval", 2.0)), loss_timeout,
                parent_lost)
    engine.link = link

    def on_sigterm(signum: int, frame: object) -> None:
        log.warning("SIGTERM: aborting the job")
        engine.abort_signal.trigger("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    link.start()
    try:
        link.request("hello", {"job_id": job_id, "secret": boot["secret"], "pid": os.getpid()}, timeout=30.0)
    except FlrunnerError as exc:
        log.error("the parent refused this job process: %s", exc)
        link.close()
        return EXIT_PARENT_REFUSED
    link.last_heard = time.monotonic()  # the loss clock starts once the parent has answered
    link.authenticated = True
    boot.pop("secret", None)
    log.info("job %s (%s) running as pid %d", job_id, boot["job_name"], os.getpid())

    status = JobRunner(engine, resume=bool(boot.get("resume"))).run()
    log.info("job %s ends %s", job_id, status.value)
    code = report_final(engine, loss_timeout)
    link.close()
    return code


def _exit_orphaned(link: Link) -> None:
    if link.parent_lost:
        log.error("the parent has been gone for too long; the job process exits")
        logging.shutdown()
        os._exit(EXIT_PARENT_LOST)


def run() -> None:
    """Entry point: run the job, then leave at once.

    ``os._exit`` skips waiting for non-daemon threads a job's components may have left running:
    once the parent has acknowledged the final status there is nothing left to do.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def report_final(engine: ServerEngine, patience: float) -> int:
    """Send the final status and wait for the parent's ack (a message queued just before exit can
    be lost by ZeroMQ, libzmq #4660), retrying until acked or ``patience`` runs out.

    It is always tried at least once, even when the parent looked gone: a parent that was only
    slow must still get the job's outcome.
    """
    deadline = time.monotonic() + patience
    engine.status_timeout = min(patience, 10.0)
    while True:
        try:
            engine.update_job_run_status()
            return EXIT_OK
        except RequestTimeout:
            if time.monotonic() > deadline:
                log.error("the parent never acknowledged the final status %s", engine.run_status.value)
                return EXIT_PARENT_LOST
        except FlrunnerError as exc:
            if engine.progress is not None:
                log.warning("the parent refused the final status with its progress (%s); sending it without", exc)
                engine.progress = None
                continue
            log.error("the parent refused the final status: %s", exc)
            return EXIT_PARENT_REFUSED
