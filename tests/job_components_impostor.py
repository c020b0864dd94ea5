"""A job whose code tries to act for another job (tests/test_job_isolation.py)."""

import gc
import os

import zmq

from flrunner import Controller, Shareable
from flrunner.transport.wire import Message, decode, encode

from job_components import _write


def _own_session():
    """The job process's session with the parent: job code can reach it, so it is no secret holder."""
    return next(o for o in gc.get_objects() if type(o).__name__ == "ParentSession")


class Impostor(Controller):
    """Tries, with its own (valid) secret, to say hello as ``other_job_id`` (on a new connection
    and on its own), then to reach ``other_site`` (a site of the other job only); writes what
    happened to impostor.json."""

    def __init__(self, other_job_id, other_site):
        super().__init__()
        self.other_job_id = other_job_id
        self.other_site = other_site

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        session = _own_session()
        hello = {"job_id": self.other_job_id, "secret": session._secret, "pid": os.getpid()}
        out = {"fresh_connection": self._raw_hello(session.link.endpoint, hello)}
        try:
            engine._require_link().request(Message("hello", hello), timeout=5)
            out["own_connection"] = "OK"
        except Exception as exc:
            out["own_connection"] = f"{type(exc).__name__}: {exc}"
        try:
            out["own_link_still_works"] = [c.name for c in engine.sync_clients_from_main_process()]
        except Exception as exc:
            out["own_link_still_works"] = f"{type(exc).__name__}: {exc}"
        reply = engine.send_aux_request([self.other_site], "echo", Shareable({"x": 1}), 5, fl_ctx)[self.other_site]
        out["aux_to_other_site"] = {"rc": reply.get_return_code(), "reason": reply.get_header("reason")}
        _write(fl_ctx, "impostor.json", out)

    @staticmethod
    def _raw_hello(endpoint, body):
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        try:
            sock.connect(endpoint)
            sock.send_multipart(encode(Message("hello", body, id=1)))
            if not sock.poll(5000):
                return "no answer"
            reply = decode(sock.recv_multipart())
            return f"{reply.rc}: {reply.body.get('reason')}"
        finally:
            sock.close()
