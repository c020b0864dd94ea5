"""The admin sockets' operations: what the CLI, an embedding platform or a remote admin asks of the parent.

Local admin is authorised by the file system: the socket lives in a 0700 directory of the
workspace owner. Remote admin (optional) is a tcp socket with CURVE that admits provisioned
admin keys only; the same operations are served there, except that a job folder must be
uploaded (a remote admin cannot name, and so read, folders on the parent's machine).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from functools import partial
from typing import Any, Callable

import psutil
import zmq

import flrunner
from flrunner.errors import BadRequest, Conflict, FlrunnerError, NotReady
from flrunner.protocol import Rc, Request, admin_ops
from parent.edge.connections import Connection, connection_of, cut
from parent.edge.endpoint import RouterEndpoint, source_fd
from parent.jobs.lifecycle import JobLifecycle
from parent.jobs.store import JobRecord
from parent.jobs.submission import SHUTTING_DOWN
from parent.loop.offload import Offload
from parent.sites.registry import SiteRegistry

log = logging.getLogger(__name__)

#: Submissions being read and copied off the loop (several at once); beyond it a submit is refused
#: for now (NOT_READY, which clients retry), so a burst of uploads cannot queue without bound (each
#: holding its bytes in memory).
MAX_PREPARING = 8
#: Seconds taken off a submitting client's own timeout: its answer must reach it in time.
SUBMIT_MARGIN = 1.0
#: Connections remembered per remote admin (to close when it is revoked); older ones are forgotten.
MAX_TRACKED = 64
#: Admin ops that change something (or could): written to the audit log. (``submit`` answers
#: later, once the folder is read off the loop, and writes its entry then.)
AUDITED = frozenset({"abort", "shutdown"})


class AdminService:
    """Serves admin clients; pushes status changes to subscribers.

    Args:
        endpoint: the local admin socket.
        lifecycle: the job domain.
        registry: the logged-in sites.
        subscriber_ttl: a subscription not renewed (ping) within this is dropped.
        request_stop: asks the parent to stop (the ``shutdown`` op).
        workspace: the workspace folder (``audit.log`` is written there).
        copies: the lane that reads and copies submitted job folders.
        clock: monotonic seconds.
        remote: the remote admin socket (CURVE), if any: served the same, except that job
            folders are uploaded.
    """

    def __init__(self, endpoint: RouterEndpoint, lifecycle: JobLifecycle, registry: SiteRegistry,
                 subscriber_ttl: float, request_stop: Callable[[str], None], workspace: str, copies: Offload,
                 clock: Callable[[], float] = time.monotonic, remote: RouterEndpoint | None = None) -> None:
        self.local = endpoint
        self.lifecycle = lifecycle
        self.registry = registry
        self.subscriber_ttl = subscriber_ttl
        self.request_stop = request_stop
        self.workspace = workspace
        #: The lane that reads and copies submitted job folders.
        self.copies = copies
        self.clock = clock
        #: (socket, peer) -> when its subscription was last renewed.
        self.subscribers: dict[tuple[RouterEndpoint, bytes], float] = {}
        #: (socket, peer) -> its admin's name, for remote subscribers (CURVE).
        self._subscriber_names: dict[tuple[RouterEndpoint, bytes], str] = {}
        #: Remote admin name -> {peer identity: its connection}, the latest few, to close when revoked.
        self._connections: dict[str, dict[bytes, Connection]] = {}
        self._preparing = 0
        self._self_ps = psutil.Process()
        self._self_ps.cpu_percent(None)
        self.audit_path = os.path.join(workspace, "audit.log")
        for ep in (endpoint, remote):
            if ep is not None:
                self._serve(ep)

    def _serve(self, ep: RouterEndpoint) -> None:
        for op, handler in ((admin_ops.SUBMIT, partial(self.submit, ep)), (admin_ops.JOBS, self.jobs),
                            (admin_ops.STATUS, self.status), (admin_ops.ABORT, self.abort),
                            (admin_ops.CLIENTS, self.clients), (admin_ops.PS, self.ps),
                            (admin_ops.SUBSCRIBE, partial(self.subscribe, ep)),
                            (admin_ops.UNSUBSCRIBE, partial(self.unsubscribe, ep)),
                            (admin_ops.PING, partial(self.ping, ep)), (admin_ops.SHUTDOWN, self.shutdown),
                            (admin_ops.VERSION, self.version)):
            handler = self._audited(op.name, handler) if op.name in AUDITED else handler
            ep.on(op, handler if ep is self.local else self._tracked(handler))

    def _tracked(self, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Remember the connection of each remote admin peer, to close it if the admin is revoked."""
        def run(req: Request) -> Any:
            mine = self._connections.setdefault(req.user_id or "", {})
            if req.peer not in mine:
                conn = connection_of(source_fd(req))
                if conn is not None:
                    mine[req.peer] = conn
                    if len(mine) > MAX_TRACKED:
                        del mine[next(iter(mine))]  # the oldest: a CLI call per connection adds up
            return handler(req)

        return run

    def _audited(self, op: str, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Write who did what, when, and with which result to ``<workspace>/audit.log`` (JSON lines)."""
        def run(req: Request) -> Any:
            entry = self._entry(op, req)
            try:
                result = handler(req)
            except FlrunnerError as exc:
                self._audit({**entry, "result": exc.rc, "reason": str(exc)[:500]})
                raise
            self._audit({**entry, "result": "OK",
                         **({"job_id": result["job"]["job_id"]} if isinstance(result, dict) and "job" in result else {})})
            return result

        return run

    @staticmethod
    def _entry(op: str, req: Request) -> dict:
        return {"time": time.time(), "who": req.user_id or "local (admin socket)", "op": op,
                "args": {k: v for k, v in req.args.items() if v is not None}}

    def _audit(self, entry: dict) -> None:
        try:
            with open(self.audit_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        except OSError as exc:
            log.error("cannot write the audit log %s: %s", self.audit_path, exc)

    def submit(self, ep: RouterEndpoint, req: Request) -> None:
        entry = self._entry("submit", req)
        try:
            self._submit(ep, req, entry)
        except FlrunnerError as exc:
            self._audit({**entry, "result": exc.rc, "reason": str(exc)[:500]})
            raise

    def _submit(self, ep: RouterEndpoint, req: Request, entry: dict) -> None:
        job_dir, upload = req.args["job_dir"], req.msg.frames[0] if req.msg.frames else None
        if (job_dir is None) == (upload is None):
            raise BadRequest("op 'submit': give either job_dir (a folder on the parent's machine) or the folder "
                             "uploaded as one tar.gz frame")
        if job_dir is not None and ep is not self.local:
            raise BadRequest("op 'submit': a remote admin uploads the job folder; paths on the parent's machine "
                             "are accepted on the local admin socket only")
        if job_dir is not None and not os.path.isabs(job_dir):
            raise BadRequest(f"op 'submit': job_dir must be an absolute path, got '{job_dir[:200]}'")
        if not self.lifecycle.accepting:
            raise Conflict(SHUTTING_DOWN)
        if self.lifecycle.reconciling:
            raise NotReady("the parent is re-adopting jobs left running by its predecessor; submit again shortly")
        if self._preparing >= MAX_PREPARING:
            raise NotReady(f"{self._preparing} submissions are being read already; submit again shortly")
        what = job_dir or f"upload '{req.args['name'] or 'job'}'"
        # The client waits this long for the answer: a job read after that is dropped, not
        # accepted, so that a client told "no answer" is never left with a job it does not know.
        waits = req.args["timeout"]
        deadline = None if waits is None else time.monotonic() + max(0.0, float(waits) - SUBMIT_MARGIN)

        def done(prepared: Any, exc: BaseException | None) -> None:
            self._preparing -= 1
            if exc is None and deadline is not None and time.monotonic() > deadline:
                self.lifecycle.submissions.discard(prepared[0])
                log.warning("submission of %s dropped: it was read only after its client stopped waiting (%gs)",
                            what, waits)
                self._audit({**entry, "result": "ABANDONED", "reason": "read after the client stopped waiting"})
                return
            try:
                if exc is not None:
                    raise exc
                rec = self.lifecycle.submissions.accept(*prepared)
            except FlrunnerError as err:
                self._audit({**entry, "result": err.rc, "reason": str(err)[:500]})
                ep.reply(req.peer, req.msg, {"reason": str(err)}, rc=err.rc)
                return
            except Exception as err:
                log.exception("submit of %s failed", what)
                self._audit({**entry, "result": Rc.ERROR, "reason": f"{type(err).__name__}: {err}"[:500]})
                ep.reply(req.peer, req.msg, {"reason": f"internal error: {type(err).__name__}: {err}"}, rc=Rc.ERROR)
                return
            self._audit({**entry, "result": "OK", "job_id": rec.job_id})
            ep.reply(req.peer, req.msg, {"job_id": rec.job_id, "job": rec.to_dict()})

        # Reading and copying the folder happens off the loop; the reply follows when it is done.
        self._preparing += 1
        if upload is None:
            self.copies.run(lambda: self.lifecycle.submissions.prepare(job_dir), done)
        else:
            data = upload.bytes if hasattr(upload, "bytes") else bytes(upload)
            origin = f"{what} by {req.user_id or 'local admin'}"
            self.copies.run(lambda: self.lifecycle.submissions.prepare_upload(data, origin), done)

    def jobs(self, req: Request) -> dict:
        return {"jobs": [r.to_dict() for r in self.lifecycle.store.list()]}

    def status(self, req: Request) -> dict:
        return {"job": self.lifecycle.statuses.resolve(req.args["job_id"]).to_dict(with_history=True)}

    def abort(self, req: Request) -> dict:
        rec = self.lifecycle.aborts.abort(req.args["job_id"], req.args["reason"] or "aborted by admin")
        return {"job": rec.to_dict(with_history=True)}

    def clients(self, req: Request) -> dict:
        return {"clients": self.registry.listing()}

    def ps(self, req: Request) -> dict:
        now = time.time()
        me = self._self_ps
        with me.oneshot():
            parent = {"pid": me.pid, "workspace": self.workspace, "cpu_percent": me.cpu_percent(None),
                      "rss_bytes": me.memory_info().rss, "uptime_s": now - me.create_time()}
        jobs = []
        for job in self.lifecycle.running.values():
            status = self.lifecycle.store.get(job.job_id, with_history=False).status.value
            info = {"job_id": job.job_id, "name": job.name, "pid": job.proc.pid, "status": status,
                    "cpu_percent": None, "rss_bytes": None, "uptime_s": None}
            p = job.process_info()
            if p is not None:
                try:
                    with p.oneshot():
                        info.update(cpu_percent=p.cpu_percent(None), rss_bytes=p.memory_info().rss,
                                    uptime_s=now - p.create_time())
                except psutil.Error:
                    pass
            jobs.append(info)
        return {"parent": parent, "jobs": jobs}

    def subscribe(self, ep: RouterEndpoint, req: Request) -> dict:
        self.subscribers[(ep, req.peer)] = self.clock()
        if req.user_id:
            self._subscriber_names[(ep, req.peer)] = req.user_id
        return {"ttl": self.subscriber_ttl}

    def unsubscribe(self, ep: RouterEndpoint, req: Request) -> dict:
        self.subscribers.pop((ep, req.peer), None)
        self._subscriber_names.pop((ep, req.peer), None)
        return {}

    def revoke(self, name: str) -> tuple[int, int]:
        """Cut a revoked remote admin off: stop its status feeds and close its connections.

        Returns how many feeds were stopped and how many connections closed.
        """
        keys = [k for k, n in self._subscriber_names.items() if n == name]
        for key in keys:
            self.subscribers.pop(key, None)
            del self._subscriber_names[key]
        closed = sum(cut(conn) for conn in self._connections.pop(name, {}).values())
        return len(keys), closed

    def ping(self, ep: RouterEndpoint, req: Request) -> dict:
        if (ep, req.peer) in self.subscribers:
            self.subscribers[(ep, req.peer)] = self.clock()
        return {"pid": os.getpid(), "workspace": self.workspace, "ready": self.lifecycle.ready,
                "max_upload": ep.sock.getsockopt(zmq.MAXMSGSIZE), "store_error": self.lifecycle.store.error}

    def version(self, req: Request) -> dict:
        started = self._self_ps.create_time()
        return {"version": flrunner.__version__, "pid": os.getpid(), "python": platform.python_version(),
                "started": started, "uptime_s": time.time() - started}

    def shutdown(self, req: Request) -> dict:
        self.request_stop("shutdown requested over the admin socket")
        return {"stopping": True}

    def publish(self, rec: JobRecord) -> None:
        """Push a status change to every subscriber."""
        if not self.subscribers:
            return
        change = admin_ops.JOB_STATUS.message(job=rec.to_dict())
        for ep, identity in self.subscribers:
            ep.push(identity, change)

    def expire_subscribers(self) -> None:
        limit = self.clock() - self.subscriber_ttl
        for key in [k for k, t in self.subscribers.items() if t < limit]:
            del self.subscribers[key]
            self._subscriber_names.pop(key, None)
