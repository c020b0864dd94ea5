"""One job's part on one site: its app's components and executors, and the requests they serve."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flrunner.events import EventType
from flrunner.job import parse_client_app
from flrunner.loader import AppLoadError, add_custom_dir, instantiate
from flrunner.aux.payload import REASON_HEADER
from flrunner.shareable import ReturnCode, Shareable, make_reply
from flrunner.workspace import Workspace

from flrunner.site.engine import ClientEngine, SendToServer

log = logging.getLogger(__name__)


class SiteJob:
    """A job's site app, loaded and running in the site agent.

    Requests run on the job's own thread pool, so a failing or hanging handler of one job never
    holds up another job or the agent's connection to the parent.

    Args:
        site_name: this site.
        job_id, job_name, app_name: the job and the app folder the site runs.
        workspace: the site's workspace (the app is unpacked in its run dir for the job).
        send_to_server: site -> engine aux (see `ClientEngine`).
        threads: requests of this job served at once.
        sealing_key: the site's secret key, for secure aux (None: a site without a kit).
        job_key: the public key of the job's process, if the parent knows it yet.
    """

    def __init__(self, site_name: str, job_id: str, job_name: str, app_name: str, workspace: Workspace,
                 send_to_server: SendToServer, threads: int = 4, sealing_key: bytes | None = None,
                 job_key: bytes | None = None) -> None:
        self.site_name = site_name
        self.job_id = job_id
        self.job_name = job_name
        self.app_name = app_name
        self.workspace = workspace
        self.engine = ClientEngine(site_name, job_id, workspace, send_to_server, sealing_key)
        self.engine.job_key = job_key
        self.executors: dict[str, Any] = {}
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"job-{job_id[:8]}")
        self.stopped = False

    @property
    def app_dir(self) -> str:
        return self.workspace.get_app_dir(self.job_id)

    def start(self) -> None:
        """Instantiate the site app and fire the start events.

        Raises:
            JobFolderError, AppLoadError: the app's config or a component is wrong (named).
        """
        self._use_own_custom_code()
        app = parse_client_app(Path(self.app_dir), Path(self.app_dir).name)
        for cdef in app.components:
            self.engine.add_component(cdef.id, instantiate(cdef, self.app_dir))
        for tasks, cdef in app.executors:
            executor = instantiate(cdef, self.app_dir)
            if not callable(getattr(executor, "execute", None)):
                raise AppLoadError(f"executor '{cdef.id}' ({cdef.path}) has no execute() method")
            self.engine.add_component(cdef.id, executor)
            for task in tasks:
                self.executors[task] = executor
        fl_ctx = self.engine.new_context()
        self.engine.fire_event(EventType.ABOUT_TO_START_RUN, fl_ctx)
        self.engine.fire_event(EventType.START_RUN, fl_ctx)
        log.info("site %s: job %s (%s) started with tasks %s and aux topics %s", self.site_name, self.job_id,
                 self.job_name, sorted(self.executors), sorted(self.engine.aux_handlers))

    def _use_own_custom_code(self) -> None:
        """Make ``import`` find this job's ``custom/`` modules, not another job's of the same name.

        The agent is one interpreter for every job on the site: modules imported from an earlier
        job's custom folder are dropped from ``sys.modules`` (that job's objects keep the modules
        they already have) and its folder leaves ``sys.path``.
        """
        jobs_root = os.path.join(self.workspace.get_root_dir(), "jobs") + os.sep
        own = os.path.join(self.app_dir, "custom") + os.sep
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None) or ""
            if path.startswith(jobs_root) and not path.startswith(own):
                del sys.modules[name]
        sys.path[:] = [p for p in sys.path if not (p + os.sep).startswith(jobs_root)]
        add_custom_dir(self.app_dir)
        importlib.invalidate_caches()

    def handle(self, topic: str, request: Shareable, peer: str = "server") -> Shareable:
        """Serve one request: an executor for a task topic, else an aux handler, else TOPIC_UNKNOWN."""
        fl_ctx = self.engine.new_context()
        fl_ctx.set_prop("__peer_name__", peer, private=True, sticky=False)
        try:
            executor = self.executors.get(topic)
            if executor is not None:
                reply = executor.execute(topic, request, fl_ctx, self.engine.abort_signal)
            elif topic in self.engine.aux_handlers:
                reply = self.engine.aux_handlers[topic](topic, request, fl_ctx)
            else:
                return make_reply(ReturnCode.TOPIC_UNKNOWN,
                                  {REASON_HEADER: f"site {self.site_name} has no executor or handler for '{topic}'"})
        except Exception as exc:
            log.error("site %s: job %s: '%s' failed:\n%s", self.site_name, self.job_id, topic, traceback.format_exc())
            return make_reply(ReturnCode.EXECUTION_EXCEPTION, {REASON_HEADER: f"{type(exc).__name__}: {exc}"[:2000]})
        if not isinstance(reply, Shareable):
            return make_reply(ReturnCode.EXECUTION_RESULT_ERROR,
                              {REASON_HEADER: f"'{topic}' returned {type(reply).__name__}, not a Shareable"})
        return reply

    def stop(self, reason: str) -> None:
        """Abort what runs, fire the end events, and stop taking requests."""
        if self.stopped:
            return
        self.stopped = True
        self.engine.abort_signal.trigger(reason)
        fl_ctx = self.engine.new_context()
        self.engine.fire_event(EventType.ABOUT_TO_END_RUN, fl_ctx)
        self.engine.fire_event(EventType.END_RUN, fl_ctx)
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("site %s: job %s stopped (%s)", self.site_name, self.job_id, reason)
