"""One job's part on one site (its app's components and executors, and the requests they serve),
and the table of the jobs running on a site."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flrunner.aux.handling import handler_reply
from flrunner.aux.secure import PeerKey
from flrunner.events import EventType
from flrunner.job import parse_client_app
from flrunner.loader import AppLoadError, add_custom_dir, instantiate
from flrunner.shareable import Shareable
from flrunner.site.engine import ClientEngine, SendToServer
from flrunner.site.resources import ResourceManager
from flrunner.workspace import Workspace

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
        self._job_key = PeerKey(job_key)
        self.engine = ClientEngine(site_name, job_id, workspace, send_to_server, sealing_key, self._job_key)
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

    def use_job_key(self, key: bytes) -> None:
        """Seal this job's secure requests to ``key`` from now on (its process was relaunched, or
        said hello again)."""
        self._job_key.set(key)

    def reply_to(self, topic: str, frames: list, peer: str = "server") -> Shareable:
        """Serve one request (its payload frames, opened): an executor for a task topic, else an
        aux handler, else TOPIC_UNKNOWN (`flrunner.aux.handling.handler_reply`)."""
        executor = self.executors.get(topic)
        aux_handler = self.engine.aux_handlers.get(topic)

        def run(request: Shareable) -> Any:
            fl_ctx = self.engine.new_context()
            fl_ctx.set_prop("__peer_name__", peer, private=True, sticky=False)
            if executor is not None:
                return executor.execute(topic, request, fl_ctx, self.engine.abort_signal)
            return aux_handler(topic, request, fl_ctx)  # type: ignore[misc]

        def failed() -> None:
            log.error("site %s: job %s: '%s' failed:\n%s", self.site_name, self.job_id, topic, traceback.format_exc())

        return handler_reply(frames, run if executor is not None or aux_handler is not None else None,
                             unknown=f"site {self.site_name} has no executor or handler for '{topic}'",
                             returned_by=f"'{topic}'", on_exception=failed)

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


class RunningJobs:
    """The jobs running on this site, by id (thread-safe). Stopping a job releases its resources.

    Args:
        resources: the site's resource manager.
    """

    def __init__(self, resources: ResourceManager) -> None:
        self._resources = resources
        self._jobs: dict[str, SiteJob] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str) -> SiteJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def add(self, job: SiteJob) -> None:
        with self._lock:
            self._jobs[job.job_id] = job

    def ids(self) -> list[str]:
        """The ids of the jobs running here, sorted."""
        with self._lock:
            return sorted(self._jobs)

    def use_key(self, job_id: str, key: Any) -> None:
        """Use ``key`` for the secure requests of a job running here to its engine (a key for a job
        that does not run here is dropped: its start_job carries the key)."""
        job = self.get(job_id)
        if job is not None and isinstance(key, bytes):
            job.use_job_key(key)

    def stop(self, job_id: str, reason: str) -> None:
        """Stop a job (if it runs here) and release what it reserved."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is not None:
            job.stop(reason)
        self._resources.release_job(job_id)

    def stop_all(self, reason: str) -> None:
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.stop(reason)
            self._resources.release_job(job.job_id)
