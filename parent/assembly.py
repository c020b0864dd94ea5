"""The parent process: one event loop over the sites, jobs and admin sockets, signals and pidfds.

The loop never blocks on a peer: sockets are read without blocking and in bounded batches,
replies are sent with NOBLOCK (a peer that does not read loses messages rather than stalling
everyone), child exits arrive as readable pidfds, and signals as a byte on a wake-up pipe.

Graceful stop (SIGTERM, SIGINT, the admin ``shutdown`` op, or `Parent.stop` from another
thread): the parent refuses new submissions, aborts every running job (ask, then SIGTERM, then
SIGKILL after the configured graces), records each as ``FINISHED:ABORTED`` with the reason
"parent shutdown", leaves queued jobs ``SUBMITTED`` for the next start, and exits. A second
signal skips the graces and SIGKILLs the job process groups at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from typing import Callable

import zmq

from flrunner.protocol import Request, admin_ops, job_ops, site_ops
from flrunner.transport.wire import Message
from flrunner.errors import EndpointError, FlrunnerError, Unauthorized
from flrunner.transport.wakeup import WakePipe
from flrunner.workspace import Workspace

from parent.handlers.admin import AdminService
from parent.handlers.aux_routing import AuxService
from parent.jobs.cleanup import kill_stragglers
from parent.config import ParentConfig
from parent.errors import WorkspaceBusy
from parent.jobs.held_writes import HeldWrites
from parent.jobs.store import JobRecord, JobStore, QuietCheckpoints
from parent.jobs.manager import JobManager, ManagerHooks
from parent.handlers.job_process import JobsService
from parent.edge.limits import RateLimiter
from parent.launchers.process import ProcessLauncher
from parent.loop.offload import Offload
from parent.sites.registry import SiteRegistry
from parent.edge.awaited import AwaitedReplies
from parent.edge.endpoint import RouterEndpoint
from parent.edge.site_requests import SiteGateway
from parent.jobs.site_apps import SiteApps
from parent.handlers.sites import SitesService
from parent.jobs.running import RunningJob
from parent.loop.timers import StallClock, Timers
from parent.edge.workspace_watch import WorkspaceWatch, write_parent_info

log = logging.getLogger("parent")

#: Job folders read and copied at once (each on a thread of the submissions lane).
SUBMISSION_WORKERS = 4


class Parent:
    """One parent: construct, `start` (binds and recovers), then `run` the loop until stopped.

    Args:
        config: the settings; see `ParentConfig`.
    """

    def __init__(self, config: ParentConfig) -> None:
        self.config = config
        self.ws = Workspace(config.workspace)
        #: The loop's clock: monotonic, without the time the parent itself was stalled.
        self.clock = StallClock()
        self.timers = Timers(self.clock)
        self.ctx: zmq.Context | None = None
        self.poller = zmq.Poller()
        self._fd_callbacks: dict[int, Callable[[], None]] = {}
        self._wake = WakePipe()
        self._stop_reason: str | None = None
        self._force = False
        self._stopping = False
        self._started = False
        self._lock_fd: int | None = None
        self._info: dict | None = None
        self.workspace_watch: WorkspaceWatch | None = None
        self._log_handler: logging.Handler | None = None
        self._old_signals: dict[int, object] = {}
        self.listeners: list[Callable[[JobRecord], None]] = []
        self.stopped = threading.Event()

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
        self.ws.ensure()
        self._take_lock()
        self._setup_logging()
        if self.config.set_process_title:
            import setproctitle

            setproctitle.setproctitle(f"flrunner-parent: {self.ws.get_root_dir()}")
        cfg = self.config
        self.ctx = zmq.Context()
        self.store = JobStore(self.ws.get_job_store_path())
        self.held = HeldWrites(self.store, self.timers, on_stored=lambda rec: self.manager.stored(rec))
        self.checkpoints = QuietCheckpoints(self.store, cfg.wal_checkpoint_quiet)
        self.registry = SiteRegistry(cfg.site_timeout, clock=self.clock)
        self.sites = RouterEndpoint(self.ctx, "sites", site_ops.FROM_SITE, cfg.max_msg_size)
        self.jobs = RouterEndpoint(self.ctx, "jobs", job_ops.FROM_JOB, cfg.max_msg_size)
        self.admin = RouterEndpoint(self.ctx, "admin", admin_ops.FROM_ADMIN, cfg.max_admin_msg_size)
        # Many sites connecting at once (a restart, a fleet coming up) must not overflow the
        # kernel's accept queue: dropped SYNs are retried only after 1, 3, 7, 15 s.
        self.sites.sock.setsockopt(zmq.BACKLOG, 4096)
        self.sites.limiter = RateLimiter(cfg.site_rate, 2 * cfg.site_rate, byte_rate=cfg.site_byte_rate,
                                         byte_burst=cfg.site_byte_burst)
        self.jobs.limiter = RateLimiter(None, byte_rate=cfg.job_byte_rate, byte_burst=cfg.job_byte_burst)
        self.admin.limiter = RateLimiter(cfg.admin_rate, 2 * cfg.admin_rate, byte_rate=cfg.admin_byte_rate,
                                         byte_burst=cfg.admin_byte_burst)
        self.remote_admin: RouterEndpoint | None = None
        if cfg.admin_endpoint:
            if not cfg.kit:
                raise FlrunnerError("remote admin (admin_endpoint / --admin) needs the parent's kit (--kit): only "
                                    "provisioned admin keys may connect")
            self.remote_admin = RouterEndpoint(self.ctx, "remote-admin", admin_ops.FROM_ADMIN, cfg.max_upload_size)
            # The burst must hold an upload of the largest allowed size, or such an upload never passes.
            self.remote_admin.limiter = RateLimiter(cfg.admin_rate, 2 * cfg.admin_rate, byte_rate=cfg.admin_byte_rate,
                                                    byte_burst=max(cfg.admin_byte_burst, 2 * cfg.max_upload_size))
        if cfg.jobs_endpoint and not cfg.kit:
            raise FlrunnerError("a tcp jobs endpoint (jobs_endpoint / --jobs) needs the parent's kit (--kit): job "
                                "processes then connect with CURVE")
        self.launcher = cfg.launcher or ProcessLauncher()
        self.launcher.bind_loop(self.watch_fd, self.unwatch_fd)
        # Two lanes: copying a large job folder must delay neither a crash-restart nor a kill.
        self.copies = Offload(self._wake, workers=SUBMISSION_WORKERS, name="submissions")
        self.reaper = Offload(self._wake, workers=2, name="reaper")
        hooks = ManagerHooks(watch_fd=self.watch_fd, unwatch_fd=self.unwatch_fd,
                             push_to_child=self._push_to_child, on_change=self._on_change,
                             on_job_exit=self._on_job_exit, offload=self.reaper.run)
        self.awaited = AwaitedReplies(self.timers)
        self.gateway = SiteGateway(self.sites, self.registry, self.awaited)
        self.site_apps = SiteApps(self.gateway, self.ws, cfg.reservation_ttl, cfg.site_request_timeout)
        self.manager = JobManager(cfg, self.ws, self.held, self.launcher, self.timers, hooks,
                                  endpoint=lambda: self.jobs.endpoint, registry=self.registry, site_apps=self.site_apps)
        self.admin_service = AdminService(self.admin, self.manager, self.registry, cfg.subscriber_ttl,
                                          self.stop, self.ws.get_root_dir(), self.copies, clock=self.clock,
                                          remote=self.remote_admin)
        self.jobs_service = JobsService(self.jobs, self.manager, self.registry)
        self.sites_service = SitesService(self.sites, self.registry, heartbeat_interval=max(0.2, cfg.site_timeout / 4),
                                          runs_job=lambda job_id: job_id in self.manager.running,
                                          max_sites=cfg.max_sites, job_key=self.manager.sealing_key)
        self.aux_service = AuxService(self.jobs, self.sites, self.manager, self.registry, self.gateway,
                                      self.site_apps, self.awaited, self.timers,
                                      login_grace=cfg.adopt_window + cfg.site_timeout / 4)
        self.registry.listeners.append(self._on_registry_change)

        self.gate = None
        self.admin_gate = None
        self._authenticator = None
        if cfg.kit:
            self._secure(cfg.kit)
        sock_dir = self.ws.get_socket_dir()
        self._bind(self.jobs, cfg.jobs_endpoint or f"ipc://{sock_dir}/jobs.sock")
        self._bind(self.admin, f"ipc://{sock_dir}/admin.sock")
        self._bind(self.sites, cfg.sites_endpoint)
        if self.remote_admin is not None:
            self._bind(self.remote_admin, cfg.admin_endpoint)
        for endpoint in self._endpoints():
            self.poller.register(endpoint.sock, zmq.POLLIN)
        self.poller.register(self._wake.fileno(), zmq.POLLIN)
        if not self._is_loopback(self.sites.endpoint) and self.gate is None:
            log.warning("the sites socket listens on %s, which is not loopback, WITHOUT authentication or "
                        "encryption; anyone who reaches it can log in as a site: provision kits "
                        "(flrunner provision) and start the parent with --kit", self.sites.endpoint)

        try:
            self.manager.recover()
        except sqlite3.DatabaseError as exc:  # a store that opened but whose pages are damaged
            raise self.store.error(exc) from None
        self.admin_service.ready = True
        self._write_info()
        self.workspace_watch = WorkspaceWatch(self.ws, self._write_info, self._lock_fd, [self.jobs, self.admin])
        self._install_signals()
        self.timers.call_later(cfg.housekeeping_interval, self._housekeeping)
        self._started = True
        log.info("parent %d serving workspace %s: sites %s, jobs %s, admin %s%s", os.getpid(),
                 self.ws.get_root_dir(), self.sites.endpoint, self.jobs.endpoint, self.admin.endpoint,
                 f", remote admin {self.remote_admin.endpoint}" if self.remote_admin is not None else "")
        self.manager.start()
        if cfg.on_started:
            cfg.on_started()

    def _secure(self, kit_dir: str) -> None:
        """CURVE on the sites socket (and the remote admin socket), with a ZAP handler that admits
        allowlisted keys of the socket's role only, each as its participant's name."""
        from flrunner.security.gate import (ADMIN_DOMAIN, JOBS_DOMAIN, SITES_DOMAIN, AnyKey, Gate, make_curve_server,
                                            start_authenticator)
        from flrunner.security.kit import Role, load_kit

        kit = load_kit(kit_dir)
        if kit.role is not Role.PARENT:
            raise FlrunnerError(f"{kit_dir} is the kit of {kit.role.value} '{kit.name}', not of a parent")
        self.gate = Gate(kit_dir, Role.SITE)
        gates = {SITES_DOMAIN: self.gate}
        make_curve_server(self.sites.sock, kit.public_key, kit.secret_key, SITES_DOMAIN)
        self.sites.curve = True
        self.sites_service.require_user_id = True
        self.sites_service.allowed = self.gate.allows  # a revoked site's open connection cannot log in again
        self.sites_service.public_key = self.gate.public_key  # what jobs seal secure aux requests for
        if self.remote_admin is not None:
            self.admin_gate = gates[ADMIN_DOMAIN] = Gate(kit_dir, Role.ADMIN)
            make_curve_server(self.remote_admin.sock, kit.public_key, kit.secret_key, ADMIN_DOMAIN)
            self.remote_admin.curve = True
            self.remote_admin.authorize = self._authorize_admin
        if self.config.jobs_endpoint:
            # Job processes have no provisioned keys: any key completes the handshake (the
            # connection is encrypted and the job process knows it talks to this parent), and the
            # job proves itself with its per-job secret, as over ipc.
            gates[JOBS_DOMAIN] = AnyKey()
            make_curve_server(self.jobs.sock, kit.public_key, kit.secret_key, JOBS_DOMAIN)
            self.manager.jobs_server_key = kit.public_key.decode()
        self._authenticator = start_authenticator(self.ctx, gates)
        log.info("CURVE on the sites socket%s%s (allowlist of %s)",
                 ", the remote admin socket" if self.remote_admin is not None else "",
                 ", the tcp jobs socket" if self.config.jobs_endpoint else "", kit_dir)

    def _authorize_admin(self, req: Request) -> None:
        user_id = req.user_id
        """Every message on the remote admin socket: its key's admin must still be on the allowlist."""
        if not user_id or self.admin_gate is None or not self.admin_gate.allows(user_id):
            raise Unauthorized(f"admin '{user_id or '?'}' is not (or no longer) allowed on the remote admin socket")

    def _endpoints(self) -> list[RouterEndpoint]:
        return [e for e in (self.sites, self.jobs, self.admin, self.remote_admin) if e is not None]

    def _bind(self, endpoint: RouterEndpoint, address: str) -> None:
        try:
            endpoint.bind(address)
        except zmq.ZMQError as exc:
            raise EndpointError(f"cannot bind the {endpoint.name} socket to {address}: "
                                f"{zmq.strerror(exc.errno)}") from None

    def _take_lock(self) -> None:
        path = os.path.join(self.ws.get_root_dir(), "parent.lock")
        with self.ws.os_errors("open", path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = read_parent_info(self.ws).get("pid", "?")
            raise WorkspaceBusy(f"another parent (pid {other}) is running on workspace {self.ws.get_root_dir()}") from None
        self._lock_fd = fd

    def _setup_logging(self) -> None:
        with self.ws.os_errors("open", self.ws.get_parent_log_path()):
            handler = logging.FileHandler(self.ws.get_parent_log_path())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in ("parent", "flrunner"):
            lg = logging.getLogger(name)
            lg.addHandler(handler)
            lg.setLevel(self.config.log_level)
        self._log_handler = handler

    def _install_signals(self) -> None:
        if not self.config.install_signal_handlers or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_signals[sig] = signal.signal(sig, self._on_signal)
        self._old_signals[-1] = signal.set_wakeup_fd(self._wake.write_fd)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stop_reason is None:
            self._stop_reason = f"{signal.Signals(signum).name} received"
        else:
            self._force = True

    def _write_info(self) -> None:
        """Publish parent.json (at start, and again if it was deleted while running: same content)."""
        if self._info is None:
            self._info = {"pid": os.getpid(), "workspace": self.ws.get_root_dir(), "sites": self.sites.endpoint,
                          "jobs": self.jobs.endpoint, "admin": self.admin.endpoint,
                          "remote_admin": self.remote_admin.endpoint if self.remote_admin is not None else None,
                          "started": time.time()}
        path = self.ws.get_parent_info_path()
        with self.ws.os_errors("write", path):
            write_parent_info(path, self._info)

    @staticmethod
    def _is_loopback(endpoint: str) -> bool:
        host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
        return host in ("127.0.0.1", "localhost", "[::1]", "::1") or host.startswith("127.")

    # --- the loop ------------------------------------------------------------------------------------------
    def watch_fd(self, fd: int, callback: Callable[[], None]) -> None:
        self._fd_callbacks[fd] = callback
        self.poller.register(fd, zmq.POLLIN)

    def unwatch_fd(self, fd: int) -> None:
        if self._fd_callbacks.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def stop(self, reason: str = "stop requested", force: bool = False) -> None:
        """Ask the loop to stop gracefully; safe from any thread."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if force:
            self._force = True
        self._wake.wake()

    def run(self) -> None:
        """Serve until stopped; then clean up. Calls `start` first if needed."""
        if not self._started:
            self.start()
        try:
            self._loop()
        finally:
            self._cleanup()

    def _loop(self) -> None:
        sockets = {endpoint.sock: endpoint for endpoint in self._endpoints()}
        stalled = self.clock.stalled
        while True:
            if self._stop_reason is not None and not self._stopping:
                self._stopping = True
                log.info("stopping: %s; aborting %d running job(s)", self._stop_reason, len(self.manager.running))
                self.manager.shutdown(f"parent shutdown ({self._stop_reason})")
            if self._force and self.manager.running:
                self.manager.kill_all()
            if self._stopping and not self.manager.running:
                return
            timeout = self.timers.timeout(cap=self.config.housekeeping_interval)
            self.clock.sleeping(timeout)
            ready = self.poller.poll(timeout * 1000)
            self.clock()  # a stall that struck during the poll is taken out before anything reads the clock
            if self.clock.stalled > stalled + 0.01:
                log.warning("the parent was stalled for %.1fs (paused, frozen, or blocked); peers are not held "
                            "responsible: their liveness windows and every timer are extended by as much",
                            self.clock.stalled - stalled)
                stalled = self.clock.stalled
            for what, _ in ready:
                endpoint = sockets.get(what)
                if endpoint is not None:
                    endpoint.process_ready()
                elif what == self._wake.fileno():
                    self._wake.drain()
                    self.copies.drain()
                    self.reaper.drain()
                else:
                    callback = self._fd_callbacks.get(what)
                    if callback is not None:
                        _guarded(callback)
            self.timers.run_due(_guarded)

    def _housekeeping(self) -> None:
        try:
            self._housekeep()
        finally:  # whatever failed, the next tick comes
            self.timers.call_later(self.config.housekeeping_interval, self._housekeeping)

    def _housekeep(self) -> None:
        if self.gate is not None:
            self.gate.reload_if_changed()
            for name in self.gate.take_revoked():
                done = [what for ok, what in ((self.registry.remove(name), "dropped from the registry"),
                                              (self.sites_service.disconnect(name), "its connection closed")) if ok]
                if done:
                    log.warning("site %s: access revoked; %s", name, " and ".join(done))
        if self.admin_gate is not None:
            self.admin_gate.reload_if_changed()
            for name in self.admin_gate.take_revoked():
                feeds, closed = self.admin_service.revoke(name)
                log.warning("admin %s: access revoked; %d connection(s) closed, %d status feed(s) stopped",
                            name, closed, feeds)
        gone = self.registry.expire()
        if gone:
            log.info("site(s) silent for over %.1fs dropped: %s", self.registry.timeout, ", ".join(gone))
        self.admin_service.expire_subscribers()
        for endpoint in self._endpoints():
            if endpoint.limiter is not None:
                endpoint.limiter.prune()
        self.manager.check_heartbeats()
        if self.workspace_watch is not None:
            self.workspace_watch.check()
        self.checkpoints.tick()

    def _push_to_child(self, identity: bytes, msg: Message) -> None:
        self.jobs.push(identity, msg)

    def _on_registry_change(self, base: int, revision: int, changes: list[dict]) -> None:
        if any(change["op"] == "add" for change in changes):
            self.manager.scheduler.kick(resources_changed=True)
        for change in changes:
            if change["op"] == "remove":
                # Whoever waits on that site learns now, not at its timeout.
                self.awaited.fail_site(change["name"], f"site '{change['name']}' left")

    def _on_job_exit(self, job: RunningJob, how: str, restarting: bool) -> None:
        self.awaited.fail_job(job.job_id, f"job {job.job_id}'s process {how}")
        self.aux_service.job_ended(job.job_id)
        if restarting:
            return  # the job goes on: its site apps keep running, the job manager relaunches it
        # Descendants that left the job's group (setsid) are found by their job id, off the loop.
        self.reaper.run(lambda: kill_stragglers(job.job_id), lambda killed, exc: None)
        if job.sites:
            self.site_apps.stop(job.job_id, sorted(job.sites), f"job process {how}")

    def _on_change(self, rec: JobRecord) -> None:
        self.admin_service.publish(rec)
        for listener in self.listeners:
            try:
                listener(rec)
            except Exception:
                log.exception("status listener failed")

    def _cleanup(self) -> None:
        if self.manager.running:  # the loop failed: leave no job process without a parent
            log.error("the loop ended with %d job(s) running; killing their process groups", len(self.manager.running))
            self.manager.kill_all()
        self._release()

    def _release(self) -> None:
        for sig, old in self._old_signals.items():
            if sig == -1:
                signal.set_wakeup_fd(old)  # type: ignore[arg-type]
            else:
                signal.signal(sig, old)  # type: ignore[arg-type]
        try:
            if read_parent_info(self.ws).get("pid") == os.getpid():
                os.unlink(self.ws.get_parent_info_path())
        except OSError:
            pass
        self._old_signals.clear()
        for name in ("sites", "jobs", "admin", "remote_admin"):
            endpoint = getattr(self, name, None)
            if endpoint is not None:
                endpoint.close()
        for lane in ("copies", "reaper"):
            if getattr(self, lane, None) is not None:
                getattr(self, lane).close()
        if getattr(self, "_authenticator", None) is not None:
            self._authenticator.stop()
            self._authenticator = None
        if getattr(self, "launcher", None) is not None:
            self.launcher.close()
        if getattr(self, "store", None) is not None:
            self.store.close()
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        self._wake.close()
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


def _guarded(fn: Callable[[], object]) -> None:
    """Run a loop callback; a bug in one must not stop the parent (and orphan its jobs)."""
    try:
        fn()
    except Exception:
        log.exception("a callback of the parent's loop failed")


def read_parent_info(ws: Workspace) -> dict:
    """The workspace's parent.json, or {} if there is none (or it is unreadable)."""
    try:
        with open(ws.get_parent_info_path()) as f:
            info = json.load(f)
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


