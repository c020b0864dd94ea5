"""The job run: load the server app, fire the run events, run the workflows, report the outcome."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from flrunner.events import EventType
from flrunner.job import ComponentDef, parse_server_app
from flrunner.status import RunStatus

from .engine import ServerEngine

log = logging.getLogger(__name__)


class AppLoadError(Exception):
    """The server app could not be instantiated; the message names the component."""


def instantiate(cdef: ComponentDef) -> Any:
    module_name, _, class_name = cdef.path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AppLoadError(f"component '{cdef.id}': cannot import module '{module_name}': "
                           f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise AppLoadError(f"component '{cdef.id}': module '{module_name}' has no '{class_name}'")
    try:
        return cls(**cdef.args)
    except Exception as exc:
        raise AppLoadError(f"component '{cdef.id}': {cdef.path}(**args) failed: {type(exc).__name__}: {exc}") from exc


class JobRunner:
    """Runs one job's server app in this process."""

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine
        self.workflows: list[tuple[str, Any]] = []

    def load(self) -> None:
        ws = self.engine.workspace
        app_dir = Path(ws.get_app_dir(self.engine.job_id))
        custom = ws.get_app_custom_dir(self.engine.job_id)
        if os.path.isdir(custom):
            sys.path.insert(0, custom)
        app = parse_server_app(app_dir, app_dir.name)
        for cdef in app.components:
            self.engine.add_component(cdef.id, instantiate(cdef))
        for cdef in app.workflows:
            wf = instantiate(cdef)
            for method in ("start_controller", "control_flow", "stop_controller"):
                if not callable(getattr(wf, method, None)):
                    raise AppLoadError(f"workflow '{cdef.id}' ({cdef.path}) has no {method}() method")
            self.engine.add_component(cdef.id, wf)
            self.workflows.append((cdef.id, wf))

    def run(self) -> RunStatus:
        """Load and run; record the outcome on the engine and return it."""
        engine = self.engine
        try:
            self.load()
        except Exception as exc:
            log.error("cannot load the server app: %s", exc)
            return self._finish(RunStatus.FINISHED_EXECUTION_EXCEPTION, f"cannot load the server app: {exc}")
        fl_ctx = engine.new_context()
        error = None
        try:
            engine.fire_event(EventType.ABOUT_TO_START_RUN, fl_ctx)
            engine.fire_event(EventType.START_RUN, fl_ctx)
            for wid, wf in self.workflows:
                if engine.abort_signal.triggered:
                    break
                log.info("workflow '%s' starting", wid)
                wf.start_controller(fl_ctx)
                try:
                    wf.control_flow(engine.abort_signal, fl_ctx)
                finally:
                    wf.stop_controller(fl_ctx)
                log.info("workflow '%s' ended", wid)
        except Exception:
            error = traceback.format_exc()
            log.error("the job failed:\n%s", error)
        finally:
            engine.fire_event(EventType.ABOUT_TO_END_RUN, fl_ctx)
            engine.fire_event(EventType.END_RUN, fl_ctx)
        if error is not None:
            return self._finish(RunStatus.FINISHED_EXECUTION_EXCEPTION, error)
        if engine.abort_signal.triggered:
            return self._finish(RunStatus.FINISHED_ABORTED, None)
        return self._finish(RunStatus.FINISHED_COMPLETED, None)

    def _finish(self, status: RunStatus, error: str | None) -> RunStatus:
        self.engine.run_status = status
        self.engine.exe_error = error
        return status
