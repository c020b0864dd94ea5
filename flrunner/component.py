"""Base classes for job components, with NVIDIA FLARE's names.

flrunner duck-types components: any object with ``handle_event(event_type, fl_ctx)`` receives run
events, and any object with ``start_controller``/``control_flow``/``stop_controller`` can be a
workflow. These bases are conveniences for job authors, not requirements.
"""

from __future__ import annotations

import logging

from flrunner.fl_context import FLContext
from flrunner.fl_signal import Signal


class FLComponent:
    """A component of a job: receives events, logs under its own name."""

    def __init__(self) -> None:
        self._name = type(self).__name__
        self.logger = logging.getLogger(self._name)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Called for every event fired in the job; override to react."""

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        engine = fl_ctx.get_engine()
        if engine is not None:
            engine.fire_event(event_type, fl_ctx)

    def log_info(self, fl_ctx: FLContext, msg: str) -> None:
        self.logger.info("[job=%s] %s", fl_ctx.get_job_id(), msg)

    def log_warning(self, fl_ctx: FLContext, msg: str) -> None:
        self.logger.warning("[job=%s] %s", fl_ctx.get_job_id(), msg)

    def log_error(self, fl_ctx: FLContext, msg: str) -> None:
        self.logger.error("[job=%s] %s", fl_ctx.get_job_id(), msg)


class Widget(FLComponent):
    """A component that serves the system rather than the workflow (NVFlare's `Widget`)."""


class Controller(FLComponent):
    """A workflow run by the job's engine (the shape of NVFlare's `Controller`)."""

    def start_controller(self, fl_ctx: FLContext) -> None:
        """Prepare the workflow; called once before `control_flow`."""

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Run the workflow; return when done or soon after ``abort_signal.triggered``."""
        raise NotImplementedError

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """Clean up; called once after `control_flow`, also after an error or abort."""
