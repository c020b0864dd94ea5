"""`ClientEngine`: the engine a site's job components see (the site side of NVFlare's EngineSpec).

A site's components send aux requests to one target, the job's engine (``server``). With
``secure=True`` a request is sealed end to end (`flrunner.security.sealed`) from this site's
provisioned key to the job process's key, which the parent sends each site of the job after every
hello of the job's process: the parent routes ciphertext, and the engine's reply comes back
sealed to this site's key.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from flrunner.aux.handling import failure_reply, reply_from
from flrunner.aux.payload import encode_shareable
from flrunner.aux.secure import Direction, PeerKey, SealedRequest, seal_request
from flrunner.engine_base import EngineBase
from flrunner.errors import Rc
from flrunner.fl_context import FLContext
from flrunner.security.errors import SealedError
from flrunner.shareable import Shareable
from flrunner.spec import EngineSpec
from flrunner.transport.wire import Message
from flrunner.workspace import Workspace

log = logging.getLogger(__name__)

SERVER = "server"

#: Sends an aux request to the job's engine: (topic, payload frames, timeout, fire_and_forget,
#: sealed_key or None) -> the engine's routed reply, or None for fire-and-forget and for no reply
#: within the timeout.
SendToServer = Callable[[str, list, float, bool, Optional[bytes]], Optional[Message]]


class ClientEngine(EngineBase, EngineSpec):
    """The engine of one job on one site.

    Args:
        site_name: this site.
        job_id: the job.
        workspace: the site's folder for this job (``get_run_dir``/``get_app_dir`` point into it).
        send_to_server: sends an aux request to the job's engine (`SendToServer`).
        sealing_key: this site's secret key (its kit's), which seals secure requests; None for a
            site started without a kit, which cannot send them.
        job_key: the public key of the job's process, as the parent last sent it (after each hello
            of that process); secure requests are sealed to it.
    """

    def __init__(self, site_name: str, job_id: str, workspace: Workspace, send_to_server: SendToServer,
                 sealing_key: bytes | None = None, job_key: PeerKey | None = None) -> None:
        super().__init__(site_name, job_id, workspace)
        self.site_name = site_name
        self._send_to_server = send_to_server
        self._sealing_key = sealing_key
        self._job_key = job_key if job_key is not None else PeerKey()

    @property
    def job_key(self) -> bytes | None:
        """The public key of the job's process; None until the parent has sent it."""
        return self._job_key.get()

    def send_aux_request(self, targets: list, topic: str, request: Shareable, timeout: float, fl_ctx: FLContext,
                         optional=False, secure=False) -> dict:
        """Send to the job's server engine (the only target a site has); returns {"server": reply}.

        A reply that does not come within ``timeout`` is a ``TIMEOUT`` reply; ``timeout`` 0 sends
        and returns ``{}`` at once. With ``secure`` the request and the reply are encrypted end to
        end between this site and the job's process, and the reply is opened only if the job
        process's key sealed it for this request.

        Raises:
            ValueError: a target other than ``server``.
            SealedError: ``secure`` on a site without a provisioned key, or before the job
                process's key has reached this site.
        """
        names = [t if isinstance(t, str) else getattr(t, "name", t) for t in (targets or [SERVER])]
        if any(n != SERVER for n in names):
            raise ValueError(f"a site can only send aux requests to 'server', not {names}")
        frames = encode_shareable(request)
        sealed = self._seal_request(topic, frames) if secure else None
        reply = self._send_to_server(topic, frames if sealed is None else sealed.frames, float(timeout), timeout <= 0,
                                     None if sealed is None else sealed.keys[SERVER])
        if timeout <= 0:
            return {}
        if reply is None:
            return {SERVER: failure_reply(Rc.TIMEOUT, f"no reply from the job's engine within {timeout:g}s")}
        if sealed is None:
            return {SERVER: reply_from(reply)}
        return {SERVER: sealed.open_reply(reply, SERVER, f"job {self.job_id}'s engine")}

    def _seal_request(self, topic: str, frames: list) -> SealedRequest:
        """The request sealed to the job process's key (which must then have sealed the reply)."""
        job_key = self._job_key.get()  # read once: the parent may send a new one meanwhile
        if self._sealing_key is None:
            raise SealedError(f"site {self.site_name} has no provisioned key (it was not started with --kit): it "
                              f"cannot send secure aux requests")
        if job_key is None:
            raise SealedError(f"the key of job {self.job_id}'s process has not reached site {self.site_name} yet "
                              f"(the parent sends it once that process has said hello)")
        return seal_request(frames, self._sealing_key, {SERVER: job_key}, Direction.TO_ENGINE, self.job_id, topic)
