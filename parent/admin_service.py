"""The admin socket's operations: what the CLI and an embedding platform ask of the parent.

Local admin is authorised by the file system: the socket lives in a 0700 directory of the
workspace owner.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import psutil

from flrunner import protocol as P
from flrunner.errors import BadRequest, Conflict, FlrunnerError, NotReady
from flrunner.protocol import Rc

from .jobs import JobManager
from .offload import Offload
from .job_store import JobRecord
from .registry import SiteRegistry
from .router import Request, RouterEndpoint

log = logging.getLogger(__name__)

#: Admin ops that change something (or could): written to the audit log.
AUDITED = frozenset({"submit", "abort", "shutdown"})


class AdminService:
    """Serves admin clients; pushes status changes to subscribers."""

    def __init__(self, endpoint: RouterEndpoint, manager: JobManager, registry: SiteRegistry,
                 subscriber_ttl: float, request_stop: Callable[[str], None], workspace: str, offload: Offload,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.manager = manager
        self.registry = registry
        self.subscriber_ttl = subscriber_ttl
        self.request_stop = request_stop
        self.workspace = workspace
        self.offload = offload
        self.clock = clock
        self.subscribers: dict[bytes, float] = {}
        self.ready = False
        self._self_ps = psutil.Process()
        self._self_ps.cpu_percent(None)
        self.audit_path = os.path.join(workspace, "audit.log")
        for op, handler in ((P.SUBMIT, self.submit), (P.JOBS, self.jobs), (P.STATUS, self.status),
                            (P.ABORT_JOB, self.abort), (P.CLIENTS, self.clients), (P.PS, self.ps),
                            (P.SUBSCRIBE, self.subscribe), (P.UNSUBSCRIBE, self.unsubscribe),
                            (P.PING, self.ping), (P.SHUTDOWN, self.shutdown)):
            endpoint.on(op, self._audited(op.name, handler) if op.name in AUDITED else handler)

    def _audited(self, op: str, handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Write who did what, when, and with which result to ``<workspace>/audit.log`` (JSON lines)."""
        def run(req: Request) -> Any:
            entry = {"time": time.time(), "who": req.user_id or "local (admin socket)", "op": op,
                     "args": {k: v for k, v in req.args.items() if v is not None}}
            try:
                result = handler(req)
            except FlrunnerError as exc:
                self._audit({**entry, "result": exc.rc, "reason": str(exc)[:500]})
                raise
            self._audit({**entry, "result": "OK" if result is not None else "ACCEPTED",
                         **({"job_id": result["job"]["job_id"]} if isinstance(result, dict) and "job" in result else {})})
            return result

        return run

    def _audit(self, entry: dict) -> None:
        try:
            with open(self.audit_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
        except OSError as exc:
            log.error("cannot write the audit log %s: %s", self.audit_path, exc)

    def submit(self, req: Request) -> None:
        job_dir = req.args["job_dir"]
        if not os.path.isabs(job_dir):
            raise BadRequest(f"op 'submit': job_dir must be an absolute path, got '{job_dir[:200]}'")
        if not self.manager.accepting:
            raise Conflict("the parent is shutting down and accepts no new jobs")
        if self.manager.reconciling:
            raise NotReady("the parent is re-adopting jobs left running by its predecessor; submit again shortly")

        def done(prepared: Any, exc: BaseException | None) -> None:
            try:
                if exc is not None:
                    raise exc
                rec = self.manager.accept(*prepared)
            except FlrunnerError as err:
                self.endpoint.reply(req.identity, req.msg, {"reason": str(err)}, rc=err.rc)
                return
            except Exception as err:
                log.exception("submit of %s failed", job_dir)
                self.endpoint.reply(req.identity, req.msg, {"reason": f"internal error: {type(err).__name__}: {err}"},
                                    rc=Rc.ERROR)
                return
            self.endpoint.reply(req.identity, req.msg, {"job_id": rec.job_id, "job": rec.to_dict()})

        # Reading and copying the folder happens off the loop; the reply follows when it is done.
        self.offload.run(lambda: self.manager.prepare(job_dir), done)

    def jobs(self, req: Request) -> dict:
        return {"jobs": [r.to_dict() for r in self.manager.store.list()]}

    def status(self, req: Request) -> dict:
        return {"job": self.manager.resolve(req.args["job_id"]).to_dict(with_history=True)}

    def abort(self, req: Request) -> dict:
        rec = self.manager.abort(req.args["job_id"], req.args["reason"] or "aborted by admin")
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
        for job in self.manager.running.values():
            status = self.manager.store.get(job.job_id, with_history=False).status.value
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

    def subscribe(self, req: Request) -> dict:
        self.subscribers[req.identity] = self.clock()
        return {"ttl": self.subscriber_ttl}

    def unsubscribe(self, req: Request) -> dict:
        self.subscribers.pop(req.identity, None)
        return {}

    def ping(self, req: Request) -> dict:
        if req.identity in self.subscribers:
            self.subscribers[req.identity] = self.clock()
        return {"pid": os.getpid(), "workspace": self.workspace, "ready": self.ready and not self.manager.reconciling}

    def shutdown(self, req: Request) -> dict:
        self.request_stop("shutdown requested over the admin socket")
        return {"stopping": True}

    def publish(self, rec: JobRecord) -> None:
        """Push a status change to every subscriber."""
        if not self.subscribers:
            return
        body = {"job": rec.to_dict()}
        for identity in self.subscribers:
            self.endpoint.push(identity, P.JOB_STATUS_EVENT, body)

    def expire_subscribers(self) -> None:
        limit = self.clock() - self.subscriber_ttl
        for identity in [i for i, t in self.subscribers.items() if t < limit]:
            del self.subscribers[identity]
