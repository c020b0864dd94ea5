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
    try:
        boot = read_bootstrap(sys.stdin.buffer)
    except Exception as exc:
        print(f"flrunner job process: bad bootstrap on stdin: {exc}", file=sys.stderr)
        return EXIT_BAD_BOOTSTRAP
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    job_id = boot["job_id"]
    setproctitle.setproctitle(f"flrunner-job: {job_id} {boot['job_name']}")
    logging.basicConfig(stream=sys.stderr, level=boot.get("log_level", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    engine = ServerEngine(job_id, Workspace(boot["workspace"]))

    def parent_lost() -> None:
        engine.abort_signal.trigger("the parent is gone")

    link = Link(boot["endpoint"], engine.on_push, float(boot.get("heartbeat_interval", 2.0)),
                      float(boot.get("parent_loss_timeout", 20.0)), parent_lost)
    engine.link = link

    def on_sigterm(signum: int, frame: object) -> None:
        log.warning("SIGTERM: aborting the job")
        engine.abort_signal.trigger("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    link.start()
    try:
        link.request("hello", {"job_id": job_id, "secret": boot["secret"], "pid": os.getpid()}, timeout=30.0)
        link.authenticated = True
    except FlrunnerError as exc:
        log.error("the parent refused this job process: %s", exc)
        link.close()
        return EXIT_PARENT_REFUSED
    boot.pop("secret", None)
    log.info("job %s (%s) running as pid %d", job_id, boot["job_name"], os.getpid())

    status = JobRunner(engine).run()
    log.info("job %s ends %s", job_id, status.value)
    code = report_final(engine, float(boot.get("parent_loss_timeout", 20.0)))
    link.close()
    return code


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
    be lost by ZeroMQ, libzmq #4660), retrying until acked or the parent is gone for good."""
    deadline = time.monotonic() + patience
    engine.status_timeout = min(patience, 10.0)
    while True:
        if engine.link is not None and engine.link.parent_lost:
            log.error("the parent is gone; the final status %s could not be delivered", engine.run_status.value)
            return EXIT_PARENT_LOST
        try:
            engine.update_job_run_status()
            return EXIT_OK
        except RequestTimeout:
            if time.monotonic() > deadline:
                log.error("the parent never acknowledged the final status")
                return EXIT_PARENT_LOST
        except FlrunnerError as exc:
            log.error("the parent refused the final status: %s", exc)
            return EXIT_PARENT_REFUSED
