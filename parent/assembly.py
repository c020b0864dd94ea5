"""`Parent`: the parent process put together — its workspace, job store, site registry, sockets,
job domain and handlers, built in order on `start`, served by the event loop
(`parent.loop.loop.EventLoop`) on `run`, and released in order when it stops.

Graceful stop (SIGTERM, SIGINT, the admin ``shutdown`` op, or `Parent.stop` from another
thread): the parent refuses new submissions, aborts every running job (ask, then SIGTERM, then
SIGKILL after the configured graces), records each as ``FINISHED:ABORTED`` with the reason
"parent shutdown", leaves queued jobs ``SUBMITTED`` for the next start, and exits. A second
signal skips the graces and SIGKILLs the job process groups at once.

The parent is also the domain's events port (`parent.events.Events`): it passes each event of
the job domain and the site registry to whom it concerns — the status feeds, the job process's
connection, the requests waiting on a job or a site, the scheduler.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

import zmq

from flrunner.workspace import Workspace
from parent.config import ParentConfig
from parent.edge.awaited import AwaitedReplies
from parent.edge.job_connections import JobConnections
from parent.edge.site_requests import SiteGateway
from parent.edge.sockets import Sockets, open_sockets
from parent.edge.workspace_watch import WorkspaceWatch, lock_workspace, read_parent_info, write_parent_info
from parent.handlers.admin import AdminService
from parent.handlers.aux_routing import AuxService
from parent.handlers.job_process import JobProcessService
from parent.handlers.sites import SitesService
from parent.housekeeping import Housekeeping
from parent.jobs.held_writes import HeldWrites
from parent.jobs.lifecycle import JobLifecycle
from parent.jobs.running import RunningJobs
from parent.jobs.site_apps import SiteApps
from parent.jobs.store import JobRecord, JobStore, QuietCheckpoints
from parent.launchers.base import Launcher
from parent.launchers.process import ProcessLauncher
from parent.loop.loop import EventLoop
from parent.loop.offload import Offload
from parent.loop.timers import StallClock, Timers
from parent.sites.registry import SiteRegistry

log = logging.getLogger("parent")

#: Job folders read and copied at once (each on a thread of the submissions lane).
SUBMISSION_WORKERS = 4


class Parent:
    """One parent: construct, `start` (binds and recovers), then `run` the loop until stopped.

    Args:
        config: the settings; see `ParentConfig`.
    """

    store: JobStore
    held: HeldWrites
    checkpoints: QuietCheckpoints
    registry: SiteRegistry
    running: RunningJobs
    connections: JobConnections
    awaited: AwaitedReplies
    launcher: Launcher
    copies: Offload
    reaper: Offload
    gateway: SiteGateway
    site_apps: SiteApps
    lifecycle: JobLifecycle
    admin_service: AdminService
    job_service: JobProcessService
    sites_service: SitesService
    aux_service: AuxService

    def __init__(self, config: ParentConfig) -> None:
        self.config = config
        self.ws = Workspace(config.workspace)
        #: The loop's clock: monotonic, without the time the parent itself was stalled.
        self.clock = StallClock()
        self.timers = Timers(self.clock)
        self.loop = EventLoop(self.clock, self.timers, max_sleep=config.housekeeping_interval)
        self.ctx: zmq.Context | None = None
        self.sockets: Sockets | None = None
        self.stopped = threading.Event()
        self._started = False
        self._lock_fd: int | None = None
        self._log_handler: logging.Handler | None = None
        self._info: dict | None = None
        self.workspace_watch: WorkspaceWatch | None = None

    @property
    def admin_endpoint(self) -> str:
        """Where local admin clients connect (once started)."""
        assert self.sockets is not None
        return self.sockets.admin.endpoint

    @property
    def sites_endpoint(self) -> str:
        """Where sites connect (once started)."""
        assert self.sockets is not None
        return self.sockets.sites.endpoint

    # --- set-up ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the workspace, open the store, settle leftovers, bind the sockets, publish parent.json.

        On failure everything taken so far is released (lock, sockets, store), so a later start
        on the same workspace can succeed.

        Raises:
            WorkspaceBusy: another parent runs on this workspace.
            WorkspaceError: the workspace cannot be used (not a directory, read-only, a path too
                long); the message names the path.
            JobStoreError: the job store cannot be opened (not a database, corrupt, read-only).
            EndpointError: an endpoint cannot be bound (e.g. the sites port is taken).
        """
        try:
            self._start()
        except BaseException:
            self._release()
            raise

    def _start(self) -> None:
        cfg = self.config
        self.ws.ensure()
        self._lock_fd = lock_workspace(self.ws)
        self._setup_logging()
        if cfg.set_process_title:
            import setproctitle

            setproctitle.setproctitle(f"flrunner-parent: {self.ws.get_root_dir()}")
        self.ctx = zmq.Context()
        self.store = JobStore(self.ws.get_job_store_path())
        self.held = HeldWrites(self.store, self.timers, events=self)
        self.checkpoints = QuietCheckpoints(self.store, cfg.wal_checkpoint_quiet)
        self.registry = SiteRegistry(cfg.site_timeout, clock=self.clock, events=self)
        self.running = RunningJobs(self.timers.clock)
        self.connections = JobConnections(self.running)
        self.awaited = AwaitedReplies(self.timers)
        self.sockets = sockets = open_sockets(self.ctx, cfg, self.ws, self.registry, self.connections, self.awaited)
        for socket in sockets.all():
            self.loop.serve(socket)
        self.launcher = cfg.launcher or ProcessLauncher()
        self.launcher.bind_loop(self.loop.watch_fd, self.loop.unwatch_fd)
        # Two lanes: copying a large job folder must delay neither a crash-restart nor a kill.
        self.copies = self.loop.lane(SUBMISSION_WORKERS, "submissions")
        self.reaper = self.loop.lane(2, "reaper")
        self.gateway = SiteGateway(sockets.sites, self.registry, self.awaited)
        self.site_apps = SiteApps(self.gateway, self.ws, cfg.reservation_ttl, cfg.site_request_timeout)
        self.lifecycle = JobLifecycle(cfg, self.ws, self.held, self.launcher, self.timers, self.running,
                                      self.registry, self.site_apps, self, self.loop, self.reaper,
                                      sockets.jobs.endpoint, sockets.server_key)
        self.admin_service = AdminService(sockets.admin, self.lifecycle, self.registry, cfg.subscriber_ttl,
                                          self.stop, self.ws.get_root_dir(), self.copies, clock=self.clock,
                                          remote=sockets.remote_admin)
        self.job_service = JobProcessService(sockets.jobs, self.lifecycle, self.registry, self.connections)
        self.sites_service = SitesService(sockets.sites, self.registry, sockets.site_access,
                                          heartbeat_interval=max(0.2, cfg.site_timeout / 4), running=self.running,
                                          max_sites=cfg.max_sites)
        self.aux_service = AuxService(sockets.jobs, sockets.sites, self.connections, self.running,
                                      self.registry, self.gateway, self.site_apps, self.awaited, self.timers,
                                      login_grace=cfg.adopt_window + cfg.site_timeout / 4)
        try:
            self.lifecycle.recover()
        except sqlite3.DatabaseError as exc:  # a store that opened but whose pages are damaged
            raise self.store.error(exc) from None
        self._write_info()
        self.workspace_watch = WorkspaceWatch(self.ws, self._write_info, self._lock_fd,
                                              [sockets.jobs, sockets.admin])
        if cfg.install_signal_handlers:
            self.loop.install_signals()
        Housekeeping(self.timers, cfg.housekeeping_interval, self.registry, self.sites_service, self.admin_service,
                     sockets.all(), self.lifecycle.launching, self.workspace_watch, self.checkpoints,
                     sockets.site_gate, sockets.admin_gate).start()
        self._started = True
        log.info("parent %d serving workspace %s: sites %s, jobs %s, admin %s%s", os.getpid(),
                 self.ws.get_root_dir(), sockets.sites.endpoint, sockets.jobs.endpoint, sockets.admin.endpoint,
                 f", remote admin {sockets.remote_admin.endpoint}" if sockets.remote_admin is not None else "")
        self.lifecycle.start()
        if cfg.on_started:
            cfg.on_started()

    def _setup_logging(self) -> None:
        with self.ws.os_errors("open", self.ws.get_parent_log_path()):
            handler = logging.FileHandler(self.ws.get_parent_log_path())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in ("parent", "flrunner"):
            lg = logging.getLogger(name)
            lg.addHandler(handler)
            lg.setLevel(self.config.log_level)
        self._log_handler = handler

    def _write_info(self) -> None:
        """Publish parent.json (at start, and again if it was deleted while running: same content)."""
        if self._info is None:
            sockets = self.sockets
            assert sockets is not None
            self._info = {"pid": os.getpid(), "workspace": self.ws.get_root_dir(), "sites": sockets.sites.endpoint,
                          "jobs": sockets.jobs.endpoint, "admin": sockets.admin.endpoint,
                          "remote_admin": sockets.remote_admin.endpoint if sockets.remote_admin is not None else None,
                          "started": time.time()}
        path = self.ws.get_parent_info_path()
        with self.ws.os_errors("write", path):
            write_parent_info(path, self._info)

    # --- run and stop ---------------------------------------------------------------------------------
    def stop(self, reason: str = "stop requested", force: bool = False) -> None:
        """Ask the loop to stop gracefully; safe from any thread."""
        self.loop.stop(reason, force)

    def run(self) -> None:
        """Serve until stopped; then clean up. Calls `start` first if needed."""
        if not self._started:
            self.start()
        try:
            self.loop.run(self.lifecycle)
        finally:
            if self.lifecycle.busy:  # the loop failed: leave no job process without a parent
                log.error("the loop ended with %d job(s) running; killing their process groups", len(self.running))
                self.lifecycle.kill_all()
            self._release()

    def _release(self) -> None:
        try:
            if read_parent_info(self.ws).get("pid") == os.getpid():
                os.unlink(self.ws.get_parent_info_path())
        except OSError:
            pass
        if self.sockets is not None:
            self.sockets.close()
        self.loop.close()  # its lanes first finish their queued work (killing what jobs left)
        if getattr(self, "launcher", None) is not None:
            self.launcher.close()
        if getattr(self, "store", None) is not None:
            self.store.close()
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        if self._started:  # a failed start says why in one line; "stopped" would only confuse it
            log.info("parent %d stopped", os.getpid())
        if self._log_handler is not None:
            for name in ("parent", "flrunner"):
                logging.getLogger(name).removeHandler(self._log_handler)
            self._log_handler.close()
        if self.workspace_watch is not None:
            self.workspace_watch.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self.stopped.set()

    # --- the events port (`parent.events.Events`) -------------------------------------------------------
    def status_changed(self, rec: JobRecord) -> None:
        self.admin_service.publish(rec)

    def ask_to_abort(self, job_id: str, reason: str) -> bool:
        return self.job_service.ask_to_abort(job_id, reason)

    def job_ended(self, job_id: str, how: str, restarting: bool) -> None:
        self.connections.forget(job_id)
        self.awaited.fail_job(job_id, f"job {job_id}'s process {how}")
        self.aux_service.job_ended(job_id)

    def writes_stored(self, rec: JobRecord) -> None:
        self.lifecycle.writes_stored(rec)

    def sites_changed(self, base: int, revision: int, changes: list[dict]) -> None:
        self.job_service.sites_changed(base, revision, changes)
        self.aux_service.sites_changed(base, revision, changes)
        if any(change["op"] == "add" for change in changes):
            self.lifecycle.scheduler.kick(resources_changed=True)
        for change in changes:
            if change["op"] == "remove":
                # Whoever waits on that site learns now, not at its timeout.
                self.awaited.fail_site(change["name"], f"site '{change['name']}' left")


__all__ = ["Parent", "read_parent_info"]
