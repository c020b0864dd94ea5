"""``python -m child [--job-id ID --name NAME]``: one job process.

The arguments are informational only (they reserve room for the process title). The parent
writes the bootstrap (job id, endpoint, per-job secret, settings) as one msgpack map to this
process's stdin and closes it; nothing secret is on the command line or in the environment.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import setproctitle

from child.engine import ServerEngine
from child.port import parent_pushes
from child.runner import JobRunner
from child.session import EXIT_PARENT_LOST, ParentSession
from child.status import StatusReporter
from flrunner.aux.secure import KeyPair
from flrunner.errors import FlrunnerError, ParentUnavailable, RequestTimeout
from flrunner.fl_signal import Signal
from flrunner.transport.wire import unpack
from flrunner.util.output_capture import OutputCapture
from flrunner.workspace import Workspace

log = logging.getLogger("child")

EXIT_OK = 0
EXIT_BAD_BOOTSTRAP = 2
EXIT_PARENT_REFUSED = 3

#: A job's log rotates at this size unless the parent says otherwise (``--job-log-size``).
DEFAULT_LOG_MAX_BYTES = 64 << 20

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
    """Run one job in this process, given its bootstrap (a warm launcher calls this after a fork).

    Its output (and that of every process it starts) goes to its log through an `OutputCapture`,
    which bounds the log's size (``log_max_bytes``, ``log_backups`` in the bootstrap).
    """
    workspace = Workspace(boot["workspace"])
    capture = OutputCapture(workspace.get_app_log_file_path(boot["job_id"]),
                            int(boot.get("log_max_bytes", DEFAULT_LOG_MAX_BYTES)), int(boot.get("log_backups", 1)))
    capture.start()
    try:
        return _run_job(boot, workspace)
    finally:
        logging.shutdown()
        capture.stop()


def _run_job(boot: dict, workspace: Workspace) -> int:
    job_id = boot["job_id"]
    setproctitle.setproctitle(f"flrunner-job: {job_id} {boot['job_name']}")
    logging.basicConfig(stream=sys.stderr, level=boot.get("log_level", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    session, engine = assemble(boot, workspace)

    def on_sigterm(signum: int, frame: object) -> None:
        log.warning("SIGTERM: aborting the job")
        engine.abort_signal.trigger("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        session.start()
    except FlrunnerError as exc:
        log.error("the parent refused this job process: %s", exc)
        session.close()
        return EXIT_PARENT_REFUSED
    boot.pop("secret", None)
    log.info("job %s (%s) running as pid %d", job_id, boot["job_name"], os.getpid())

    status = JobRunner(engine, engine.status_reporter, resume=bool(boot.get("resume"))).run()
    log.info("job %s ends %s", job_id, status.value)
    code = report_final(engine.status_reporter)
    session.close()
    return code


def assemble(boot: dict, workspace: Workspace) -> tuple[ParentSession, ServerEngine]:
    """The job process's objects, each given what it needs as it is made.

    The session (the engine's port to the parent) and the engine meet through what both are
    given: the dispatcher of the parent's pushes (received by the session, served by the engine),
    the job's abort signal (the session triggers it when no parent takes the job back), and the
    sealing key pair (the session's hello carries its public half).
    """
    pushes = parent_pushes()
    abort_signal = Signal()
    keys = KeyPair()
    session = ParentSession(boot, pushes, abort_signal, sealing_key=keys.public)
    engine = ServerEngine(boot["job_id"], workspace, session, pushes=pushes, keys=keys, abort_signal=abort_signal,
                          status_patience=session.reconnect_grace)
    return session, engine


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


def report_final(status: StatusReporter) -> int:
    """Send the final status and wait for the parent's ack; the process's exit code.

    `StatusReporter.report_final` retries while the parent is away (up to the reconnect grace),
    so a restarted parent still gets the outcome.
    """
    try:
        status.report_final()
        return EXIT_OK
    except (RequestTimeout, ParentUnavailable) as exc:
        log.error("the parent never acknowledged the final status %s: %s", status.run_status.value, exc)
        return EXIT_PARENT_LOST
    except FlrunnerError as exc:
        log.error("the parent refused the final status: %s", exc)
        return EXIT_PARENT_REFUSED
