"""`ClientEngine`: the engine a site's job components see (the site side of NVFlare's EngineSpec)."""

from __future__ import annotations

import logging
from typing import Callable

from flrunner.errors import FlrunnerError
from flrunner.engine_base import EngineBase
from flrunner.fl_context import FLContext
from flrunner.shareable import Shareable
from flrunner.spec import EngineSpec
from flrunner.workspace import Workspace

log = logging.getLogger(__name__)

SERVER = "server"


class ClientEngine(EngineBase, EngineSpec):
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
        super().__init__(site_name, job_id, workspace)
        self.site_name = site_name
        self._send_to_server = send_to_server

    def send_aux_request(self, targets: [], topic: str, request: Shareable, timeout: float, fl_ctx: FLContext,
                         optional=False, secure=False) -> dict:
        """Send to the job's server engine (the only target a site has); returns {"server": reply}."""
        names = [t if isinstance(t, str) else getattr(t, "name", t) for t in (targets or [SERVER])]
        if any(n != SERVER for n in names):
            raise ValueError(f"a site can only send aux requests to 'server', not {names}")
        if secure:
            # The job process's key is ephemeral and reaches a site only inside the engine's own
            # secure requests: there is no key to seal a site's request for beforehand.
            raise FlrunnerError("secure aux from a site to the job's engine is not available (only the engine's "
                                "secure requests to sites, and their replies, are sealed)")
        reply = self._send_to_server(topic, request, float(timeout), timeout <= 0)
        return {} if timeout <= 0 else {SERVER: reply}
