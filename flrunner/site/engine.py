"""`ClientEngine`: the engine a site's job components see (the site side of NVFlare's EngineSpec)."""

from __future__ import annotations

import logging
from typing import Any, Callable

from flrunner.component import Widget
from flrunner.errors import FlrunnerError
from flrunner.fl_context import FLContext, FLContextKey, FLContextManager
from flrunner.fl_signal import Signal
from flrunner.shareable import Shareable
from flrunner.spec import EngineSpec
from flrunner.workspace import Workspace

log = logging.getLogger(__name__)

SERVER = "server"


class ClientEngine(EngineSpec):
    """The engine of one job on one site.

    Args:
        site_name: this site.
        job_id: the job.
        workspace: the site's folder for this job (``get_run_dir``/``get_app_dir`` point into it).
        send_to_server: sends an aux request to the job's engine: (topic, request, timeout,
            fire_and_forget) -> reply Shareable.
    """

    def __init__(self, site_name: str, job_id: str, workspace: Workspace,
                 send_to_server: Callable[[str, Shareable, float, bool], Shareable]) -> None:
        self.site_name = site_name
        self.job_id = job_id
        self.workspace = workspace
        self.abort_signal = Signal()
        self.components: dict[str, Any] = {}
        self.aux_handlers: dict[str, Callable] = {}
        self._send_to_server = send_to_server
        self.fl_ctx_mgr = FLContextManager(
            engine=self, identity_name=site_name, job_id=job_id,
            private_stickers={FLContextKey.WORKSPACE_OBJECT: workspace, FLContextKey.RUN_ABORT_SIGNAL: self.abort_signal})

    def add_component(self, component_id: str, component: Any) -> None:
        if component_id in self.components:
            raise ValueError(f"duplicate component id '{component_id}'")
        self.components[component_id] = component

    def get_component(self, component_id: str) -> object:
        return self.components.get(component_id)

    def get_widget(self, widget_id: str) -> Widget:
        comp = self.components.get(widget_id)
        return comp if isinstance(comp, Widget) else None  # type: ignore[return-value]

    def get_workspace(self) -> Workspace:
        return self.workspace

    def new_context(self) -> FLContext:
        return self.fl_ctx_mgr.new_context()

    def fire_event(self, event_type: str, fl_ctx: FLContext):
        for cid, comp in list(self.components.items()):
            handler = getattr(comp, "handle_event", None)
            if callable(handler):
                try:
                    handler(event_type, fl_ctx)
                except Exception:
                    log.exception("site component '%s' failed handling event %s", cid, event_type)

    def register_aux_message_handler(self, topic: str, message_handle_func):
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"aux topic must be a non-empty string, got {topic!r}")
        if not callable(message_handle_func):
            raise TypeError(f"aux handler for topic '{topic}' must be callable, got {type(message_handle_func).__name__}")
        if topic in self.aux_handlers:
            raise ValueError(f"an aux handler is already registered for topic '{topic}'")
        self.aux_handlers[topic] = message_handle_func

    def send_aux_request(self, targets: [], topic: str, request: Shareable, timeout: float, fl_ctx: FLContext,
                         optional=False, secure=False) -> dict:
        """Send to the job's server engine (the only target a site has); returns {"server": reply}."""
        names = [t if isinstance(t, str) else getattr(t, "name", t) for t in (targets or [SERVER])]
        if any(n != SERVER for n in names):
            raise ValueError(f"a site can only send aux requests to 'server', not {names}")
        if secure:
            raise FlrunnerError("secure aux messages are not available yet")
        reply = self._send_to_server(topic, request, float(timeout), timeout <= 0)
        return {} if timeout <= 0 else {SERVER: reply}
