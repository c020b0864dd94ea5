"""The site agent: logs in to the parent, heartbeats, and serves the jobs that run on this site.

The parent pushes job-control requests (check and reserve resources, start a job's site app
from a bundle, stop it: `flrunner.site.control`), jobs' aux requests (`flrunner.site.aux`), and
the keys of jobs' processes (which a job's site components seal their secure aux requests to);
the agent answers each on its own threads, so its connection keeps serving while a job's handler
works or hangs. Its session (`flrunner.site.session`) logs in again by itself when the parent
forgets it (a restart, an expiry) or seems gone (a paused parent: its session, kept by the
parent, then goes on unchanged), backing off while the parent is unreachable or another agent
holds the site's name, and logs out on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

import psutil

from flrunner.errors import FlrunnerError
from flrunner.protocol import Dispatcher, aux_ops, site_ops
from flrunner.security.curve import key_from_z85
from flrunner.site.aux import SiteAux
from flrunner.site.control import JobControl
from flrunner.site.job import RunningJobs
from flrunner.site.resources import ResourceManager
from flrunner.site.session import SiteSession
from flrunner.util.logthrottle import LogThrottle
from flrunner.workspace import Workspace

log = logging.getLogger(__name__)


def default_resources() -> dict:
    return {"num_cpus": os.cpu_count() or 1, "mem_gb": round(psutil.virtual_memory().total / 2**30, 1), "num_gpus": 0}


class SiteAgent:
    """One FL site's agent: its session with the parent, and the handlers of the parent's requests.

    Args:
        name: the site name.
        server: the parent's sites endpoint.
        resources: declared resources (defaults from psutil).
        workspace: where job apps are unpacked (default ``./flrunner-site-<name>``).
        request_timeout: seconds to wait for the parent's reply to a login or logout.
        job_threads: requests of one job served at once.
        kit: the site's start-up kit (`flrunner.security.kit.Kit`): CURVE on the link, and the key
            that opens secure aux requests and seals this site's own; None: neither.
    """

    def __init__(self, name: str, server: str, resources: dict | None = None, workspace: str | None = None,
                 request_timeout: float = 5.0, job_threads: int = 4, kit: Any = None) -> None:
        self.name = name
        self.resources = resources if resources is not None else default_resources()
        self.workspace = Workspace(workspace or os.path.abspath(f"flrunner-site-{name}"), app_folder=f"app_{name}")
        self.resource_manager = ResourceManager(self.resources)
        self.jobs = RunningJobs(self.resource_manager)
        #: Starts and stops of jobs, off the link's I/O thread.
        self._control = ThreadPoolExecutor(max_workers=2, thread_name_prefix="site-control")
        #: Requests that do not open (from a parent or a job gone wrong) must not fill the site's log.
        refusals = LogThrottle(log)
        requests = Dispatcher(site_ops.TO_SITE, f"site agent {name}",
                              on_refused=lambda msg, exc: refusals.warning("site %s: '%s' refused: %s",
                                                                           name, msg.op[:60], exc))
        configure: Callable[[Any], None] | None = None
        sealing_key: bytes | None = None
        if kit is not None:  # a provisioned site: CURVE with its own keys, trusting only the parent's
            from flrunner.security.gate import make_curve_client

            configure = partial(make_curve_client, public_key=kit.public_key, secret_key=kit.secret_key,
                                server_key=kit.parent_public_key)
            sealing_key = key_from_z85(kit.secret_key)
        self.session = SiteSession(name, server, self.resources, self.jobs, self._control, requests,
                                   request_timeout, configure)
        control = JobControl(name, self.workspace, self.jobs, self.resource_manager, self._control, self.session,
                             sealing_key, job_threads)
        aux = SiteAux(name, self.jobs, sealing_key, refusals)
        for op, handler in ((aux_ops.TO_SITE, aux.serve), (site_ops.CHECK_RESOURCES, control.check_resources),
                            (site_ops.CANCEL_RESOURCES, control.cancel_resources),
                            (site_ops.START_JOB, control.start_job), (site_ops.STOP_JOB, control.stop_job),
                            (site_ops.JOB_KEY, control.job_key)):
            requests.on(op, handler)

    def stop(self) -> None:
        self.session.stop()

    def run(self) -> None:
        """Serve until `stop` (or SIGTERM when installed); log out and stop jobs on the way out."""
        try:
            self.session.run()
        finally:
            self.jobs.stop_all("the site agent stops")
            self._control.shutdown(wait=False, cancel_futures=True)
            self.session.close()


def run_site(name: str | None, server: str | None, resources: dict | None = None, workspace: str | None = None,
             kit_dir: str | None = None) -> int:
    """Run a site agent in the foreground: process title, signals, logs to stderr.

    With ``kit_dir`` (a site's start-up kit from ``flrunner provision``) the name and the server
    endpoint come from the kit (``server`` overrides the endpoint) and the connection uses CURVE.
    """
    import setproctitle

    kit = None
    if kit_dir is not None:
        from flrunner.security.kit import Role, load_kit

        kit = load_kit(kit_dir)
        if kit.role is not Role.SITE:
            raise FlrunnerError(f"{kit_dir} is the kit of {kit.role.value} '{kit.name}', not of a site")
        if name is not None and name != kit.name:
            raise FlrunnerError(f"--name {name} does not match the kit's site name '{kit.name}'")
        name, server = kit.name, server or kit.endpoint
    if not name or not server:
        raise FlrunnerError("a site needs --name and --server, or --kit")
    setproctitle.setproctitle(f"flrunner-site: {name}")
    agent = SiteAgent(name, server, resources, workspace, kit=kit)

    def on_signal(signum: int, frame: Any) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run()
    # A job's handler stuck in code that ignores the abort would keep a normal interpreter alive
    # (it joins worker threads at exit): the agent has logged out and stopped its jobs, so leave.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


__all__ = ["SiteAgent", "default_resources", "run_site"]
