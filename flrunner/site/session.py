"""`SiteSession`: a site's standing with the parent — login, heartbeats, logging in again, logout —
and the link its requests travel on.

The session logs in again by itself when the parent forgets the site (a restart, an expiry) or
seems gone (a paused parent: its session, kept by the parent, then goes on unchanged), backing
off while the parent is unreachable or another agent holds the site's name. Each login lists the
jobs running here; the parent answers which of them to stop (it does not run them) and the keys
of the others' job processes.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from concurrent.futures import Executor
from typing import Any, Callable

from flrunner.errors import FlrunnerError
from flrunner.protocol import Dispatcher, aux_ops, site_ops
from flrunner.site.engine import SendToServer
from flrunner.site.job import RunningJobs
from flrunner.transport.link import Link
from flrunner.transport.wire import Message

log = logging.getLogger(__name__)


class SiteSession:
    """One site's session with the parent.

    Args:
        name: the site name.
        server: the parent's sites endpoint.
        resources: the resources the site declares at login.
        jobs: the jobs running here (listed at login; stopped or given keys as its answer says).
        control: the threads jobs are stopped on, off the link's I/O thread.
        requests: serves what the parent asks of the site (answered on the link).
        request_timeout: seconds to wait for the parent's reply to a login or logout.
        configure: sets the link's socket up (CURVE keys for a provisioned site).
    """

    def __init__(self, name: str, server: str, resources: dict, jobs: RunningJobs, control: Executor,
                 requests: Dispatcher, request_timeout: float = 5.0,
                 configure: Callable[[Any], None] | None = None) -> None:
        self.name = name
        self.server = server
        self.resources = resources
        self.request_timeout = request_timeout
        self._jobs = jobs
        self._control = control
        self._requests = requests
        self.token: str | None = None
        #: This agent process's random id, sent with every login: the parent resumes the session of
        #: the same instance, and refuses another agent that uses this site's name meanwhile.
        self.instance = secrets.token_hex(8)
        self._stop = threading.Event()
        self._relogin = threading.Event()
        self.link = Link(server, self._on_push, heartbeat_interval=5.0, parent_loss_timeout=20.0,
                         on_parent_lost=self._forgotten,
                         heartbeat=lambda: site_ops.HEARTBEAT.message(token=self.token or ""),
                         immediate=True, on_heartbeat_refused=lambda msg: self._forgotten(), configure=configure)

    def stop(self) -> None:
        self._stop.set()
        self._relogin.set()

    def run(self) -> None:
        """Stay logged in until `stop`, then log out (the caller closes the session)."""
        self.link.start()
        # Short first tries: with ZMQ_IMMEDIATE a login sent before the connection is up is
        # dropped, so waiting long for its answer only delays the site's start.
        backoff = 0.05
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

    def close(self) -> None:
        self.link.close()

    def login(self, timeout: float | None = None) -> None:
        body = site_ops.LOGIN.call(self.link, wait=timeout or self.request_timeout, name=self.name,
                                   resources=self.resources, pid=os.getpid(), jobs=self._jobs.ids(),
                                   instance=self.instance).body
        for job_id in body.get("stop_jobs") or []:
            if isinstance(job_id, str):
                self._control.submit(self._jobs.stop, job_id, "the parent does not run this job")
        job_keys = body.get("job_keys")
        for job_id, key in (job_keys.items() if isinstance(job_keys, dict) else ()):
            self._jobs.use_key(job_id, key)
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

    def _on_push(self, msg: Message) -> None:
        """A request of the parent (I/O thread: its handlers hand work to threads, never block)."""
        self._requests.dispatch(msg, self.link.reply)

    # --- site -> a job's engine -----------------------------------------------------------------------
    def sender(self, job_id: str) -> SendToServer:
        """Sends the aux requests of a job's site components to the job's engine."""
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


__all__ = ["SiteSession"]
