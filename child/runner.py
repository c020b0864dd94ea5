"""The job run: load the server app, fire the run events, run the workflows, report the outcome."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from flrunner.events import EventType
from flrunner.job import parse_server_app
from flrunner.loader import AppLoadError, add_custom_dir, instantiate
from flrunner.snapshot import RunSnapshot
from flrunner.status import RunStatus

from child.engine import ServerEngine

log = logging.getLogger(__name__)


class JobRunner:
    """Runs one job's server app in this process."""

    def __init__(self, engine: ServerEngine, resume: bool = False) -> None:
        self.engine = engine
        self.resume = resume
        self.workflows: list[tuple[str, Any]] = []

    def load(self) -> None:
        app_dir = Path(self.engine.workspace.get_app_dir(self.engine.job_id))
        add_custom_dir(str(app_dir))
        app = parse_server_app(app_dir, app_dir.name)
        for cdef in app.components:
            self.engine.add_component(cdef.id, instantiate(cdef, str(app_dir)))
        for cdef in app.workflows:
            wf = instantiate(cdef, str(app_dir))
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
        if self.resume:
            snapshot = RunSnapshot.load(engine.workspace.get_snapshot_path(engine.job_id))
            if snapshot is not None:
                log.warning("resuming: restoring the components from the snapshot of %s", snapshot.time)
                try:
                    engine.restore_components(snapshot, fl_ctx)
                except Exception as exc:
                    return self._finish(RunStatus.FINISHED_EXECUTION_EXCEPTION, f"cannot restore the snapshot: {exc}")
        try:
            engine.fire_event(EventType.ABOUT_TO_START_RUN, fl_ctx)
            engine.fire_event(EventType.START_RUN, fl_ctx)
            for wid, wf in self.workflows:
                if engine.abort_signal.triggered:
                    break
                log.info("workflow '%s' starting", wid)
                try:
                    wf.start_controller(fl_ctx)
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
