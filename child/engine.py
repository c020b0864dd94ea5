"""`ServerEngine`: the `flrunner.ServerEngineSpec` of one job, inside its job process."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from flrunner.client import PUBLIC_KEY_PROP, Client
from flrunner.component import Widget
from flrunner.engine_base import EngineBase
from flrunner.errors import EncodeError, FlrunnerError, NotReady, RequestTimeout, error_for_rc
from flrunner.fl_context import FLContext
from flrunner.job import Job
from flrunner.aux.payload import REASON_HEADER, decode_shareable, encode_shareable, failure_reply, reply_from
from flrunner.protocol import Dispatcher, Rc, Request, aux_ops, job_ops
from flrunner.security.errors import SealedError
from flrunner.security.curve import key_from_z85, new_secret_key, public_key_of
from flrunner.shareable import ReturnCode, Shareable, make_reply
from flrunner.snapshot import RunSnapshot
from flrunner.spec import ServerEngineSpec
from flrunner.status import RunStatus, clip_error, progress_problem
from flrunner.transport.wire import Message
from flrunner.workspace import Workspace

from flrunner.util.logthrottle import LogThrottle

if TYPE_CHECKING:
    from child.session import ParentSession


def _sealed():
    """`flrunner.security.sealed`, imported when a payload is first sealed or opened: PyNaCl costs
    a job process ~10 ms and its memory at start, and most jobs never seal (see
    `flrunner.security.curve`). Warm job processes find it preloaded by the template."""
    from flrunner.security import sealed

    return sealed

log = logging.getLogger(__name__)
#: A site sending requests that do not open must not fill the job's log.
_refusals = LogThrottle(log)

SERVER_IDENTITY = "server"


class NotAvailableYet(FlrunnerError, NotImplementedError):
    """An engine feature that is not built yet."""


class ServerEngine(EngineBase, ServerEngineSpec):
    """The server engine of one job.

    Args:
        job_id: the job.
        workspace: the parent's workspace (the job's run dir lives in it).
        link: the connection to the parent; None for an engine used without a parent (unit tests).
    """

    def __init__(self, job_id: str, workspace: Workspace, link: ParentSession | None = None) -> None:
        super().__init__(SERVER_IDENTITY, job_id, workspace)
        self.link = link
        self.run_status: RunStatus = RunStatus.RUNNING
        self.exe_error: str | None = None
        self.progress: Any = None
        #: Seconds one `update_job_run_status` attempt waits for a serving parent to make it durable.
        self.status_timeout = 30.0
        #: Seconds `update_job_run_status` keeps trying while the parent cannot store it.
        self.status_patience = 30.0
        self.widgets: dict[str, Widget] = {}
        self._aux_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="aux")
        self._pushes = Dispatcher(job_ops.TO_JOB, "job process",
                                  on_refused=lambda msg, exc: log.warning("ignored a bad push from the parent: %s", exc))
        self._pushes.on(job_ops.ABORT, self._on_abort)
        self._pushes.on(job_ops.CLIENTS_CHANGED, lambda req: self.on_clients_changed(req.args))
        self._pushes.on(aux_ops.TO_JOB, self._on_site_aux)
        self._clients: dict[str, Client] = {}
        self._revision: int | None = None
        self._pushed_revision = -1
        self._clients_lock = threading.Lock()
        self._stale = False
        #: This job process's (secret, public) key for secure aux: made at its hello, never written.
        self._sealing_keys: tuple[bytes, bytes] | None = None
        self._sealing_lock = threading.Lock()

    # --- components -----------------------------------------------------------------------------
    def add_component(self, component_id: str, component: Any) -> None:
        super().add_component(component_id, component)
        if isinstance(component, Widget):
            self.widgets[component_id] = component

    def get_widget(self, widget_id: str) -> Widget:
        return self.widgets.get(widget_id)  # type: ignore[return-value]

    def get_clients(self) -> List[Client]:
        if self._revision is None or self._stale:
            self.sync_clients_from_main_process()
        with self._clients_lock:
            return list(self._clients.values())

    def sync_clients_from_main_process(self):
        """Fetch the site list from the parent: in full the first time, then only the changes."""
        if self.link is None:
            return self.get_clients_cached()
        with self._clients_lock:
            since = None if self._stale else self._revision
        reply = job_ops.SYNC_CLIENTS.call(self.link, since=since).body
        with self._clients_lock:
            revision = reply["revision"]
            # A push handled while this request was in flight may already be newer than the
            # reply: then the reply is old news, and must neither roll the cache back nor
            # clear a stale mark that the push set.
            if self._revision is not None and revision < self._revision:
                return list(self._clients.values())
            if "clients" in reply:
                self._clients = {d["name"]: Client.from_dict(d) for d in reply["clients"]}
            else:
                self._apply(reply["changes"])
            self._revision = revision
            self._stale = self._pushed_revision > revision
            return list(self._clients.values())

    def reset_clients(self) -> None:
        """Forget the registry revision (a new parent numbers it afresh); the next use syncs in full."""
        with self._clients_lock:
            self._revision = None
            self._pushed_revision = -1
            self._stale = True

    def get_clients_cached(self) -> List[Client]:
        with self._clients_lock:
            return list(self._clients.values())

    def validate_targets(self, client_names: List[str]) -> Tuple[List[Client], List[str]]:
        """(known clients, names that are not logged-in sites)."""
        by_name = {c.name: c for c in self.get_clients()}
        return [by_name[n] for n in client_names if n in by_name], [n for n in client_names if n not in by_name]

    def get_client_name_from_token(self, token: str) -> str:
        if self.link is not None and (self._revision is None or self._stale):
            self.sync_clients_from_main_process()
        with self._clients_lock:
            for c in self._clients.values():
                if c.token and c.token == token:
                    return c.name
        return None  # type: ignore[return-value]

    def on_clients_changed(self, body: dict) -> None:
        """A push from the parent (I/O thread): apply the delta, or mark the cache stale."""
        revision, base = body.get("revision"), body.get("base")
        if not isinstance(revision, int) or not isinstance(base, int):
            log.warning("ignored a clients_changed push without integer revision/base")
            return
        with self._clients_lock:
            self._pushed_revision = max(self._pushed_revision, revision)
            if self._revision is not None and base == self._revision:
                self._apply(body.get("changes", []))
                self._revision = revision
            elif self._revision is None or revision > self._revision:
                self._stale = True

    def _apply(self, changes: list) -> None:
        for change in changes:
            if change.get("op") == "add":
                c = Client.from_dict(change["client"])
                self._clients[c.name] = c
            elif change.get("op") == "remove":
                self._clients.pop(change.get("name"), None)

    # --- status ---------------------------------------------------------------------------------------------
    def set_run_progress(self, progress: Any) -> None:
        """Set the progress detail sent by the next `update_job_run_status`.

        Raises:
            TypeError: ``progress`` is not a string or a JSON-compatible dict.
            ValueError: it is larger than 16 KB as JSON.
        """
        problem = progress_problem(progress)
        if problem is not None:
            raise (ValueError if problem.startswith("is ") else TypeError)(f"progress {problem}")
        self.progress = progress

    def update_job_run_status(self):
        """Push run status, progress and execution error; returns the status the parent stored.

        Acknowledged only once the parent has made it durable. A parent being replaced is waited
        for (`child.session.ParentSession.request`). A parent whose store cannot be written now (a
        full disk) keeps nothing and says so: a final status is sent again, with back-off, for up
        to ``status_patience`` seconds; a progress update is not (the next one carries the latest
        progress), and None is returned for it.

        Raises:
            NotReady: the parent could not store the final status within ``status_patience``.
            FlrunnerError: the parent refused it (e.g. the job already ended).
        """
        if self.link is None:
            return self.run_status.value
        final = self.run_status.is_final
        deadline = time.monotonic() + self.status_patience
        pause = 0.2
        while True:
            try:
                return job_ops.RUN_STATUS.call(self.link, wait=self.status_timeout, status=self.run_status.value,
                                               progress=self.progress, error=clip_error(self.exe_error)).body["status"]
            except NotReady as exc:
                if not final:
                    _refusals.warning("progress not stored: %s", exc)
                    return None
                if time.monotonic() + pause >= deadline:
                    raise
                log.warning("final status not stored yet (%s); sending it again in %.1fs", exc, pause)
            except RequestTimeout:
                if time.monotonic() + pause >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def on_push(self, msg: Message) -> None:
        """A message the parent pushed (on the link's I/O thread: quick, or handed to a thread)."""
        self._pushes.dispatch(msg, self._answer)

    def _answer(self, answer: Message) -> None:
        if self.link is not None:
            self.link.reply(answer)

    def _on_abort(self, req: Request) -> None:
        log.warning("abort requested by the parent: %s", req.args["reason"])
        self.abort_signal.trigger(req.args["reason"] or "aborted")

    def _on_site_aux(self, req: Request) -> None:
        self._aux_pool.submit(self._serve_site_aux, req.msg)  # answered from the pool

    # --- persistence -------------------------------------------------------------------------------------
    def persist_components(self, fl_ctx: FLContext, completed: bool):
        """Snapshot components that have ``get_persist_state`` to the run dir (atomic write)."""
        snapshot = RunSnapshot(self.job_id)
        for cid, comp in self.components.items():
            getter = getattr(comp, "get_persist_state", None)
            if callable(getter):
                snapshot.set_component_snapshot(cid, getter(fl_ctx))
        snapshot.completed = completed
        snapshot.save(self.workspace.get_snapshot_path(self.job_id))
        return snapshot

    def restore_components(self, snapshot: RunSnapshot, fl_ctx: FLContext):
        """Give each component that has ``restore`` its state from ``snapshot``."""
        for cid, comp in self.components.items():
            restorer = getattr(comp, "restore", None)
            state = snapshot.get_component_snapshot(cid)
            if callable(restorer) and cid in snapshot.component_states:
                restorer(state, fl_ctx)

    # --- aux messaging and site jobs ------------------------------------------------------------------
    def send_aux_request(self, targets: [], topic: str, request: Shareable, timeout: float, fl_ctx: FLContext,
                         optional=False, secure=False) -> dict:
        """Send ``request`` to sites through the parent; {site name: reply Shareable}.

        All targets are asked at once. A site that does not answer within ``timeout`` gets a reply
        with return code ``TIMEOUT``; an unknown target ``NOT_FOUND``; an offline one, or one that
        leaves while asked, ``COMMUNICATION_ERROR`` (at once, not at the timeout). ``timeout`` 0
        sends and returns ``{}`` at once.

        With ``secure`` the request and the replies are encrypted end to end between this job
        process and each site (`flrunner.security.sealed`): the parent routes ciphertext. A site
        without a provisioned key is not sent the request; its reply is ``UNAUTHENTICATED`` with
        the reason. A reply is opened only if that site's key sealed it.
        """
        names = self._target_names(targets)
        frames = encode_shareable(request)
        body: dict[str, Any] = {"targets": names, "topic": topic, "timeout": max(float(timeout), 0.0)}
        link = self._require_link()
        site_keys: dict[str, bytes] | None = None
        if secure:
            frames, site_keys = self._seal_request(names, frames, body)
            replied_to = _sealed().reply_context(frames[0])
        if timeout <= 0:
            body["fire_and_forget"] = True
            aux_ops.FROM_JOB.send(link, frames, **body)
            return {}
        deadline = time.monotonic() + timeout
        replies: dict[str, Shareable] = {}
        planned: list[str] | None = None
        aborted = lambda: self.abort_signal.triggered  # noqa: E731
        parent_trouble = False
        # A parent that restarts while this request is out never answers it (the sites answer the
        # dead one), and a new parent refuses it until this job has said hello again: once the
        # job is re-adopted, the sites that have not answered are asked again, within what is
        # left of the timeout (`ParentSession`).
        while True:
            epoch = link.epoch
            moved = lambda: aborted() or link.epoch != epoch  # noqa: E731
            call = aux_ops.FROM_JOB.start(link, frames, **body)
            answers: list[Message] = []
            try:
                if not call.wait(1, max(0.0, deadline - time.monotonic()), moved):
                    parent_trouble = parent_trouble or link.epoch != epoch or link.parent_unreachable()
                    if link.wait_readopted(epoch, deadline, aborted):
                        continue
                    break
                plan = call.replies[0]
                if plan.rc == Rc.UNAUTHORIZED:  # a restarted parent, before this job said hello again
                    parent_trouble = True
                    link.parent_forgot_us()
                    if link.wait_readopted(epoch, deadline, aborted):
                        continue
                    break
                if plan.rc != Rc.OK:
                    raise error_for_rc(plan.rc or Rc.ERROR, str(plan.body.get("reason", plan.rc)))
                asked = list(plan.body.get("targets") or [])
                planned = planned if planned is not None else asked
                call.wait(1 + len(asked), max(0.0, deadline - time.monotonic()), moved)
                answers = list(call.replies[1:])
            finally:
                link.end_call(call)
            for m in answers:
                if isinstance(m.body.get("site"), str):
                    replies[m.body["site"]] = (reply_from(m) if site_keys is None
                                               else self._open_reply(m, site_keys, replied_to))
            missing = [n for n in asked if n not in replies]
            if not missing:
                break
            parent_trouble = parent_trouble or link.epoch != epoch or link.parent_unreachable()
            if not link.wait_readopted(epoch, deadline, aborted):
                break
            body = {**body, "targets": missing}
        for name in planned if planned is not None else (names or []):
            if self.abort_signal.triggered:
                replies.setdefault(name, make_reply(ReturnCode.TASK_ABORTED, {REASON_HEADER: "the job was aborted"}))
            elif parent_trouble:
                # NVIDIA FLARE's answer for an exchange that failed on the way.
                replies.setdefault(name, failure_reply(Rc.UNAVAILABLE, (
                    f"no reply from site '{name}' within {timeout:g}s: the parent was restarted or unreachable "
                    f"while the request was out")))
            replies.setdefault(name, failure_reply(Rc.TIMEOUT, f"site '{name}' did not answer within {timeout:g}s"))
        return replies

    def _seal_request(self, names: list[str] | None, frames: list, body: dict) -> tuple[list, dict[str, bytes]]:
        """Encrypt the payload once and seal its key for each target that has a provisioned key.

        Returns the ciphertext frames and ``{site: public key}`` of the sites it was sealed for
        (their replies must be sealed by those keys). Targets without a key get nothing sealed:
        the parent answers for them with the reason.
        """
        site_keys = self._site_keys(names)
        secret, public = self._sealing_key_pair()
        sealed = _sealed()
        blob, body["sealed"] = sealed.seal_request(frames, secret, site_keys,
                                                   context=sealed.request_context(self.job_id, body["topic"]))
        body["sender_key"] = public
        return [blob], site_keys

    def _site_keys(self, names: list[str] | None) -> dict[str, bytes]:
        """The provisioned public keys of the sites named (of every known site for None)."""
        clients = {c.name: c for c in self.get_clients()}
        if names is not None and not clients.keys() >= set(names):  # a site may have logged in since
            clients = {c.name: c for c in self.sync_clients_from_main_process()}
        keys = {}
        for name in names if names is not None else list(clients):
            z85_key = clients[name].get_prop(PUBLIC_KEY_PROP) if name in clients else None
            if isinstance(z85_key, str):
                try:
                    keys[name] = key_from_z85(z85_key)
                except SealedError as exc:  # left out: the parent says this site has no usable key
                    log.warning("site %s: its public key is unusable: %s", name, exc)
        return keys

    def sealing_public_key(self) -> bytes:
        """This job process's public key for secure aux. Its hello gives it to the parent, which
        passes it to the job's sites: they seal their secure requests to the engine with it."""
        return self._sealing_key_pair()[1]

    def _sealing_key_pair(self) -> tuple[bytes, bytes]:
        with self._sealing_lock:
            if self._sealing_keys is None:
                secret = new_secret_key()
                self._sealing_keys = (secret, public_key_of(secret))
            return self._sealing_keys

    def _open_reply(self, msg: Message, site_keys: dict[str, bytes], context: bytes) -> Shareable:
        """A site's answer to a secure request: a reason in the clear (from the parent or the site,
        never payload), or a payload that opens only if that site's key sealed it for this request."""
        site = msg.body["site"]
        if msg.rc not in (None, Rc.OK):
            return reply_from(msg)
        if site not in site_keys:
            return failure_reply(Rc.BAD_REQUEST, f"site '{site}' answered a secure request not sealed for it")
        try:
            frames = _sealed().open_reply(msg.frames, self._sealing_key_pair()[0], site_keys[site], context=context)
        except SealedError as exc:
            return failure_reply(Rc.BAD_REQUEST, f"the secure reply of site '{site}' cannot be opened: {exc}")
        return reply_from(replace(msg, frames=frames))

    def check_client_resources(self, job: Job, resource_reqs: Dict[str, dict], fl_ctx: FLContext
                               ) -> Dict[str, Tuple[bool, Optional[str]]]:
        """Ask each site whether its requirements fit, reserving them: {site: (is_enough, token)}."""
        results = job_ops.CHECK_RESOURCES.call(self._require_link(), resource_reqs=dict(resource_reqs)).body["results"]
        for site, (ok, _, reason) in results.items():
            if not ok:
                log.info("site %s lacks resources for job %s: %s", site, self.job_id, reason)
        return {site: (bool(ok), token) for site, (ok, token, _) in results.items()}

    def cancel_client_resources(self, resource_check_results: Dict[str, Tuple[bool, str]],
                                resource_reqs: Dict[str, dict], fl_ctx: FLContext):
        """Release the reservations of a `check_client_resources`."""
        tokens = {site: token for site, (ok, token) in resource_check_results.items() if ok and token}
        if tokens:
            job_ops.CANCEL_RESOURCES.call(self._require_link(), tokens=tokens)

    def start_client_job(self, job_id, client_sites, fl_ctx: FLContext):
        """Start this job's site app on ``client_sites`` (names, Clients, or {name: reservation token}).

        Returns {site: (started, reason)}.
        """
        if job_id != self.job_id:
            raise ValueError(f"job {self.job_id} cannot start another job ({job_id}) on sites")
        tokens = {k: v for k, v in client_sites.items() if isinstance(v, str)} if isinstance(client_sites, dict) else {}
        sites = self._target_names(list(client_sites)) or []
        results = job_ops.START_CLIENT_JOB.call(self._require_link(), sites=sites, tokens=tokens).body["results"]
        return {site: (bool(ok), reason) for site, (ok, reason) in results.items()}

    @staticmethod
    def _target_names(targets: Any) -> list[str] | None:
        if not targets:
            return None
        names = []
        for t in targets:
            name = t if isinstance(t, str) else getattr(t, "name", None)
            if not isinstance(name, str):
                raise TypeError(f"an aux target must be a site name or a Client, got {type(t).__name__}")
            names.append(name)
        return names

    def _require_link(self) -> ParentSession:
        if self.link is None:
            raise NotAvailableYet("this engine has no connection to a parent")
        return self.link

    # --- requests from sites --------------------------------------------------------------------------------
    def _serve_site_aux(self, msg: Message) -> None:
        """Serve a site's aux request (on the aux pool): open it if it is sealed, run the topic's
        handler, and answer, sealed back to the site if the request was. A sealed request that does
        not open is answered with the reason, in the clear, and its handler never runs."""
        body = msg.body
        try:
            frames, site_key = self._open_site_request(msg)
        except SealedError as exc:
            _refusals.warning("a secure request of site %s for '%s' was refused: %s", body["site"], body["topic"], exc)
            if not body.get("fire_and_forget") and self.link is not None:
                self.link.reply(aux_ops.TO_JOB.answer(msg, rc=exc.rc, reason=f"the job's engine cannot open the secure "
                                                                            f"request of site '{body['site']}': {exc}"))
            return
        reply = self._handle_site_request(body["site"], body["topic"], frames)
        if body.get("fire_and_forget") or self.link is None:
            return
        try:
            out = encode_shareable(reply)
        except EncodeError as exc:
            self.link.reply(aux_ops.TO_JOB.answer(msg, rc=Rc.ERROR, reason=f"the reply cannot travel: {exc}"))
            return
        if site_key is not None:
            sealed = _sealed()
            out = sealed.seal_reply(out, self._sealing_key_pair()[0], site_key,
                                    context=sealed.reply_context(msg.frames[0]))
        self.link.reply(aux_ops.TO_JOB.answer(msg, out))

    def _open_site_request(self, msg: Message) -> tuple[list, bytes | None]:
        """A site's request frames, and that site's public key if the request came sealed.

        A sealed request opens only with the key the job's site list holds for the site the parent
        says sent it (never a key the request itself names): so it was sealed by that site.

        Raises:
            SealedError: the site has no usable key in the site list, or the request does not open
                (tampered with, sealed for another key, job, topic or direction).
        """
        sealed_key = msg.body.get("sealed_key")
        if sealed_key is None:
            return msg.frames, None
        site, topic = msg.body["site"], msg.body["topic"]
        site_key = self._site_keys([site]).get(site)
        if site_key is None:
            raise SealedError(f"site '{site}' has no provisioned key in the job's site list (secure aux needs a "
                              f"parent and sites started with --kit)")
        sealed = _sealed()
        frames = sealed.open_request(msg.frames, sealed_key, self._sealing_key_pair()[0], site_key,
                                     context=sealed.site_request_context(self.job_id, topic))
        return frames, site_key

    def _handle_site_request(self, site: str, topic: str, frames: list) -> Shareable:
        """The reply of the topic's handler to a site's request, or a reply saying why there is none."""
        try:
            request = decode_shareable(frames)
        except FlrunnerError as exc:
            return failure_reply(Rc.BAD_REQUEST, f"undecodable request: {exc}")
        handler = self.aux_handlers.get(topic)
        if handler is None:
            return make_reply(ReturnCode.TOPIC_UNKNOWN,
                              {REASON_HEADER: f"the job's engine has no handler for '{topic}'"})
        fl_ctx = self.new_context()
        fl_ctx.set_prop("__peer_name__", site, private=True, sticky=False)
        try:
            reply = handler(topic, request, fl_ctx)
        except Exception as exc:
            log.exception("aux handler for '%s' failed", topic)
            return make_reply(ReturnCode.EXECUTION_EXCEPTION, {REASON_HEADER: f"{type(exc).__name__}: {exc}"[:2000]})
        if not isinstance(reply, Shareable):
            return make_reply(ReturnCode.EXECUTION_RESULT_ERROR,
                              {REASON_HEADER: f"handler returned {type(reply).__name__}, not a Shareable"})
        return reply
