"""What the server engine of a job and the site engine of a job share: components, contexts,
events and aux handler registration."""

from __future__ import annotations

import logging
from typing import Any, Callable

from flrunner.component import Widget
from flrunner.fl_context import FLContext, FLContextKey, FLContextManager
from flrunner.fl_signal import Signal
from flrunner.workspace import Workspace

log = logging.getLogger(__name__)


class EngineBase:
    """The common state of an engine of one job, as seen by ``identity`` (``server`` or a site).

    Not an `EngineSpec` itself: the engines that use it implement the spec (NVFlare's method
    names and arguments) and inherit these methods from here.
    """

    def __init__(self, identity: str, job_id: str, workspace: Workspace) -> None:
        self.job_id = job_id
        self.workspace = workspace
        self.abort_signal = Signal()
        self.components: dict[str, Any] = {}
        self.aux_handlers: dict[str, Callable] = {}
        self.fl_ctx_mgr = FLContextManager(
            engine=self, identity_name=identity, job_id=job_id,
            private_stickers={FLContextKey.WORKSPACE_OBJECT: workspace,
                              FLContextKey.RUN_ABORT_SIGNAL: self.abort_signal})

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
        """Call ``handle_event`` of every component that has one; a failing handler is logged."""
        for cid, comp in list(self.components.items()):
            handler = getattr(comp, "handle_event", None)
            if callable(handler):
                try:
                    handler(event_type, fl_ctx)
                except Exception:
                    log.exception("component '%s' failed handling event %s", cid, event_type)

    def register_aux_message_handler(self, topic: str, message_handle_func):
        """Register ``message_handle_func(topic, request, fl_ctx) -> Shareable`` for ``topic``.

        Raises:
            ValueError: the topic is not a non-empty string, or already has a handler.
            TypeError: ``message_handle_func`` is not callable.
        """
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"aux topic must be a non-empty string, got {topic!r}")
        if not callable(message_handle_func):
            raise TypeError(f"aux handler for topic '{topic}' must be callable, "
                            f"got {type(message_handle_func).__name__}")
        if topic in self.aux_handlers:
            raise ValueError(f"an aux handler is already registered for topic '{topic}'")
        self.aux_handlers[topic] = message_handle_func
