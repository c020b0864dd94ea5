"""Workflows and site components for the secure aux tests (tests/test_secure_aux.py).

Copied into each test job's ``custom/`` folders and loaded as ``job_components_secure.<Class>``,
so it uses only the NVFlare-style API a third-party job has. Payloads carry a marker string
(and a binary value made of it, large enough to travel as its own frame), so a test can look for
the marker in whatever the parent saw. `SecureCalls` and `SeenBySite` test requests from the
engine to sites; `SecureHandler` and `SendsToEngine` requests from sites to the engine.
"""

import threading
import time

from flrunner import Controller, EventType, FLComponent, ReturnCode, Shareable

try:  # in a job: next to job_components.py in its custom/ folder
    from job_components import _write
except ImportError:  # imported by the tests as part of the tests package
    from .job_components import _write

#: A binary value at least this large travels as its own frame (flrunner.aux.payload.INLINE_LIMIT).
BLOB_BYTES = 80 * 1024


def marker_payload(marker):
    """The request of a call: the marker as text and as a large binary value."""
    blob = (marker.encode() * (BLOB_BYTES // len(marker) + 1))[:BLOB_BYTES]
    return Shareable({"marker": marker, "blob": blob})


def echo_of(site, shareable):
    """What a receiver answers to a marker payload: whose it is, and what it read of it."""
    marker, blob = shareable.get("marker"), shareable.get("blob")
    return {"site": site, "marker": marker, "blob_len": len(blob), "blob_head": blob[:len(marker)].decode()}


class SecureCalls(Controller):
    """Waits until ``wait_sites`` are known, then makes ``calls`` in turn and writes what came back.

    Each call is ``{"marker", "secure", "targets" (None: the job's sites), "topic", "timeout"}``.
    Each result holds, per site, the return code, the reason header and the reply's data.
    """

    def __init__(self, calls, wait_sites=(), out="secure.json", wait_limit=15.0):
        super().__init__()
        self.calls = calls
        self.wait_sites = set(wait_sites)
        self.out = out
        self.wait_limit = wait_limit

    def control_flow(self, abort_signal, fl_ctx):
        engine = fl_ctx.get_engine()
        deadline = time.monotonic() + self.wait_limit
        while not self.wait_sites <= {c.name for c in engine.get_clients()}:
            if time.monotonic() > deadline or abort_signal.triggered:
                raise RuntimeError(f"gave up waiting for sites {sorted(self.wait_sites)}")
            abort_signal.wait(0.05)
        results = []
        for call in self.calls:
            replies = engine.send_aux_request(call.get("targets"), call.get("topic", "seen"),
                                              marker_payload(call["marker"]), call.get("timeout", 10.0), fl_ctx,
                                              secure=call.get("secure", True))
            results.append({site: {"rc": r.get_return_code(), "reason": r.get_header("reason"),
                                   "data": {k: v for k, v in r.items() if k != "__headers__"}}
                            for site, r in replies.items()})
        _write(fl_ctx, self.out, results)


class SeenBySite(FLComponent):
    """Site executor of task ``seen``: writes what it was sent to ``seen-<marker>.json`` in the
    site's run dir, and answers with the marker, the site and the blob's length and head."""

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        echo = echo_of(fl_ctx.get_identity_name(), shareable)
        _write(fl_ctx, f"seen-{echo['marker']}.json", {k: echo[k] for k in ("site", "marker", "blob_len")})
        return Shareable(echo)


class SecureHandler(Controller):
    """The engine's side of sites' requests: handles ``to_engine`` (answers with `echo_of` the
    request), starts the site app on ``start_sites`` itself, waits until it has served ``expect``
    requests (or ``wait_limit`` seconds), and writes the requests it served, in order, to
    ``engine-seen.json``."""

    def __init__(self, expect=1, start_sites=(), out="engine-seen.json", wait_limit=20.0):
        super().__init__()
        self.expect = expect
        self.start_sites = list(start_sites)
        self.out = out
        self.wait_limit = wait_limit
        self.seen = []
        self.cond = threading.Condition()

    def start_controller(self, fl_ctx):
        fl_ctx.get_engine().register_aux_message_handler("to_engine", self._to_engine)

    def _to_engine(self, topic, request, fl_ctx):
        echo = echo_of(fl_ctx.get_prop("__peer_name__"), request)
        with self.cond:
            self.seen.append(echo)
            self.cond.notify_all()
        return Shareable(echo)

    def control_flow(self, abort_signal, fl_ctx):
        if self.start_sites:
            fl_ctx.get_engine().start_client_job(fl_ctx.get_job_id(), self.start_sites, fl_ctx)
        with self.cond:
            self.cond.wait_for(lambda: len(self.seen) >= self.expect, self.wait_limit)
            seen = list(self.seen)
        _write(fl_ctx, self.out, seen)


class SendsToEngine(FLComponent):
    """A site component: at START_RUN, a thread sends each of ``calls`` in turn to the engine's
    ``to_engine`` and writes what came of them to ``to-engine.json`` in the site's run dir.

    Each call is ``{"marker", "secure", "limit" (seconds, default 20)}``. A call is tried again
    until it is answered OK or its limit has passed: until the job's process has said hello, its
    key has not reached the site and its handler is not registered, and the error or the reply
    says so. Per call it writes the distinct outcomes of its tries (a return code, or the error
    raised) and the last reply.
    """

    def __init__(self, calls, out="to-engine.json"):
        super().__init__()
        self.calls = calls
        self.out = out

    def handle_event(self, event_type, fl_ctx):
        if event_type == EventType.START_RUN:
            threading.Thread(target=self._send_all, args=(fl_ctx.get_engine(),), daemon=True).start()

    def _send_all(self, engine):
        results = [self._send(engine, call) for call in self.calls]
        _write(engine.new_context(), self.out, results)

    @staticmethod
    def _send(engine, call):
        abort = engine.new_context().get_run_abort_signal()
        deadline = time.monotonic() + call.get("limit", 20.0)
        tries, last = [], None
        while True:
            try:
                reply = engine.send_aux_request(["server"], "to_engine", marker_payload(call["marker"]), 5.0,
                                                engine.new_context(), secure=call["secure"])["server"]
                outcome = reply.get_return_code()
                last = {"rc": outcome, "reason": reply.get_header("reason"),
                        "data": {k: v for k, v in reply.items() if k != "__headers__"}}
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            if not tries or tries[-1] != outcome:
                tries.append(outcome)
            if outcome == ReturnCode.OK or time.monotonic() >= deadline or abort.triggered:
                return {"marker": call["marker"], "tries": tries, "reply": last}
            abort.wait(0.05)
