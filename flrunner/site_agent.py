"""The site agent: logs in to the parent, heartbeats, logs out on SIGTERM.

Serving a job's requests (aux messages, start_client_job) arrives with the sites issue; this
agent already keeps the registry current: it logs in again by itself when the parent forgets it
(a restart, an expiry), backing off while the parent is unreachable.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import psutil

from .errors import FlrunnerError, RequestTimeout, Unauthorized
from .rpc import DealerClient

log = logging.getLogger(__name__)


def default_resources() -> dict:
    return {"num_cpus": os.cpu_count() or 1, "mem_gb": round(psutil.virtual_memory().total / 2**30, 1), "num_gpus": 0}


class SiteAgent:
    """One FL site's connection to the parent.

    Args:
        name: the site name.
        server: the parent's sites endpoint.
        resources: declared resources (defaults from psutil).
        request_timeout: seconds to wait for each reply.
    """

    def __init__(self, name: str, server: str, resources: dict | None = None, request_timeout: float = 5.0) -> None:
        self.name = name
        self.server = server
        self.resources = resources if resources is not None else default_resources()
        self.request_timeout = request_timeout
        self.token: str | None = None
        self.heartbeat_interval = 5.0
        self._stop = threading.Event()
        self._client: DealerClient | None = None

    def stop(self) -> None:
        self._stop.set()

    def login(self) -> None:
        assert self._client is not None
        body = self._client.request("login", {"name": self.name, "resources": self.resources, "pid": os.getpid()},
                                    timeout=self.request_timeout).body
        self.token = body["token"]
        self.heartbeat_interval = float(body.get("heartbeat_interval", self.heartbeat_interval))
        log.info("site %s logged in to %s", self.name, self.server)

    def run(self) -> None:
        """Serve until `stop` (or SIGTERM when installed); log out on the way out."""
        self._client = DealerClient(self.server)
        backoff = 0.1
        try:
            while not self._stop.is_set():
                try:
                    if self.token is None:
                        self.login()
                        backoff = 0.1
                    elif not self._stop.wait(self.heartbeat_interval):
                        self._client.request("heartbeat", {"token": self.token}, timeout=self.request_timeout)
                except Unauthorized:
                    log.warning("site %s: the parent does not know this site any more; logging in again", self.name)
                    self.token = None
                except (RequestTimeout, FlrunnerError) as exc:
                    log.warning("site %s: %s; retrying in %.1fs", self.name, exc, backoff)
                    self.token = None if isinstance(exc, RequestTimeout) else self.token
                    self._reconnect()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
            self.logout()
        finally:
            self._client.close()

    def _reconnect(self) -> None:
        # A fresh socket drops whatever the old one still had queued for a dead peer.
        assert self._client is not None
        self._client.close()
        self._client = DealerClient(self.server)

    def logout(self) -> None:
        if self.token is None or self._client is None:
            return
        try:
            self._client.request("logout", {"token": self.token}, timeout=min(self.request_timeout, 2.0))
            log.info("site %s logged out", self.name)
        except FlrunnerError as exc:
            log.warning("site %s: logout failed: %s", self.name, exc)
        self.token = None


def run_site(name: str, server: str, resources: dict | None = None) -> int:
    """Run a site agent in the foreground: process title, signals, logs to stderr."""
    import setproctitle

    setproctitle.setproctitle(f"flrunner-site: {name}")
    agent = SiteAgent(name, server, resources)

    def on_signal(signum: int, frame: Any) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run()
    return 0


__all__ = ["SiteAgent", "run_site", "default_resources"]
