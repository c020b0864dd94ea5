"""The parent's settings. Every timeout and policy is a parameter so tests can drive them fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from parent.launchers.base import Launcher

DEFAULT_SITES_ENDPOINT = "tcp://127.0.0.1:8002"


@dataclass
class ParentConfig:
    """Settings of one parent.

    Attributes:
        workspace: the workspace folder (created if missing).
        sites_endpoint: where sites connect (``tcp://HOST:PORT``; ``PORT`` may be ``*``).
        max_concurrent_jobs: jobs running at once; further submissions wait in ``SUBMITTED``.
        site_timeout: a site silent this long is dropped from the registry.
        abort_grace: after asking a job to abort, how long before SIGTERM to its process group.
        term_grace: after SIGTERM, how long before SIGKILL.
        start_timeout: a job process that has not said hello by then is killed (``FINISHED:ABNORMAL``).
        hung_timeout: a job process silent this long (no heartbeat: deadlocked, SIGSTOPped) is
            aborted with escalation and ends ``FINISHED:ABNORMAL``.
        child_heartbeat_interval: how often a job process heartbeats to the parent.
        parent_loss_timeout: a job process that has not heard from its parent this long ends itself.
        reconnect_grace: a job process whose parent is gone keeps its job going this long, waiting
            for a parent to come back on the workspace and re-adopt it; then it aborts and exits.
        adopt_window: a restarted parent waits this long for job processes left running by its
            predecessor to reconnect; new jobs are scheduled after that (or once all are back).
        subscriber_ttl: an admin subscription not renewed (ping) within this is dropped.
        housekeeping_interval: how often silent sites and subscribers are expired, workspace files
            deleted while the parent runs are put back, and the WAL checkpoint is considered.
        max_msg_size: largest frame accepted on the sites and jobs sockets (ZMQ_MAXMSGSIZE).
        max_admin_msg_size: largest frame accepted on the admin socket.
        schedule_attempts: tries to schedule a job before it ends ``FINISHED:CAN_NOT_SCHEDULE``.
        schedule_backoff: seconds before the second try; doubled for each later one.
        schedule_backoff_max: the longest wait between tries.
        max_sites: the most sites logged in at once; a login beyond it is refused.
        max_queued_jobs: the most jobs waiting (``SUBMITTED``); a submission beyond it is refused.
        site_rate: messages a second one site peer may send on average (bursts of twice that);
            beyond it they are dropped and counted.
        admin_rate: the same for one admin peer.
        site_byte_rate: bytes a second one site peer may send on average (every frame counted), so
            a site cannot hog the parent with large messages while under ``site_rate``; beyond it
            messages are dropped and counted. 64 MiB/s is more than most sites' uplinks.
        site_byte_burst: the most bytes a rested site peer may send at once: 1 GiB, the default
            ``max_msg_size``, so a whole model of the largest frame accepted passes at once.
        admin_byte_rate: the same as ``site_byte_rate`` for one admin peer: 8 MiB/s, where
            admin requests are a few hundred bytes (a job folder travels as a path).
        admin_byte_burst: 32 MiB, 32 requests of the largest size ``max_admin_msg_size`` allows.
        job_byte_rate: the same for one job process connection. Generous, as a job legitimately
            sends whole models (an aux request is sent once whatever the number of its sites):
            1 GiB/s is two thirds of what one job moves through the parent in a tight loop of
            10 MB aux requests to one site on 2 cores (``scripts/bench.py``), so only a job
            streaming gigabytes without pause, past its burst, meets it.
        job_byte_burst: 4 GiB: several rounds of the largest models without waiting.
        reservation_ttl: a site releases a resource reservation not used by a job start within this.
        site_request_timeout: how long the parent waits for a site to answer a job-control request.
        kit: the parent's start-up kit (``flrunner provision``): the sites socket then uses CURVE, and
            only allowlisted site keys connect, each as its own name.
        admin_endpoint: a tcp endpoint for remote admin (``tcp://HOST:PORT``), or None for local
            admin only. Needs ``kit``: the socket uses CURVE and admits provisioned admin keys only.
        jobs_endpoint: a tcp endpoint for job processes (``tcp://HOST:PORT``), instead of the
            workspace's ipc socket: for job processes on other machines (cluster launchers). Needs
            ``kit``: the jobs socket then uses CURVE (encrypted; job processes know the parent by
            its key) and each job process still proves its per-job secret. Use a fixed port for
            re-adoption: a job process reconnects to the endpoint it was given.
        max_upload_size: largest job folder a remote admin may upload (packed, bytes); the remote
            admin socket's ZMQ_MAXMSGSIZE.
        max_upload_unpacked: largest an uploaded job folder may unpack to (bytes).
        launcher: starts job processes; the cold `ProcessLauncher` if None.
        set_process_title: rename the process ``flrunner-parent: <workspace>`` (off when embedded).
        install_signal_handlers: SIGTERM/SIGINT stop the parent gracefully (main thread only).
        log_to_stderr: also log to stderr (the foreground CLI).
        max_job_files: the most files and folders a submitted job folder may hold; a larger one
            is refused at submit, before anything is copied (``parent.jobs.folder_copy``).
        max_job_bytes: the most bytes the files of a submitted job folder may add up to (symlinked
            files included); a larger one is refused at submit, before anything is copied.
        job_log_max_bytes: a job's log (its output and that of every process it starts) is rotated
            at this size (``log.txt`` -> ``log.txt.1``), so no job fills the workspace with output.
        job_log_backups: rotated logs kept per job; a job's logs take at most
            ``job_log_max_bytes * (job_log_backups + 1)``.
        wal_checkpoint_quiet: once the job store was written and then nothing was written for this
            many seconds, its WAL (``jobs.db-wal``) is folded into ``jobs.db`` and truncated to 0
            bytes, so the file does not keep the size of the last burst.
    """

    workspace: str
    sites_endpoint: str = DEFAULT_SITES_ENDPOINT
    max_concurrent_jobs: int = 8
    site_timeout: float = 30.0
    abort_grace: float = 5.0
    term_grace: float = 3.0
    start_timeout: float = 60.0
    hung_timeout: float = 30.0
    child_heartbeat_interval: float = 2.0
    parent_loss_timeout: float = 20.0
    reconnect_grace: float = 60.0
    adopt_window: float = 15.0
    subscriber_ttl: float = 30.0
    housekeeping_interval: float = 1.0
    max_msg_size: int = 1 << 30
    max_admin_msg_size: int = 1 << 20
    reservation_ttl: float = 30.0
    max_sites: int = 100_000
    max_queued_jobs: int = 10_000
    site_rate: float = 2000.0
    admin_rate: float = 500.0
    site_byte_rate: float = 64 << 20
    site_byte_burst: float = 1 << 30
    admin_byte_rate: float = 8 << 20
    admin_byte_burst: float = 32 << 20
    job_byte_rate: float = 1 << 30
    job_byte_burst: float = 4 << 30
    schedule_attempts: int = 10
    schedule_backoff: float = 1.0
    schedule_backoff_max: float = 30.0
    site_request_timeout: float = 10.0
    launcher: Optional[Launcher] = None
    kit: Optional[str] = None
    admin_endpoint: Optional[str] = None
    jobs_endpoint: Optional[str] = None
    max_upload_size: int = 64 << 20
    max_upload_unpacked: int = 256 << 20
    set_process_title: bool = False
    install_signal_handlers: bool = False
    log_to_stderr: bool = False
    log_level: str = "INFO"
    on_started: Optional[Callable[[], None]] = field(default=None, repr=False)
    max_job_files: int = 10_000
    max_job_bytes: int = 1 << 30
    job_log_max_bytes: int = 64 << 20
    job_log_backups: int = 1
    wal_checkpoint_quiet: float = 10.0
