"""`ServerEngine`: the `flrunner.ServerEngineSpec` of one job, inside its job process.

The engine keeps NVIDIA FLARE's surface (method names, arguments, return shapes) and hands each
job to a part: the mirror of the parent's site registry (`child.clients.ClientMirror`), the run
status and its reporting (`child.status.StatusReporter`), and aux to and from sites
(`child.aux.EngineAux`). The parent is reached through a port (`child.port.ParentPort`), and what
it pushes comes in through a dispatcher the engine serves (`child.port.parent_pushes`).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

from child.aux import EngineAux
from child.clients import ClientMirror
from child.port import NotAvailableYet, ParentPort, parent_pushes
from child.status import StatusReporter
from flrunner.aux.secure import KeyPair
from flrunner.client import Client
from flrunner.component import Widget
from flrunner.engine_base import EngineBase
from flrunner.fl_context import FLContext
from flrunner.fl_signal import Signal
from flrunner.job import Job
from flrunner.protocol import Dispatcher, Request, aux_ops, job_ops
from flrunner.shareable import Shareable
from flrunner.snapshot import RunSnapshot
from flrunner.spec import ServerEngineSpec
from flrunner.status import RunStatus
from flrunner.transport.wire import Message
from flrunner.workspace import Workspace

log = logging.getLogger(__name__)

SERVER_IDENTITY = "server"


class ServerEngine(EngineBase, ServerEngineSpec):
    """The server engine of one job.

    Args:
        job_id: the job.
        workspace: the parent's workspace (the job's run dir lives in it).
        link: the port to the parent (the job process's `child.session.ParentSession`); None for
            an engine used without a parent (unit tests).
        pushes: the dispatcher of the parent's pushes, which the engine serves (a fresh one if
            None: then `on_push` is the only way in).
        keys: this job process's sealing key pair for secure aux (a fresh one if None).
        abort_signal: the job's abort signal (a fresh one if None).
        status_patience: seconds a final status is sent again while the parent cannot store it.
    """

    def __init__(self, job_id: str, workspace: Workspace, link: ParentPort | None = None, *,
                 pushes: Dispatcher | None = None, keys: KeyPair | None = None, abort_signal: Signal | None = None,
                 status_patience: float = 30.0) -> None:
        super().__init__(SERVER_IDENTITY, job_id, workspace, abort_signal)
        self.link = link
        self.widgets: dict[str, Widget] = {}
        self.client_mirror = ClientMirror(link)
        self.status_reporter = StatusReporter(link, patience=status_patience)
        self._keys = keys if keys is not None else KeyPair()
        self._aux = EngineAux(job_id, link, self.client_mirror, self._keys, self.abort_signal, self.aux_handlers,
                              self.new_context)
        self._pushes = pushes if pushes is not None else parent_pushes()
        self._pushes.on(job_ops.ABORT, self._on_abort)
        self._pushes.on(job_ops.CLIENTS_CHANGED, lambda req: self.client_mirror.on_clients_changed(req.args))
        self._pushes.on(aux_ops.TO_JOB, self._aux.on_site_request)

    # --- components -----------------------------------------------------------------------------
    def add_component(self, component_id: str, component: Any) -> None:
        super().add_component(component_id, component)
        if isinstance(component, Widget):
            self.widgets[component_id] = component

    def get_widget(self, widget_id: str) -> Widget:
        return self.widgets.get(widget_id)  # type: ignore[return-value]

    # --- clients (`ClientMirror`) -----------------------------------------------------------------
    def get_clients(self) -> List[Client]:
        return self.client_mirror.clients()

    def sync_clients_from_main_process(self):
        """Fetch the site list from the parent: in full the first time, then only the changes."""
        return self.client_mirror.sync()

    def get_clients_cached(self) -> List[Client]:
        return self.client_mirror.cached()

    def validate_targets(self, client_names: List[str]) -> Tuple[List[Client], List[str]]:
        """(known clients, names that are not logged-in sites)."""
        by_name = {c.name: c for c in self.get_clients()}
        return [by_name[n] for n in client_names if n in by_name], [n for n in client_names if n not in by_name]

    def get_client_name_from_token(self, token: str) -> str:
        return self.client_mirror.name_from_token(token)  # type: ignore[return-value]

    def on_clients_changed(self, body: dict) -> None:
        """A push from the parent (I/O thread): apply the delta, or mark the cache stale."""
        self.client_mirror.on_clients_changed(body)

    # --- status (`StatusReporter`) ------------------------------------------------------------------
    @property
    def run_status(self) -> RunStatus:
        return self.status_reporter.run_status

    @run_status.setter
    def run_status(self, status: RunStatus) -> None:
        self.status_reporter.run_status = status

    @property
    def exe_error(self) -> str | None:
        return self.status_reporter.exe_error

    @exe_error.setter
    def exe_error(self, error: str | None) -> None:
        self.status_reporter.exe_error = error

    @property
    def progress(self) -> Any:
        return self.status_reporter.progress

    @progress.setter
    def progress(self, progress: Any) -> None:
        self.status_reporter.progress = progress

    def set_run_progress(self, progress: Any) -> None:
        """Set the progress detail sent by the next `update_job_run_status`.

        Raises:
            TypeError: ``progress`` is not a string or a JSON-compatible dict.
            ValueError: it is larger than 16 KB as JSON.
        """
        self.status_reporter.set_progress(progress)

    def update_job_run_status(self):
        """Push run status, progress and execution error; returns the status the parent stored.

        Acknowledged only once the parent has made it durable (`child.status`): a final status is
        sent again while the parent cannot store it, up to the reconnect grace; a progress update
        the parent cannot store now is not, and None is returned for it.

        Raises:
            NotReady: the parent could not store the final status in time.
            FlrunnerError: the parent refused it (e.g. the job already ended).
        """
        return self.status_reporter.update()

    # --- pushes from the parent -----------------------------------------------------------------------
    def on_push(self, msg: Message) -> None:
        """A message the parent pushed (on the link's I/O thread: quick, or handed to a thread)."""
        self._pushes.dispatch(msg, self._answer)

    def _answer(self, answer: Message) -> None:
        if self.link is not None:
            self.link.reply(answer)

    def _on_abort(self, req: Request) -> None:
        log.warning("abort requested by the parent: %s", req.args["reason"])
        self.abort_signal.trigger(req.args["reason"] or "aborted")

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

    # --- aux messaging (`EngineAux`) and site jobs --------------------------------------------------------
    def send_aux_request(self, targets: list, topic: str, request: Shareable, timeout: float, fl_ctx: FLContext,
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
        return self._aux.send(self._target_names(targets), topic, request, timeout, secure)

    def sealing_public_key(self) -> bytes:
        """This job process's public key for secure aux. Its hello gives it to the parent, which
        passes it to the job's sites: they seal their secure requests to the engine with it."""
        return self._keys.public

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

    def _require_link(self) -> ParentPort:
        if self.link is None:
            raise NotAvailableYet("this engine has no connection to a parent")
        return self.link


__all__ = ["NotAvailableYet", "SERVER_IDENTITY", "ServerEngine"]
