"""The job process's standing with its parent: hello, hello again when the parent is replaced,
calls that survive a parent restart, and what happens while the parent is gone or paused.

A job process does not die with its parent. The moment its connection to the parent is made
again (a restarted parent bound the endpoint: seen through a socket monitor, so within ZeroMQ's
reconnect interval) — or the parent answers a request or a heartbeat without knowing this job —
the process says hello again with its job secret and is re-adopted. Every call the engine makes
through `ParentSession.request` survives this: a request the old parent never answered, or the new
one refused before the re-adoption, is sent again once the job is re-adopted, so no engine call
raises because the parent restarted, and an update is applied by exactly one parent.

While the parent is silent, the job goes on for ``reconnect_grace`` seconds. A parent that is
only paused (SIGSTOP, a debugger: its process is in the stopped state) does not use up the grace:
its queued messages are answered when it resumes. If no parent takes the job back within the
grace, the workflows are asked to abort, and ``orphan_grace`` later the process exits whatever
they do, so no job runs on unsupervised.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

import zmq

from flrunner.errors import (
    Conflict,
    FlrunnerError,
    ParentUnavailable,
    RequestTimeout,
    Unauthorized,
    error_for_rc,
)
from flrunner.fl_signal import Signal
from flrunner.linux import is_stopped
from flrunner.protocol import Dispatcher, Rc, job_ops
from flrunner.transport.link import Call, Link
from flrunner.transport.wire import Message

log = logging.getLogger(__name__)

EXIT_PARENT_LOST = 4
#: Seconds between hellos while no parent answers one.
REHELLO_RETRY = 0.5
#: How often a call waiting past its own timeout looks again at whether the parent is paused or
#: being replaced.
RECHECK = 0.5


class ParentSession:
    """Owns the link to the parent for one job process; the engine's port to its parent
    (`child.port.ParentPort`).

    The engine calls `request`, `call`, `end_call`, `send` and `reply` as it would on a `Link`;
    `request` waits through a parent restart (see the module docstring). A multi-reply exchange
    (`call`, aux) uses `epoch`, `parent_forgot_us` and `wait_readopted` to do the same.

    Args:
        boot: the bootstrap (job id, secret, endpoint, timings, the parent's pid).
        pushes: serves what the parent pushes (`child.port.parent_pushes`; its handlers are the
            engine's).
        abort_signal: the job's abort signal, triggered once no parent will take the job back.
        sealing_key: this job process's public key for secure aux, given in every hello (the
            parent passes it to the job's sites); None: the job cannot serve secure requests.
        clock: monotonic seconds (injected for tests).
    """

    def __init__(self, boot: dict, pushes: Dispatcher, abort_signal: Signal, sealing_key: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job_id = boot["job_id"]
        self._secret = boot["secret"]
        self._pushes = pushes
        self._abort_signal = abort_signal
        self._sealing_key = sealing_key
        self.clock = clock
        self.reconnect_grace = float(boot.get("reconnect_grace", 30.0))
        self.orphan_grace = float(boot.get("orphan_grace", 10.0))
        #: The parent's pid, to tell a paused parent from a gone one (updated at each hello).
        self.parent_pid: int | None = boot.get("parent_pid")
        self.link = Link(boot["endpoint"], self._on_push, float(boot.get("heartbeat_interval", 2.0)),
                         float(boot.get("parent_loss_timeout", 20.0)), on_parent_lost=self._lost,
                         heartbeat=job_ops.HEARTBEAT.message, on_heartbeat_refused=lambda msg: self.parent_forgot_us(),
                         on_reconnected=self.parent_forgot_us, configure=_curve_client(boot.get("server_key")))
        #: Bumped each time a parent re-adopts this job: requests sent before went to a parent
        #: that will not answer them (and the engine's site-registry mirror starts over).
        self.epoch = 0
        self._adopted = threading.Condition()
        #: Set while the parent does not know this job (it restarted); cleared by the re-adoption.
        self._forgotten = threading.Event()
        self._rehello = threading.Event()
        self._closing = threading.Event()
        #: Set once no parent will take the job back: calls fail at once from then on.
        self.orphaned = threading.Event()
        self.orphan_reason = ""
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

    def _hello(self, timeout: float) -> Message:
        reply = job_ops.HELLO.call(self.link, wait=timeout, job_id=self.job_id, secret=self._secret, pid=os.getpid(),
                                   sealing_key=self._sealing_key)
        pid = reply.body.get("parent_pid")
        if isinstance(pid, int) and not isinstance(pid, bool):
            self.parent_pid = pid
        return reply

    def _on_push(self, msg: Message) -> None:
        """A message the parent pushed (I/O thread): served by the engine's handlers."""
        self._pushes.dispatch(msg, self.link.reply)

    # --- the engine's port: calls that survive a parent restart ------------------------------------
    def request(self, msg: Message, timeout: float = 30.0) -> Message:
        """Send request ``msg`` and wait for the reply of a parent that knows this job.

        ``timeout`` bounds the wait on a parent that is up and serving (time it was away does not
        count, and each attempt gets the whole of it). A parent that is being
        replaced (gone, restarted, or answering UNAUTHORIZED because it does not know this job
        yet) or paused does not fail the call: it waits for the re-adoption, then sends again —
        the old parent will never answer, and a refused request was not applied.

        Raises:
            RequestTimeout: a serving parent did not answer within ``timeout``.
            ParentUnavailable: no parent took the job back within the reconnect grace.
            FlrunnerError: the parent answered with an error code (subclass chosen by it).
        """
        op = msg.op
        refused_at: int | None = None
        while True:
            epoch = self.epoch
            call = self.link.call(msg)
            try:
                answered = self._wait_answer(call, epoch, timeout, f"no reply to '{op}' from the parent within "
                                                                   f"{timeout:g}s")
            finally:
                self.link.end_call(call)
            if not answered:
                continue  # re-adopted meanwhile: the request went to a parent that is gone
            reply = call.replies[0]
            if reply.rc == Rc.UNAUTHORIZED and op != "hello" and refused_at is None:
                # A parent that does not know this job: one restarted, before the hello again.
                # (Refused again after the re-adoption, it is refused for what it is: raise.)
                refused_at = epoch
                self.parent_forgot_us()
                if self.wait_readopted(epoch):
                    continue
                raise ParentUnavailable(f"'{op}' not delivered: {self.orphan_reason or 'no parent took the job back'}")
            if reply.rc != Rc.OK:
                raise error_for_rc(reply.rc or Rc.ERROR, str(reply.body.get("reason", reply.rc)))
            return reply

    def _wait_answer(self, call: Call, epoch: int, timeout: float, timeout_message: str) -> bool:
        """Wait for the first reply to ``call``: True once it is in, False if the job was
        re-adopted meanwhile (send again). ``timeout`` counts only time the parent was reachable:
        past it, a parent being replaced or paused gives the call a fresh ``timeout``."""
        moved = lambda: self.epoch != epoch  # noqa: E731
        deadline = self.clock() + timeout
        while True:
            left = deadline - self.clock()
            if left > 0:
                if call.wait(1, min(left, RECHECK), moved):
                    return True
                if moved():
                    return False
                continue
            if self.orphaned.is_set():
                raise ParentUnavailable(f"{timeout_message}: {self.orphan_reason}")
            if not self.parent_unreachable():
                raise RequestTimeout(timeout_message)
            # The queued request is answered in order once the parent is back: the time it was
            # away must not count (its first answers, e.g. to heartbeats, may come before this one).
            deadline = self.clock() + timeout

    def parent_unreachable(self) -> bool:
        """Whether the parent is being replaced or paused (rather than slow to answer)."""
        return self._forgotten.is_set() or self.link.parent_lost or is_stopped(self.parent_pid)

    def call(self, msg: Message) -> Call:
        return self.link.call(msg)

    def end_call(self, call: Call) -> None:
        self.link.end_call(call)

    def send(self, msg: Message) -> None:
        self.link.send(msg)

    def reply(self, answer: Message) -> None:
        self.link.reply(answer)

    def wait_readopted(self, epoch: int, deadline: float | None = None,
                       cancelled: Callable[[], bool] | None = None) -> bool:
        """Block until a parent has re-adopted this job since ``epoch`` (True), or until no parent
        will (the grace ran out), ``deadline`` passes or ``cancelled()`` holds (False)."""
        with self._adopted:
            while self.epoch == epoch:
                if self.orphaned.is_set() or (cancelled is not None and cancelled()):
                    return False
                left = None if deadline is None else deadline - self.clock()
                if left is not None and left <= 0:
                    return False
                self._adopted.wait(RECHECK if left is None else min(left, RECHECK))
            return True

    # --- the parent went away, or came back as a new process ------------------------------------
    def parent_forgot_us(self) -> None:
        """The parent does not know this job (any thread): it was replaced. Say hello again."""
        if self._closing.is_set() or self.orphaned.is_set():
            return
        if not self._forgotten.is_set():
            log.warning("the parent does not know this job (it was restarted); saying hello again")
        self._forgotten.set()
        self._rehello.set()

    def _lost(self) -> None:
        """No word from the parent for a while (I/O thread): give it ``reconnect_grace`` to return."""
        self._lost_since = since = time.monotonic()
        log.error("no word from the parent; the job goes on for up to %.0fs while it comes back", self.reconnect_grace)
        self._arm_grace(since)

    def _arm_grace(self, since: float) -> None:
        timer = threading.Timer(self.reconnect_grace, self._give_up_if_still_lost, args=(since,))
        timer.daemon = True
        timer.start()

    def _reconnect_loop(self) -> None:
        while not self._closing.is_set():
            self._rehello.wait()
            if self._closing.is_set():
                return
            try:
                self._hello(5.0)
            except Conflict as exc:
                # This job's outcome is recorded already (its final status reached the parent
                # that died before answering): nothing is left to do.
                self._give_up(f"the parent has this job's outcome already: {exc}")
                return
            except Unauthorized as exc:
                # A parent answers but does not know this job: nobody will take it back.
                self._give_up(f"the parent refused to re-adopt the job: {exc}")
                return
            except (RequestTimeout, FlrunnerError) as exc:
                log.warning("hello again failed (%s); retrying", exc)
                self._closing.wait(REHELLO_RETRY)
                continue
            self._rehello.clear()
            self._lost_since = None
            with self._adopted:
                self._forgotten.clear()
                self.epoch += 1  # requests left with the old parent are sent again
                self._adopted.notify_all()
            log.warning("re-adopted by the parent (pid %s)", self.parent_pid)

    def _give_up_if_still_lost(self, since: float) -> None:
        if self._lost_since != since:
            return  # re-adopted, or lost again later (that loss has its own timer)
        if not self.link.parent_lost:
            self._lost_since = None  # the same parent answered again: nothing was lost
            return
        if is_stopped(self.parent_pid):
            log.warning("the parent (pid %s) is paused; waiting another %.0fs", self.parent_pid, self.reconnect_grace)
            self._arm_grace(since)
            return
        self._give_up(f"the parent has been gone for {self.reconnect_grace:g}s")

    def _give_up(self, reason: str) -> None:
        log.error("%s", reason)
        self.orphan_reason = reason
        self.orphaned.set()
        with self._adopted:
            self._adopted.notify_all()
        self._abort_signal.trigger(reason)
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
