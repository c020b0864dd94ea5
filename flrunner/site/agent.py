"""The site agent: logs in to the parent, heartbeats, and serves the jobs that run on this site.

The parent pushes job-control requests (check and reserve resources, start a job's site app
from a bundle, stop it), jobs' aux requests, and the keys of jobs' processes (which a job's site
components seal their secure aux requests to); the agent answers each on its own threads, so
its connection keeps serving while a job's handler works or hangs. It logs in again by itself
when the parent forgets it (a restart, an expiry) or seems gone (a paused parent: its session,
kept by the parent, then goes on unchanged), backing off while the parent is unreachable or
another agent holds the site's name, and logs out on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

import psutil

from flrunner.protocol import Dispatcher, Rc, aux_ops, site_ops
from flrunner.util.bundles import extract_bundle
from flrunner.errors import BadRequest, FlrunnerError
from flrunner.transport.link import Link
from flrunner.util.logthrottle import LogThrottle
from flrunner.aux.handling import serve_request
from flrunner.aux.secure import Direction, SealedFrom, sealed_from
from flrunner.protocol import Request
from flrunner.security.curve import key_from_z85
from flrunner.security.errors import SealedError
from flrunner.transport.wire import Message
from flrunner.workspace import Workspace

from flrunner.site.engine import SendToServer
from flrunner.site.job import SiteJob
from flrunner.site.resources import ResourceManager

log = logging.getLogger(__name__)


def default_resources() -> dict:
    return {"num_cpus": os.cpu_count() or 1, "mem_gb": round(psutil.virtual_memory().total / 2**30, 1), "num_gpus": 0}


class SiteAgent:
    """One FL site's agent.

    Args:
        name: the site name.
        server: the parent's sites endpoint.
        resources: declared resources (defaults from psutil).
        workspace: where job apps are unpacked (default ``./flrunner-site-<name>``).
        request_timeout: seconds to wait for the parent's reply to a login or logout.
        job_threads: requests of one job served at once.
    """

    def __init__(self, name: str, server: str, resources: dict | None = None, workspace: str | None = None,
                 request_timeout: float = 5.0, job_threads: int = 4, kit: Any = None) -> None:
        self.name = name
        self.server = server
        self.resources = resources if resources is not None else default_resources()
        self.workspace = Workspace(workspace or os.path.abspath(f"flrunner-site-{name}"), app_folder=f"app_{name}")
        self.request_timeout = request_timeout
        self.job_threads = job_threads
        self.resource_manager = ResourceManager(self.resources)
        self.token: str | None = None
        #: This agent process's random id, sent with every login: the parent resumes the session of
        #: the same instance, and refuses another agent that uses this site's name meanwhile.
        self.instance = secrets.token_hex(8)
        self.jobs: dict[str, SiteJob] = {}
        self._jobs_lock = threading.Lock()
        self._stop = threading.Event()
        self._relogin = threading.Event()
        self._control = ThreadPoolExecutor(max_workers=2, thread_name_prefix="site-control")
        #: The kit's secret key, which opens secure aux requests and seals this site's own (None:
        #: this site cannot).
        self.sealing_key: bytes | None = key_from_z85(kit.secret_key) if kit is not None else None
        #: Requests that do not open (from a parent or a job gone wrong) must not fill the site's log.
        self._refusals = LogThrottle(log)
        configure: Callable[[Any], None] | None = None
        if kit is not None:  # a provisioned site: CURVE with its own keys, trusting only the parent's
            from flrunner.security.gate import make_curve_client

            configure = partial(make_curve_client, public_key=kit.public_key, secret_key=kit.secret_key,
                                server_key=kit.parent_public_key)
        self.link = Link(server, self._on_push, heartbeat_interval=5.0, parent_loss_timeout=20.0,
                         on_parent_lost=self._forgotten,
                         heartbeat=lambda: site_ops.HEARTBEAT.message(token=self.token or ""),
                         immediate=True, on_heartbeat_refused=lambda msg: self._forgotten(), configure=configure)
        self._requests = Dispatcher(site_ops.TO_SITE, f"site agent {name}",
                                    on_refused=lambda msg, exc: self._refusals.warning("site %s: '%s' refused: %s",
                                                                                      self.name, msg.op[:60], exc))
        self._requests.on(aux_ops.TO_SITE, self._aux)
        for op, handler in ((site_ops.CHECK_RESOURCES, self._check_resources),
                            (site_ops.CANCEL_RESOURCES, self._cancel_resources), (site_ops.START_JOB, self._start_job),
                            (site_ops.STOP_JOB, self._stop_job), (site_ops.JOB_KEY, self._job_key)):
            self._requests.on(op, lambda req, handle=handler: handle(req.msg, req.args))

    # --- session ------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._relogin.set()

    def run(self) -> None:
        """Serve until `stop` (or SIGTERM when installed); log out and stop jobs on the way out."""
        self.link.start()
        # Short first tries: with ZMQ_IMMEDIATE a login sent before the connection is up is
        # dropped, so waiting long for its answer only delays the site's start.
        backoff = 0.05
        try:
            while not self._stop.is_set():
                if self.token is None:
                    try:
                        self.login(timeout=min(self.request_timeout, 0.2 + 2 * backoff))
                        backoff = 0.05
                    except FlrunnerError as exc:  # CONFLICT too: another agent holds the name for now
                        log.warning("site %s: login to %s failed (%s); retrying in %.1fs", self.name, self.server,
                                    exc, backoff)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, 5.0)
                    continue
                self._relogin.wait(1.0)
                self._relogin.clear()
            self.logout()
        finally:
            self._stop_all_jobs("the site agent stops")
            self._control.shutdown(wait=False, cancel_futures=True)
            self.link.close()

    def login(self, timeout: float | None = None) -> None:
        with self._jobs_lock:
            running = sorted(self.jobs)
        body = site_ops.LOGIN.call(self.link, wait=timeout or self.request_timeout, name=self.name,
                                   resources=self.resources, pid=os.getpid(), jobs=running, instance=self.instance).body
        for job_id in body.get("stop_jobs") or []:
            if isinstance(job_id, str):
                self._control.submit(self._do_stop_job, job_id, "the parent does not run this job")
        job_keys = body.get("job_keys")
        for job_id, key in (job_keys.items() if isinstance(job_keys, dict) else ()):
            self._set_job_key(job_id, key)
        self.token = body["token"]
        interval = float(body.get("heartbeat_interval", 5.0))
        self.link.parent_loss_timeout = max(4 * interval, 2.0)
        self.link.authenticated = True
        self.link.set_heartbeat_interval(interval)
        log.info("site %s logged in to %s", self.name, self.server)

    def logout(self) -> None:
        if self.token is None:
            return
        try:
            site_ops.LOGOUT.call(self.link, wait=min(self.request_timeout, 2.0), token=self.token)
            log.info("site %s logged out", self.name)
        except FlrunnerError as exc:
            log.warning("site %s: logout failed: %s", self.name, exc)
        self.token = None

    def _forgotten(self) -> None:
        """The parent refused a heartbeat or went silent: log in again. The jobs running here go on:
        the login says which ones the parent still runs (it may have restarted and re-adopted
        them), and the others are stopped then."""
        if self.token is None:
            return
        log.warning("site %s: the parent no longer knows this site; logging in again", self.name)
        self.token = None
        self.link.authenticated = False
        self._relogin.set()

    # --- requests from the parent (I/O thread: hand work to threads, never block) -----------------
    def _on_push(self, msg: Message) -> None:
        self._requests.dispatch(msg, self.link.reply)

    def _reply(self, request: Message, body: dict, frames: list | None = None, rc: Rc = Rc.OK) -> None:
        """Answer a request of the parent (from any thread)."""
        self.link.reply(Message(request.op, body, re=request.id, rc=rc, frames=list(frames or [])))

    def _aux(self, req: Request) -> None:
        msg, args = req.msg, req.args
        with self._jobs_lock:
            job = self.jobs.get(args["job_id"])
        if job is None or job.stopped:
            if not args["fire_and_forget"]:
                self._reply(msg, {"reason": f"job {args['job_id']} is not running on site {self.name}"},
                                rc=Rc.NOT_FOUND)
            return
        try:
            job.pool.submit(self._serve_aux, job, req)
        except RuntimeError:  # the job stopped in between
            if not args["fire_and_forget"]:
                self._reply(msg, {"reason": f"job {args['job_id']} stopped on site {self.name}"},
                                rc=Rc.NOT_FOUND)

    def _serve_aux(self, job: SiteJob, req: Request) -> None:
        job_id, topic = req.args["job_id"], req.args["topic"]
        serve_request(
            req, lambda: self._sealed_from(req), lambda frames: job.reply_to(topic, frames),
            cannot_open=f"site {self.name} cannot open the secure request",
            cannot_travel=f"the reply of '{topic}' cannot travel",
            on_refused=lambda exc: self._refusals.warning("site %s: job %s: a secure request for '%s' was refused: %s",
                                                          self.name, job_id, topic, exc))

    def _sealed_from(self, req: Request) -> SealedFrom:
        """The keys of a sealed request: the site's own, and the job process's key it names."""
        if self.sealing_key is None:
            raise SealedError("this site has no provisioned key (it was not started with --kit)")
        if req.args["sender_key"] is None:
            raise SealedError("it names no sender key")
        return sealed_from(self.sealing_key, req.args["sender_key"], Direction.TO_SITES, req.args["job_id"],
                           req.args["topic"])

    def _job_key(self, msg: Message, args: dict) -> None:
        self._set_job_key(args["job_id"], args["key"])

    def _set_job_key(self, job_id: str, key: bytes) -> None:
        """Use ``key`` for the secure requests of a job running here to its engine (a key for a job
        that does not run here is dropped: its start_job carries the key)."""
        with self._jobs_lock:
            job = self.jobs.get(job_id)
        if job is not None and isinstance(key, bytes):
            job.use_job_key(key)

    def _check_resources(self, msg: Message, args: dict) -> None:
        ok, token, reason = self.resource_manager.check(args["job_id"], args["spec"], float(args["ttl"]))
        self._reply(msg, {"token": token, "reason": reason}, rc=Rc.OK if ok else Rc.CONFLICT)

    def _cancel_resources(self, msg: Message, args: dict) -> None:
        self.resource_manager.cancel(args["token"])

    def _start_job(self, msg: Message, args: dict) -> None:
        self._control.submit(self._do_start_job, msg, args)

    def _do_start_job(self, msg: Message, args: dict) -> None:
        job_id = args["job_id"]
        with self._jobs_lock:
            running = self.jobs.get(job_id)
        if running is not None:
            if args["job_key"] is not None:
                running.use_job_key(args["job_key"])
            self._reply(msg, {"started": True, "reason": "already running"})
            return
        if args["token"] and not self.resource_manager.consume(args["token"], job_id):
            self._reply(msg, {"reason": "the resource reservation expired or is unknown"}, rc=Rc.CONFLICT)
            return
        job = SiteJob(self.name, job_id, args["job_name"], args["app"], self.workspace, self._sender(job_id),
                      self.job_threads, sealing_key=self.sealing_key, job_key=args["job_key"])
        try:
            if len(msg.frames) != 1:
                raise BadRequest("start_job must carry exactly one bundle frame")
            shutil.rmtree(job.app_dir, ignore_errors=True)
            extract_bundle(msg.frames[0].bytes if hasattr(msg.frames[0], "bytes") else bytes(msg.frames[0]), job.app_dir)
            job.start()
        except Exception as exc:
            log.error("site %s: cannot start job %s: %s", self.name, job_id, exc)
            self.resource_manager.release_job(job_id)
            job.stop(f"failed to start: {exc}")
            self._reply(msg, {"reason": f"{type(exc).__name__}: {exc}"[:2000]}, rc=Rc.ERROR)
            return
        with self._jobs_lock:
            self.jobs[job_id] = job
        self._reply(msg, {"started": True})

    def _stop_job(self, msg: Message, args: dict) -> None:
        # Resources first, at once: the parent may ask for them for another job right after this.
        self.resource_manager.release_job(args["job_id"])
        self._control.submit(self._do_stop_job, args["job_id"], args["reason"] or "the job ended")

    def _do_stop_job(self, job_id: str, reason: str) -> None:
        with self._jobs_lock:
            job = self.jobs.pop(job_id, None)
        if job is not None:
            job.stop(reason)
        self.resource_manager.release_job(job_id)

    def _stop_all_jobs(self, reason: str) -> None:
        with self._jobs_lock:
            jobs, self.jobs = list(self.jobs.values()), {}
        for job in jobs:
            job.stop(reason)
            self.resource_manager.release_job(job.job_id)

    # --- site -> the job's engine -----------------------------------------------------------------------
    def _sender(self, job_id: str) -> SendToServer:
        def send_to_server(topic: str, frames: list, timeout: float, fire_and_forget: bool,
                           sealed_key: bytes | None) -> Message | None:
            request = aux_ops.FROM_SITE.message(frames, token=self.token or "", job_id=job_id, topic=topic,
                                                timeout=max(timeout, 0.0), sealed_key=sealed_key,
                                                fire_and_forget=fire_and_forget or None)
            if fire_and_forget:
                self.link.send(request)
                return None
            call = self.link.call(request)
            try:
                if not call.wait(1, timeout):
                    return None
            finally:
                self.link.end_call(call)
            return call.replies[0]

        return send_to_server


def run_site(name: str | None, server: str | None, resources: dict | None = None, workspace: str | None = None,
             kit_dir: str | None = None) -> int:
    """Run a site agent in the foreground: process title, signals, logs to stderr.

    With ``kit_dir`` (a site's start-up kit from ``flrunner provision``) the name and the server
    endpoint come from the kit (``server`` overrides the endpoint) and the connection uses CURVE.
    """
    import setproctitle

    kit = None
    if kit_dir is not None:
        from flrunner.security.kit import Role, load_kit

        kit = load_kit(kit_dir)
        if kit.role is not Role.SITE:
            raise FlrunnerError(f"{kit_dir} is the kit of {kit.role.value} '{kit.name}', not of a site")
        if name is not None and name != kit.name:
            raise FlrunnerError(f"--name {name} does not match the kit's site name '{kit.name}'")
        name, server = kit.name, server or kit.endpoint
    if not name or not server:
        raise FlrunnerError("a site needs --name and --server, or --kit")
    setproctitle.setproctitle(f"flrunner-site: {name}")
    agent = SiteAgent(name, server, resources, workspace, kit=kit)

    def on_signal(signum: int, frame: Any) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run()
    # A job's handler stuck in code that ignores the abort would keep a normal interpreter alive
    # (it joins worker threads at exit): the agent has logged out and stopped its jobs, so leave.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


__all__ = ["SiteAgent", "default_resources", "run_site"]
