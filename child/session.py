"""The job process's standing with its parent: hello, hello again after a parent restart, and
what happens while the parent is gone.

A job process does not die with its parent. When the parent goes silent, the job goes on for
``reconnect_grace`` seconds; a parent restarted on the same workspace answers the next heartbeat
with UNAUTHORIZED (it does not know this connection), and the process says hello again with its
job secret, is re-adopted, and carries on (status updates it could not deliver are retried by
`ServerEngine.update_job_run_status`). If no parent takes the job back within the grace, the
workflows are asked to abort, and ``orphan_grace`` later the process exits whatever they do,
so no job runs on unsupervised.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

import zmq

from flrunner.errors import FlrunnerError, RequestTimeout, Unauthorized
from flrunner.link import Link

from .engine import ServerEngine

log = logging.getLogger(__name__)

EXIT_PARENT_LOST = 4


class ParentSession:
    """Owns the link to the parent for one job process.

    Args:
        boot: the bootstrap (job id, secret, endpoint, timings).
        engine: the job's engine (its abort signal and client cache).
    """

    def __init__(self, boot: dict, engine: ServerEngine) -> None:
        self.job_id = boot["job_id"]
        self._secret = boot["secret"]
        self.engine = engine
        self.reconnect_grace = float(boot.get("reconnect_grace", 30.0))
        self.orphan_grace = float(boot.get("orphan_grace", 10.0))
        self.link = Link(boot["endpoint"], engine.on_push, float(boot.get("heartbeat_interval", 2.0)),
                         float(boot.get("parent_loss_timeout", 20.0)), on_parent_lost=self._lost,
                         on_heartbeat_refused=self._refused, configure=_curve_client(boot.get("server_key")))
        engine.link = self.link
        engine.status_patience = self.reconnect_grace
        self._rehello = threading.Event()
        self._closing = threading.Event()
        self._lost_since: float | None = None
        self._reconnector = threading.Thread(target=self._reconnect_loop, name="reconnect", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Connect and say hello. Raises `FlrunnerError` if the parent refuses the job."""
        self.link.start()
        self._hello(timeout)
        self.link.last_heard = time.monotonic()  # the loss clock starts once the parent has answered
        self.link.authenticated = True
        self._reconnector.start()

    def close(self) -> None:
        self._closing.set()
        self._rehello.set()
        self.link.close()

    def _hello(self, timeout: float) -> None:
        self.link.request("hello", {"job_id": self.job_id, "secret": self._secret, "pid": os.getpid(),
                                    "sealing_key": self.engine.sealing_public_key()}, timeout=timeout)

    # --- the parent went away, or came back as a new process ------------------------------------
    def _lost(self) -> None:
        """No word from the parent for a while (I/O thread): give it ``reconnect_grace`` to return."""
        self._lost_since = time.monotonic()
        log.error("no word from the parent; the job goes on for up to %.0fs while it comes back", self.reconnect_grace)
        timer = threading.Timer(self.reconnect_grace, self._give_up_if_still_lost, args=(self._lost_since,))
        timer.daemon = True
        timer.start()

    def _refused(self, msg: object) -> None:
        """A parent answered a heartbeat without knowing this job: it restarted (I/O thread)."""
        self.engine._readopting = True
        self._rehello.set()

    def _reconnect_loop(self) -> None:
        while not self._closing.is_set():
            self._rehello.wait()
            if self._closing.is_set():
                return
            try:
                self._hello(5.0)
            except Unauthorized as exc:
                # A parent answers but does not know this job: nobody will take it back.
                log.error("the parent will not re-adopt this job: %s", exc)
                self.engine._readopting = False
                self._give_up("the parent refused to re-adopt the job")
                return
            except (RequestTimeout, FlrunnerError) as exc:
                log.warning("hello again failed (%s); retrying", exc)
                time.sleep(1.0)
                continue
            self._rehello.clear()
            self._lost_since = None
            self.engine.reset_clients()  # a new parent numbers its registry afresh
            self.engine._readopting = False
            self.engine.parent_epoch += 1  # requests left with the old parent are sent again
            log.warning("re-adopted by the parent")

    def _give_up_if_still_lost(self, since: float) -> None:
        if self._lost_since == since and not self.link.parent_lost:
            self._lost_since = None  # the same parent answered again: nothing was lost
            return
        if self._lost_since == since:
            self._give_up(f"the parent has been gone for {self.reconnect_grace:g}s")

    def _give_up(self, reason: str) -> None:
        self.engine.abort_signal.trigger(reason)
        timer = threading.Timer(self.orphan_grace, self._exit, args=(reason,))
        timer.daemon = True
        timer.start()

    @staticmethod
    def _exit(reason: str) -> None:
        log.error("%s; the job process exits", reason)
        logging.shutdown()
        os._exit(EXIT_PARENT_LOST)


def _curve_client(server_key: str | None) -> Callable[[zmq.Socket], None] | None:
    """With a tcp jobs socket the parent gives its CURVE public key: connect as a CURVE client
    with a key pair made for this process (the job's secret, not this key, proves the job)."""
    if not server_key:
        return None
    public, secret = zmq.curve_keypair()

    def configure(sock: zmq.Socket) -> None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_key.encode()

    return configure
