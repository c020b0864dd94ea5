"""`EngineAux`: the job's aux requests to its sites, and its sites' requests to the job's engine.

A request goes to the parent, which routes it to every target at once, answers first with the
plan (which sites it asks) and then once per site. A parent that restarts while a request is out
never answers it (the sites answer the dead one), and a new parent refuses it until this job has
said hello again: once the job is re-adopted, the sites that have not answered are asked again,
within what is left of the timeout (`child.session.ParentSession`).

A site's request to the engine comes as a push; it is served on a pool of its own, so the link's
I/O thread never waits for a handler. Secure requests both ways are sealed end to end
(`flrunner.aux.secure`); a site's is opened only with the key the job's site list holds for the
site the parent says sent it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

from child.clients import ClientMirror
from child.port import NotAvailableYet, ParentPort
from flrunner.aux.handling import REASON_HEADER, failure_reply, handler_reply, reply_from, serve_request
from flrunner.aux.payload import encode_shareable
from flrunner.aux.secure import Direction, KeyPair, SealedFrom, SealedRequest, seal_request, sealed_from
from flrunner.client import PUBLIC_KEY_PROP
from flrunner.errors import Rc, error_for_rc
from flrunner.fl_context import FLContext
from flrunner.fl_signal import Signal
from flrunner.protocol import Request, aux_ops
from flrunner.security.curve import key_from_z85
from flrunner.security.errors import SealedError
from flrunner.shareable import ReturnCode, Shareable, make_reply
from flrunner.transport.wire import Message
from flrunner.util.logthrottle import LogThrottle

log = logging.getLogger(__name__)
#: A site sending requests that do not open must not fill the job's log.
_refusals = LogThrottle(log)

#: Threads serving sites' requests to the engine at once.
SERVING_THREADS = 8


class EngineAux:
    """The job engine's side of aux.

    Args:
        job_id: the job.
        port: the parent; None for an engine used without a parent (it cannot send).
        clients: the job's mirror of the site registry (the sites' provisioned keys).
        keys: this job process's sealing key pair.
        abort_signal: the job's: an aborted job stops waiting for replies.
        handlers: the engine's aux handlers by topic (the engine's own dict, registered into later).
        new_context: makes the context a handler runs in.
    """

    def __init__(self, job_id: str, port: ParentPort | None, clients: ClientMirror, keys: KeyPair,
                 abort_signal: Signal, handlers: Mapping[str, Callable], new_context: Callable[[], FLContext]) -> None:
        self.job_id = job_id
        self._port = port
        self._clients = clients
        self._keys = keys
        self._abort_signal = abort_signal
        self._handlers = handlers
        self._new_context = new_context
        self._pool = ThreadPoolExecutor(max_workers=SERVING_THREADS, thread_name_prefix="aux")

    # --- requests to sites ------------------------------------------------------------------------------
    def send(self, names: list[str] | None, topic: str, request: Shareable, timeout: float,
             secure: bool) -> dict[str, Shareable]:
        """`child.engine.ServerEngine.send_aux_request` to ``names`` (None: every site of the job)."""
        frames = encode_shareable(request)
        body: dict[str, Any] = {"targets": names, "topic": topic, "timeout": max(float(timeout), 0.0)}
        port = self._require_port()
        sealed: SealedRequest | None = None
        if secure:
            sealed = seal_request(frames, self._keys.secret, self._site_keys(names), Direction.TO_SITES,
                                  self.job_id, topic)
            frames, body["sealed"], body["sender_key"] = sealed.frames, sealed.keys, self._keys.public
        if timeout <= 0:
            body["fire_and_forget"] = True
            aux_ops.FROM_JOB.send(port, frames, **body)
            return {}
        replies, planned, parent_trouble = self._exchange(port, frames, body, time.monotonic() + timeout, sealed)
        for name in planned if planned is not None else (names or []):
            if self._abort_signal.triggered:
                replies.setdefault(name, make_reply(ReturnCode.TASK_ABORTED, {REASON_HEADER: "the job was aborted"}))
            elif parent_trouble:
                # NVIDIA FLARE's answer for an exchange that failed on the way.
                replies.setdefault(name, failure_reply(Rc.UNAVAILABLE, (
                    f"no reply from site '{name}' within {timeout:g}s: the parent was restarted or unreachable "
                    f"while the request was out")))
            replies.setdefault(name, failure_reply(Rc.TIMEOUT, f"site '{name}' did not answer within {timeout:g}s"))
        return replies

    def _exchange(self, port: ParentPort, frames: list, body: dict, deadline: float, sealed: SealedRequest | None
                  ) -> tuple[dict[str, Shareable], list[str] | None, bool]:
        """Ask the parent, and again after each re-adoption for the sites that have not answered.

        Returns the replies by site, the sites the parent planned to ask (None if it never said),
        and whether the parent was restarted or unreachable meanwhile.
        """
        replies: dict[str, Shareable] = {}
        planned: list[str] | None = None
        aborted = lambda: self._abort_signal.triggered  # noqa: E731
        parent_trouble = False
        while True:
            epoch = port.epoch
            moved = lambda epoch=epoch: aborted() or port.epoch != epoch  # noqa: E731
            call = aux_ops.FROM_JOB.start(port, frames, **body)
            answers: list[Message] = []
            try:
                if not call.wait(1, max(0.0, deadline - time.monotonic()), moved):
                    parent_trouble = parent_trouble or port.epoch != epoch or port.parent_unreachable()
                    if port.wait_readopted(epoch, deadline, aborted):
                        continue
                    break
                plan = call.replies[0]
                if plan.rc == Rc.UNAUTHORIZED:  # a restarted parent, before this job said hello again
                    parent_trouble = True
                    port.parent_forgot_us()
                    if port.wait_readopted(epoch, deadline, aborted):
                        continue
                    break
                if plan.rc != Rc.OK:
                    raise error_for_rc(plan.rc or Rc.ERROR, str(plan.body.get("reason", plan.rc)))
                asked = list(plan.body.get("targets") or [])
                planned = planned if planned is not None else asked
                call.wait(1 + len(asked), max(0.0, deadline - time.monotonic()), moved)
                answers = list(call.replies[1:])
            finally:
                port.end_call(call)
            for m in answers:
                site = m.body.get("site")
                if isinstance(site, str):
                    replies[site] = reply_from(m) if sealed is None else sealed.open_reply(m, site, f"site '{site}'")
            missing = [n for n in asked if n not in replies]
            if not missing:
                break
            parent_trouble = parent_trouble or port.epoch != epoch or port.parent_unreachable()
            if not port.wait_readopted(epoch, deadline, aborted):
                break
            body = {**body, "targets": missing}
        return replies, planned, parent_trouble

    def _site_keys(self, names: list[str] | None) -> dict[str, bytes]:
        """The provisioned public keys of the sites named (of every known site for None). A site
        without one is left out: the parent answers for it with the reason."""
        clients = {c.name: c for c in self._clients.clients()}
        if names is not None and not clients.keys() >= set(names):  # a site may have logged in since
            clients = {c.name: c for c in self._clients.sync()}
        keys = {}
        for name in names if names is not None else list(clients):
            z85_key = clients[name].get_prop(PUBLIC_KEY_PROP) if name in clients else None
            if isinstance(z85_key, str):
                try:
                    keys[name] = key_from_z85(z85_key)
                except SealedError as exc:  # left out: the parent says this site has no usable key
                    log.warning("site %s: its public key is unusable: %s", name, exc)
        return keys

    def _require_port(self) -> ParentPort:
        if self._port is None:
            raise NotAvailableYet("this engine has no connection to a parent")
        return self._port

    # --- requests from sites ----------------------------------------------------------------------------
    def on_site_request(self, req: Request) -> None:
        """A site's request, pushed by the parent (I/O thread): served and answered from the pool."""
        self._pool.submit(self._serve, req)

    def _serve(self, req: Request) -> None:
        site, topic = req.args["site"], req.args["topic"]
        serve_request(
            req, lambda: self._sealed_from(site, topic), lambda frames: self._reply_to(site, topic, frames),
            cannot_open=f"the job's engine cannot open the secure request of site '{site}'",
            cannot_travel="the reply cannot travel",
            on_refused=lambda exc: _refusals.warning("a secure request of site %s for '%s' was refused: %s",
                                                     site, topic, exc))

    def _sealed_from(self, site: str, topic: str) -> SealedFrom:
        """The keys of a site's sealed request: the key the job's site list holds for the site the
        parent says sent it (never a key the request itself names), so it was sealed by that site."""
        site_key = self._site_keys([site]).get(site)
        if site_key is None:
            raise SealedError(f"site '{site}' has no provisioned key in the job's site list (secure aux needs a "
                              f"parent and sites started with --kit)")
        return sealed_from(self._keys.secret, site_key, Direction.TO_ENGINE, self.job_id, topic)

    def _reply_to(self, site: str, topic: str, frames: list) -> Shareable:
        handler = self._handlers.get(topic)

        def run(request: Shareable) -> Any:
            fl_ctx = self._new_context()
            fl_ctx.set_prop("__peer_name__", site, private=True, sticky=False)
            return handler(topic, request, fl_ctx)  # type: ignore[misc]

        return handler_reply(frames, run if handler is not None else None,
                             unknown=f"the job's engine has no handler for '{topic}'", returned_by="handler",
                             on_exception=lambda: log.exception("aux handler for '%s' failed", topic))


__all__ = ["EngineAux"]
